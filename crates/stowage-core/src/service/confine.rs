//! Where an orchestrator may have Stowage mount a volume: the staging and
//! target paths of CSI calls. A path is refused, before anything changes,
//! when a mount there would hide or expose what is not the orchestrator's:
//! Stowage's own roots and everything above them, and the system's trees.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::Layout;

/// Trees no volume is ever mounted in, whatever the operator allows.
const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/dev", "/efi", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
    "/sbin", "/sys", "/usr",
];
/// Runtime state of the host's services: refused unless the operator
/// allows a directory in it (a CO that stages under `/run`).
const RUNTIME_TREE: &str = "/run";
/// Directories that hold everyone's files: a mount on one of them would
/// hide all of it, though a mount beneath them is ordinary.
const SHARED_DIRS: &[&str] = &[
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/lib", "/var/tmp",
];

/// The rule for orchestrators' paths on this host.
#[derive(Debug, Clone)]
pub struct CallerPaths {
    /// Stowage's own roots.
    roots: Vec<PathBuf>,
    /// If not empty, every path must lie strictly beneath one of these
    /// (`--csi-allowed-paths`, for example kubelet's `/var/lib/kubelet`).
    allowed: Vec<PathBuf>,
}

impl CallerPaths {
    pub fn new(layout: &Layout) -> Self {
        CallerPaths {
            roots: vec![layout.data_root.clone(), layout.run_root.clone()],
            allowed: Vec::new(),
        }
    }

    /// Narrows the rule to paths beneath `allowed`.
    pub fn allowing(mut self, allowed: Vec<PathBuf>) -> Self {
        self.allowed = allowed;
        self
    }

    /// Also refuses `dir` and everything in and above it (a socket's
    /// directory outside the run root, say).
    pub fn protecting(mut self, dir: PathBuf) -> Self {
        self.roots.push(dir);
        self
    }

    /// Checks the path an orchestrator named as `what`.
    pub fn check(&self, what: &str, path: &Path) -> Result<()> {
        let refuse =
            |why: String| Error::InvalidRequest(format!("{what} {} {why}", path.display()));
        if !path.is_absolute() {
            return Err(refuse("must be absolute".into()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("must not contain '..'".into()));
        }
        // Compared by components: "." and repeated separators, which the
        // kernel resolves away, change nothing here either.
        let path: PathBuf = path.components().collect();
        for root in &self.roots {
            if path.starts_with(root) {
                return Err(refuse(format!(
                    "is inside stowage's own {}",
                    root.display()
                )));
            }
            if root.starts_with(&path) {
                return Err(refuse(format!("holds stowage's own {}", root.display())));
            }
        }
        if let Some(tree) = SYSTEM_TREES.iter().find(|t| path.starts_with(t)) {
            return Err(refuse(format!("is in {tree}, a system directory")));
        }
        if !self.allowed.is_empty() {
            if !self
                .allowed
                .iter()
                .any(|a| path.starts_with(a) && path != *a)
            {
                let allowed: Vec<String> = self
                    .allowed
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect();
                return Err(refuse(format!(
                    "is outside the allowed paths ({})",
                    allowed.join(", ")
                )));
            }
            return Ok(());
        }
        if path.starts_with(RUNTIME_TREE) {
            return Err(refuse(format!(
                "is in {RUNTIME_TREE}, the host's runtime state; allow a directory there \
                 with --csi-allowed-paths if the orchestrator uses one"
            )));
        }
        if SHARED_DIRS.iter().any(|d| path == Path::new(d)) {
            return Err(refuse("is a directory shared by the whole host".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> CallerPaths {
        CallerPaths::new(&Layout::new("/var/lib/stowage", "/run/stowage"))
    }

    #[test]
    fn refuses_stowage_roots_system_trees_and_shared_dirs() {
        let r = rule();
        for (path, why) in [
            ("relative/x", "absolute"),
            ("/var/lib/kubelet/../stowage", "'..'"),
            ("/var/lib/stowage", "inside stowage's own"),
            ("/var/lib/stowage/volumes/x", "inside stowage's own"),
            ("/run/stowage/mounts", "inside stowage's own"),
            ("/var//lib/./stowage/x", "inside stowage's own"),
            ("/var/lib", "holds stowage's own"),
            ("/", "holds stowage's own"),
            ("/etc", "system directory"),
            ("/usr/local/x", "system directory"),
            ("/proc/1/root", "system directory"),
            ("/dev/shm/x", "system directory"),
            ("/run/containerd/x", "runtime state"),
            ("/tmp", "shared by the whole host"),
            ("/home", "shared by the whole host"),
        ] {
            let err = r.check("target path", Path::new(path)).unwrap_err();
            assert!(err.to_string().contains(why), "{path}: {err}");
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        }
        for ok in [
            "/var/lib/kubelet/pods/x/volumes/v/mount",
            "/tmp/csi/staging",
            "/mnt/x",
        ] {
            r.check("target path", Path::new(ok)).unwrap();
        }
    }

    #[test]
    fn allowed_paths_narrow_the_rule_and_may_open_a_runtime_directory() {
        let r = rule().allowing(vec!["/var/lib/kubelet".into(), "/run/nomad".into()]);
        r.check("target path", Path::new("/var/lib/kubelet/pods/x"))
            .unwrap();
        r.check("target path", Path::new("/run/nomad/csi/x"))
            .unwrap();
        for bad in ["/var/lib/kubelet", "/tmp/x", "/run/stowage/x", "/etc/x"] {
            assert!(r.check("target path", Path::new(bad)).is_err(), "{bad}");
        }
    }
}
