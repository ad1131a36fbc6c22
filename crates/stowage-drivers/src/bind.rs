//! `bind`: imports an existing host directory. The path must be absolute,
//! contain no symlink in any component, and show nothing of Stowage's
//! own: neither its roots nor anything inside or around them, through
//! whatever mount leads there, nor a volume's filesystem mounted beneath
//! it. It is checked again at every mount, and the mount made is checked
//! once more, so a symlink or a mount swapped in meanwhile is refused.
//! Removing the volume never touches the data.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use stowage_core::options::{check_known, Options};
use stowage_core::{
    Capabilities, DataIdentity, Driver, Error, Layout, MountSpec, Reach, Result, VolumeRecord,
};
use stowage_sys::{path_in_filesystem, MountEntry, Sys};

const OPTIONS: &[&str] = &["path", "scope"];
/// More mounts than this stacked on one mountpoint is someone mounting
/// there as fast as they are taken off.
const MAX_STACKED: usize = 64;

pub struct Bind {
    sys: Arc<dyn Sys>,
    layout: Layout,
    /// Where the roots are in their filesystems, read once: they do not
    /// move while the daemon runs.
    roots: OnceLock<Vec<Tree>>,
}

/// A directory of a filesystem: what a mount shows, wherever it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tree {
    device: String,
    path: PathBuf,
}

impl Tree {
    /// What the mount `m` shows.
    fn of_mount(m: &MountEntry) -> Tree {
        Tree {
            device: m.device.clone(),
            path: m.root.clone(),
        }
    }

    /// Whether one tree holds the other.
    fn overlaps(&self, other: &Tree) -> bool {
        self.device == other.device
            && (self.path.starts_with(&other.path) || other.path.starts_with(&self.path))
    }
}

/// What Stowage owns at the moment of a check.
struct Owned<'a> {
    roots: &'a [Tree],
    /// The loop devices of block volumes and snapshots: every filesystem
    /// on them is a volume's.
    devices: Vec<String>,
}

impl Owned<'_> {
    /// Why showing `tree`, mounted from `m`, would expose Stowage's own.
    fn refuses(&self, tree: &Tree, m: &MountEntry) -> Option<&'static str> {
        if self.roots.iter().any(|r| r.overlaps(tree)) {
            Some("shows stowage's data or run root, or a directory in or around one")
        } else if self.devices.contains(&m.source)
            || (m.fs_type == "tmpfs" && m.source.starts_with("stowage-"))
        {
            Some("shows a stowage volume's filesystem")
        } else {
            None
        }
    }
}

impl Bind {
    pub fn new(sys: Arc<dyn Sys>, layout: Layout) -> Self {
        Bind {
            sys,
            layout,
            roots: OnceLock::new(),
        }
    }

    /// The mount `path` lies in, and the tree `path` is in its filesystem.
    fn tree_at(&self, path: &Path) -> Result<(MountEntry, Tree)> {
        let m = self
            .sys
            .mount_containing(path)
            .map_err(Error::io("look up the mount holding", path))?;
        let tree = Tree {
            device: m.device.clone(),
            path: path_in_filesystem(&m, path),
        };
        Ok((m, tree))
    }

