//! `bind`: imports an existing host directory. The path must be absolute,
//! contain no symlink in any component, and be neither inside nor around
//! Stowage's own roots. It is checked again at every mount, so a symlink
//! swapped in later is refused. Removing the volume never touches the data.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use stowage_core::options::{check_known, Options};
use stowage_core::{DataIdentity, Driver, Error, Layout, MountSpec, Result, VolumeRecord};
use stowage_sys::{FileId, Sys};

const OPTIONS: &[&str] = &["path"];

pub struct Bind {
    sys: Arc<dyn Sys>,
    layout: Layout,
    /// Identities of the roots and of every directory above them, read
    /// once: they do not change while the daemon runs.
    roots: OnceLock<Roots>,
}

struct Roots {
    /// The roots themselves.
    ids: Vec<FileId>,
    /// The roots and all their ancestors.
    chains: HashSet<FileId>,
}

impl Bind {
    pub fn new(sys: Arc<dyn Sys>, layout: Layout) -> Self {
        Bind {
            sys,
            layout,
            roots: OnceLock::new(),
        }
    }

    fn identities(&self, p: &Path) -> Result<HashSet<FileId>> {
        p.ancestors()
            .map(|a| {
                self.sys
                    .inspect_nofollow(a)
                    .map(|i| i.id)
                    .map_err(Error::io("inspect", a))
            })
            .collect()
    }

    fn roots(&self) -> Result<&Roots> {
        if let Some(r) = self.roots.get() {
            return Ok(r);
        }
        let mut roots = Roots {
            ids: Vec::new(),
            chains: HashSet::new(),
        };
        for root in [&self.layout.data_root, &self.layout.run_root] {
            let id = self
                .sys
                .inspect_nofollow(root)
                .map_err(Error::io("inspect", root))?
                .id;
            roots.ids.push(id);
            roots.chains.extend(self.identities(root)?);
        }
        Ok(self.roots.get_or_init(|| roots))
    }

    /// Checks the imported path and returns it.
    fn checked_path<'a>(&self, opts: &'a Options) -> Result<&'a Path> {
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
        if self.layout.contains(path) || self.overlaps_roots(path, info.id)? {
            return Err(bad(
                "must not be inside or contain stowage's data or run root",
            ));
        }
        Ok(path)
    }

    /// Compares file identities, not just strings, so that another path to
    /// a root (a bind mount of it elsewhere) is caught too.
    fn overlaps_roots(&self, path: &Path, path_id: FileId) -> Result<bool> {
        let roots = self.roots()?;
        let inside = self
            .identities(path)?
            .iter()
            .any(|id| roots.ids.contains(id));
        Ok(inside || roots.chains.contains(&path_id))
    }
}

impl Driver for Bind {
    fn name(&self) -> &'static str {
        "bind"
    }

    fn validate(&self, opts: &Options) -> Result<()> {
        check_known(self.name(), opts, OPTIONS)?;
        self.checked_path(opts).map(drop)
    }

    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()> {
        let source = self.checked_path(&volume.options)?;
        self.sys
            .bind_mount(source, target, true, spec.idmap)
            .map_err(Error::io("bind-mount", source))
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
            ("BASE/data", "inside or contain"),
            ("BASE/run", "inside or contain"),
            ("BASE", "inside or contain"),
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
