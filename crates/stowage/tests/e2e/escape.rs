//! Attempts to reach Stowage's own data through a `bind` volume: another
//! mount of a directory inside its roots, a volume's publication, and a
//! mount swapped in between the check and the mount.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use stowage_testkit::{run, Daemon};

use crate::BIN;

/// A directory bind-mounted (with `flag`) from `source`, unmounted on drop.
struct Alias(PathBuf);

impl Alias {
    fn of(source: &Path, at: &Path, flag: &str) -> Alias {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &[flag, source.to_str().unwrap(), at.to_str().unwrap()],
        );
        Alias(at.to_path_buf())
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.0)
            .status();
    }
}

#[test]
fn bind_paths_that_show_stowages_own_data_are_refused() {
    let d = Daemon::start(BIN);
    d.ok(&["volume", "create", "victim"]);
    d.ok(&[
        "volume", "create", "blk", "--driver", "block", "-o", "size=64M",
    ]);
    d.ok(&["volume", "mount", "victim", "--consumer", "c"]);
    d.ok(&["volume", "mount", "blk", "--consumer", "c"]);
    let srv = d.base().join("srv");
    let aliases = [
        Alias::of(&d.data.join("volumes"), &srv.join("volumes"), "--bind"),
        Alias::of(&d.run.join("mounts"), &srv.join("mounts"), "--rbind"),
        Alias::of(&d.data, &srv.join("data"), "--bind"),
    ];
    // A directory that holds, further down, a block volume's filesystem.
    let holder = srv.join("holder");
    let blk_mountpoint = PathBuf::from(d.ok(&["volume", "mount", "blk", "--consumer", "c"]).trim());
    let _nested = Alias::of(&blk_mountpoint, &holder.join("deep"), "--bind");
    for path in aliases.iter().map(|a| a.0.clone()).chain([holder.clone()]) {
        let p = format!("path={}", path.display());
        let err = d.fails(&["volume", "create", "x", "--driver", "bind", "-o", &p]);
        assert!(err.contains("stowage"), "{}: {err}", path.display());
    }
    assert!(d
        .fails(&["volume", "inspect", "x"])
        .contains("no such volume"));

    // An imported directory that becomes an alias after create is refused
    // at mount, and nothing is left mounted.
    let later = srv.join("later");
    std::fs::create_dir_all(&later).unwrap();
    let p = format!("path={}", later.display());
    d.ok(&["volume", "create", "imp", "--driver", "bind", "-o", &p]);
    let swapped = Alias::of(&d.data.join("volumes"), &later, "--bind");
    let err = d.fails(&["volume", "mount", "imp", "--consumer", "c"]);
    assert!(err.contains("stowage"), "{err}");
    assert_eq!(d.inspect("imp")["mounted"], false);
    drop(swapped);
    d.ok(&["volume", "mount", "imp", "--consumer", "c"]);
    d.ok(&["volume", "unmount", "imp", "--consumer", "c"]);
}

/// A root attacker flips a bind mount of the data root over the imported
/// directory as fast as it can while the volume is mounted and unmounted:
/// no mount that succeeds ever shows the data root, and none is left
/// stacked.
#[test]
fn a_mount_swapped_in_during_a_mount_never_exposes_the_data_root() {
    let d = Daemon::start(BIN);
    let dir = d.base().join("srv/imported");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mine"), b"x").unwrap();
    let p = format!("path={}", dir.display());
    d.ok(&["volume", "create", "imp", "--driver", "bind", "-o", &p]);

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, data, dir) = (stop.clone(), d.data.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mounted = rustix::mount::mount_bind(&data, &dir).is_ok();
                std::thread::yield_now();
                if mounted {
                    let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
                }
                flips += 1;
            }
            flips
        })
    };
    let (mut mounted, mut refused) = (0, 0);
    for _ in 0..300 {
        let out = d.cli(&["volume", "mount", "imp", "--consumer", "c"]);
        if !out.status.success() {
            refused += 1;
            continue;
        }
        mounted += 1;
        let at = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            !at.join("stowage.db").exists(),
            "the data root was exposed at {}",
            at.display()
        );
        assert!(at.join("mine").exists());
        d.ok(&["volume", "unmount", "imp", "--consumer", "c"]);
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&dir)
        .status();
    eprintln!("{mounted} mounts, {refused} refused, {flips} flips");
    assert!(mounted > 0 && flips > 0);
    assert!(d.mounts().is_empty(), "left mounted: {:?}", d.mounts());
}