    fn owned(&self) -> Result<Owned<'_>> {
        let roots = match self.roots.get() {
            Some(r) => r,
            None => {
                let mut roots = Vec::new();
                for root in [&self.layout.data_root, &self.layout.run_root] {
                    roots.push(self.tree_at(root)?.1);
                }
                self.roots.get_or_init(|| roots)
            }
        };
        let data_root = &self.layout.data_root;
        let devices = self
            .sys
            .loop_devices_under(data_root)
            .map_err(Error::io("list the loop devices of", data_root))?;
        Ok(Owned {
            roots,
            devices: devices.iter().map(|d| d.display().to_string()).collect(),
        })
    }

    /// Refuses a tree at `path` that would show anything Stowage owns:
    /// the tree itself (found through the mount it lies in, so another
    /// mount of a root or of a directory in one is caught), or a mount
    /// beneath it, which a recursive bind carries along.
    fn check_exposure(&self, path: &Path, value: &str) -> Result<Tree> {
        let owned = self.owned()?;
        let (m, tree) = self.tree_at(path)?;
        let refuse = |why: &str| Error::invalid_option("path", value, why);
        if let Some(why) = owned.refuses(&tree, &m) {
            return Err(refuse(why));
        }
        let table = self
            .sys
            .mount_table()
            .map_err(Error::io("read mount table", "/proc/self/mountinfo"))?;
        for sub in table
            .iter()
            .filter(|s| s.mount_point.starts_with(path) && s.mount_point != path)
        {
            if let Some(why) = owned.refuses(&Tree::of_mount(sub), sub) {
                return Err(refuse(&format!(
                    "holds {}, which {why}",
                    sub.mount_point.display()
                )));
            }
        }
        Ok(tree)
    }

    /// Checks the imported path and returns it with the tree it shows.
    fn checked_path<'a>(&self, opts: &'a Options) -> Result<(&'a Path, Tree)> {
        let value = opts.get("path").ok_or_else(|| Error::MissingOption {
            driver: self.name().to_string(),
            option: "path".to_string(),
        })?;
        let bad = |reason: &str| Error::invalid_option("path", value, reason);
        let path = Path::new(value);
        if !path.is_absolute() {
            return Err(bad("must be an absolute path"));
        }
        // Checked on the string: Path::components() silently drops "." and
        // repeated separators.
        let clean = value == "/"
            || value[1..]
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !clean {
            return Err(bad(
                "must be a normalised path without '.', '..' or repeated '/'",
            ));
        }
        let info = self.sys.inspect_nofollow(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                bad("a component is a symlink; give the real path")
            } else {
                bad(&format!("cannot open: {e}"))
            }
        })?;
        if !info.is_dir {
            return Err(bad("is not a directory"));
        }
        if self.layout.contains(path) {
            return Err(bad("must not be inside stowage's data or run root"));
        }
        let tree = self.check_exposure(path, value)?;
        Ok((path, tree))
    }

    /// Takes off everything a refused mount put on the empty `target`: a
    /// recursive clone of a directory with a mount on it stacks two there.
    fn unmount_all(&self, target: &Path) {
        for _ in 0..MAX_STACKED {
            match self.sys.unmount(target) {
                Ok(()) => {}
                Err(e) if stowage_sys::is_not_mounted(&e) => return,
                Err(e) => {
                    tracing::warn!(path = %target.display(), error = %e, "cannot undo a refused bind mount");
                    return;
                }
            }
        }
    }

    /// Checks the mount just made at `target` from `value`: it must show
    /// the tree that was checked, and nothing Stowage owns beneath it, or
    /// something was swapped in between the check and the mount.
    fn check_mounted(&self, target: &Path, value: &str, checked: &Tree) -> Result<()> {
        let m = self
            .sys
            .mount_at(target)
            .map_err(Error::io("look up the mount at", target))?;
        if !m.is_some_and(|m| Tree::of_mount(&m) == *checked) {
            return Err(Error::invalid_option(
                "path",
                value,
                "changed while it was being mounted; retry",
            ));
        }
        self.check_exposure(target, value).map(drop)
    }
}

/// Where the imported path's storage is reached from: `scope=node` (the
/// default) or `scope=cluster`.
fn scope(opts: &Options) -> Result<Reach> {
    match opts.get("scope").map(String::as_str) {
        None | Some("node") => Ok(Reach::Node),
        Some("cluster") => Ok(Reach::Cluster),
        Some(other) => Err(Error::invalid_option(
            "scope",
            other,
            "must be node (this node's own directory) or cluster (the same storage on every node)",
        )),
    }
}

