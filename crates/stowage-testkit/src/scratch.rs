//! Filesystems made for a test: an image file, formatted and mounted on a
//! loop device, unmounted (and the device released) when dropped.

use std::path::{Path, PathBuf};

use crate::daemon::{mounts_under, run};

pub struct ScratchFs {
    _dir: tempfile::TempDir,
    /// Where the filesystem is mounted.
    pub root: PathBuf,
}

impl ScratchFs {
    /// A `size` (as `truncate` reads it) filesystem of `kind` (`ext4`,
    /// `xfs`, `btrfs`), made with `mkfs_args` and mounted with
    /// `mount_options` (comma-separated, may be empty).
    pub fn new(kind: &str, size: &str, mkfs_args: &[&str], mount_options: &str) -> ScratchFs {
        crate::require_root();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(format!("{kind}.img"));
        let root = dir.path().join("mnt");
        std::fs::create_dir(&root).unwrap();
        run("truncate", &["-s", size, image.to_str().unwrap()]);
        let force: &[&str] = if kind == "ext4" {
            &["-q", "-F"]
        } else {
            &["-q", "-f"]
        };
        let mut args: Vec<&str> = force.to_vec();
        args.extend_from_slice(mkfs_args);
        args.push(image.to_str().unwrap());
        run(&format!("mkfs.{kind}"), &args);
        let mut mount = vec![
            "-o".to_string(),
            format!("loop{}", with_comma(mount_options)),
        ];
        mount.push(image.display().to_string());
        mount.push(root.display().to_string());
        run(
            "mount",
            &mount.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        ScratchFs { _dir: dir, root }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}

fn with_comma(options: &str) -> String {
    if options.is_empty() {
        String::new()
    } else {
        format!(",{options}")
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        // Whatever a test left mounted inside goes first.
        for m in mounts_under(&self.root).iter().rev() {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