impl Driver for Bind {
    fn name(&self) -> &'static str {
        "bind"
    }

    fn validate(&self, opts: &Options) -> Result<()> {
        check_known(self.name(), opts, OPTIONS)?;
        scope(opts)?;
        self.checked_path(opts).map(drop)
    }

    /// `scope=cluster` says the path is the same storage on every node (a
    /// cluster filesystem mounted there alike): any node may mount it.
    fn capabilities(&self, opts: &Options) -> Capabilities {
        match scope(opts) {
            Ok(Reach::Cluster) => Capabilities::SHARED,
            _ => Capabilities::NODE_LOCAL,
        }
    }

    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()> {
        let (source, tree) = self.checked_path(&volume.options)?;
        self.sys
            .bind_mount(source, target, true, spec.idmap)
            .map_err(Error::io("bind-mount", source))?;
        let value = source.to_str().unwrap_or_default();
        if let Err(e) = self.check_mounted(target, value, &tree) {
            self.unmount_all(target);
            return Err(e);
        }
        Ok(())
    }

    fn data_identity(&self, volume: &VolumeRecord) -> Result<Option<DataIdentity>> {
        match volume.options.get("path") {
            Some(path) => crate::directory_identity(self.sys.as_ref(), Path::new(path)),
            None => Ok(None),
        }
    }

    /// Only reads the owner: `mount`, which follows, checks the path.
    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)> {
        let path = volume
            .options
            .get("path")
            .map(String::as_str)
            .unwrap_or_default();
        let source = Path::new(path);
        let info = self
            .sys
            .inspect_nofollow(source)
            .map_err(Error::io("inspect", source))?;
        Ok((info.uid, info.gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use stowage_sys::LinuxSys;

    struct Env {
        _tmp: tempfile::TempDir,
        base: std::path::PathBuf,
        bind: Bind,
    }

    fn env() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        for d in ["data", "run", "srv/data", "srv/real"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("srv/file"), b"x").unwrap();
        symlink(base.join("srv/real"), base.join("srv/link")).unwrap();
        let layout = Layout::new(base.join("data"), base.join("run"));
        Env {
            bind: Bind::new(Arc::new(LinuxSys), layout),
            base,
            _tmp: tmp,
        }
    }

    fn check(env: &Env, path: &str) -> Result<()> {
        let path = path.replace("BASE", env.base.to_str().unwrap());
        env.bind
            .validate(&Options::from([("path".to_string(), path)]))
    }

    #[test]
    fn accepts_a_plain_directory() {
        let env = env();
        check(&env, "BASE/srv/data").unwrap();
    }

    #[test]
    fn refuses_unsafe_paths_with_a_reason() {
        let env = env();
        for (path, reason) in [
            ("srv/data", "absolute"),
            ("BASE/srv/../data", "normalised"),
            ("BASE/srv/./data", "normalised"),
            ("BASE//srv/data", "normalised"),
            ("BASE/srv/data/", "normalised"),
            ("BASE/srv/link", "symlink"),
            ("BASE/srv/file", "not a directory"),
            ("BASE/srv/missing", "cannot open"),
            ("BASE/data", "inside stowage's"),
            ("BASE/run", "inside stowage's"),
            ("BASE", "in or around"),
        ] {
            let err = check(&env, path).unwrap_err().to_string();
            assert!(err.contains(reason), "{path}: {err}");
        }
        let err = env.bind.validate(&Options::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing required option path for driver bind"
        );
        let err = env
            .bind
            .validate(&Options::from([("pth".to_string(), "/x".to_string())]))
            .unwrap_err();
        assert!(err.to_string().contains("valid options: path"), "{err}");
    }

    #[test]
    fn a_symlink_swapped_in_after_create_is_refused_at_mount() {
        let env = env();
        check(&env, "BASE/srv/data").unwrap();
        std::fs::remove_dir(env.base.join("srv/data")).unwrap();
        symlink("/etc", env.base.join("srv/data")).unwrap();
        let err = check(&env, "BASE/srv/data").unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
    }
}
