//! Staging and publishing: presenting a volume at paths an orchestrator
//! chooses (CSI's NodeStage and NodePublish).
//!
//! A staged volume is mounted for the consumer `csi-stage:<path>` and its
//! mountpoint is bind-mounted at the staging path; a publication is a bind
//! of the staging path at the target, with the attributes asked for. The
//! kernel's mount table is the journal of both: a path holds this volume
//! when its topmost mount shows the same filesystem and root as the
//! volume's mountpoint, so every call can tell a repeat from a conflict,
//! also after a crash.

use std::path::{Component, Path};

use stowage_sys::{missing_ok, MountAttrs, MountEntry};
use tracing::warn;

use super::{logged, not_found, VolumeService};
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::volume::{Usage, VolumeRecord};

impl VolumeService {
    /// Mounts the volume and binds it at `staging`, an existing directory.
    /// Staging again at the same path succeeds.
    pub fn stage(&self, name: &str, staging: &Path) -> Result<()> {
        logged("stage", name, || {
            let (name, consumer) = staging_call(name, staging)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_ready(&name)?;
            let table = self.mount_table()?;
            let volume = self.volume_mount(&table, &loaded.record);
            match top_mount(&table, staging) {
                Some(m) if volume.is_some_and(|v| same_tree(v, m)) => {
                    // Staged, perhaps before a crash that lost the record.
                    self.mount_loaded(&mut loaded, &consumer)?;
                    return Ok(());
                }
                Some(m) => return Err(taken(staging, m)),
                None => {}
            }
            let mountpoint = self.mount_loaded(&mut loaded, &consumer)?;
            if let Err(e) = self
                .sys
                .bind_with(&mountpoint, staging, MountAttrs::default())
            {
                let _ = self.unmount_loaded(&mut loaded, &consumer);
                return Err(path_error("bind volume at staging path", staging, e));
            }
            Ok(())
        })
    }

    /// Undoes [`Self::stage`]; unstaging what is not staged succeeds.
    pub fn unstage(&self, name: &str, staging: &Path) -> Result<()> {
        logged("unstage", name, || {
            let (name, consumer) = staging_call(name, staging)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_ready(&name)?;
            self.unmount_ours(&loaded.record, staging)?;
            self.unmount_loaded(&mut loaded, &consumer)
        })
    }

    /// Binds the staged volume at `target`, which is created (and removed
    /// again by [`Self::unpublish`]). Publishing again with the same
    /// attributes succeeds; other attributes are a conflict.
    pub fn publish(
        &self,
        name: &str,
        staging: &Path,
        target: &Path,
        attrs: MountAttrs,
    ) -> Result<()> {
        logged("publish", name, || {
            let name = VolumeName::parse(name)?;
            check_caller_path("staging path", staging)?;
            check_caller_path("target path", target)?;
            let _guard = self.locks.lock(name.as_str());
            let loaded = self.load_ready(&name)?;
            let table = self.mount_table()?;
            let not_staged = || Error::NotStaged {
                name: name.to_string(),
                path: staging.to_path_buf(),
            };
            let volume = self
                .volume_mount(&table, &loaded.record)
                .ok_or_else(not_staged)?;
            if !top_mount(&table, staging).is_some_and(|m| same_tree(volume, m)) {
                return Err(not_staged());
            }
            if let Some(m) = top_mount(&table, target) {
                if !same_tree(volume, m) {
                    return Err(taken(target, m));
                }
                if m.read_only != attrs.read_only {
                    return Err(Error::PathTaken {
                        path: target.to_path_buf(),
                        what: format!("volume {name} published with other access"),
                    });
                }
                return Ok(());
            }
            let created = match self.sys.create_dir(target, 0o750) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(Error::io("create target path", target)(e)),
            };
            if let Err(e) = self.sys.bind_with(staging, target, attrs) {
                if created {
                    let _ = self.sys.remove_dir(target);
                }
                return Err(path_error("bind volume at target path", target, e));
            }
            Ok(())
        })
    }

    /// Undoes [`Self::publish`], removing the target; unpublishing what is
    /// not published succeeds.
    pub fn unpublish(&self, name: &str, target: &Path) -> Result<()> {
        logged("unpublish", name, || {
            let name = VolumeName::parse(name)?;
            check_caller_path("target path", target)?;
            let _guard = self.locks.lock(name.as_str());
            let loaded = self.load(&name)?.ok_or_else(|| not_found(&name))?;
            self.unmount_ours(&loaded.record, target)?;
            match missing_ok(self.sys.remove_dir(target)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Not an empty directory: not one we made; leave it.
                    warn!(path = %target.display(), error = %e, "target path left in place");
                    Ok(())
                }
            }
        })
    }

    /// Usage of the filesystem the volume shows at `path`, a staging or
    /// target path where it is mounted.
    pub fn path_usage(&self, name: &str, path: &Path) -> Result<Usage> {
        let name = VolumeName::parse(name)?;
        let loaded = self.load(&name)?.ok_or_else(|| not_found(&name))?;
        let table = self.mount_table()?;
        let shown = check_caller_path("volume path", path).is_ok()
            && self
                .volume_mount(&table, &loaded.record)
                .zip(top_mount(&table, path))
                .is_some_and(|(v, m)| same_tree(v, m));
        if !shown {
            return Err(Error::NotPublished {
                name: name.to_string(),
                path: path.to_path_buf(),
            });
        }
        let usage = self
            .sys
            .fs_usage(path)
            .map_err(Error::io("read usage of", path))?;
        Ok(usage.into())
    }

    /// The topmost mount at the volume's own mountpoint, if mounted.
    fn volume_mount<'t>(
        &self,
        table: &'t [MountEntry],
        record: &VolumeRecord,
    ) -> Option<&'t MountEntry> {
        top_mount(table, &self.layout.mountpoint(&record.id))
    }

    /// Unmounts every mount at `path` that shows this volume, topmost
    /// first. A mount of something else there is refused, not touched.
    fn unmount_ours(&self, record: &VolumeRecord, path: &Path) -> Result<()> {
        let table = self.mount_table()?;
        let volume = self.volume_mount(&table, record);
        for m in table.iter().rev().filter(|m| m.mount_point == path) {
            // Once the volume itself is unmounted its identity is gone; a
            // mount the volume's name was given for is taken as its own.
            if volume.is_some_and(|v| !same_tree(v, m)) {
                return Err(taken(path, m));
            }
            match self.sys.unmount(path) {
                Ok(()) => {}
                Err(e) if stowage_sys::is_not_mounted(&e) => break,
                Err(e) => return Err(Error::io("unmount", path)(e)),
            }
        }
        Ok(())
    }
}

/// The volume a stage or unstage call names, and the consumer its staging
/// path holds the volume as; both checked.
fn staging_call(name: &str, staging: &Path) -> Result<(VolumeName, String)> {
    let name = VolumeName::parse(name)?;
    check_caller_path("staging path", staging)?;
    let consumer = format!("csi-stage:{}", staging.display());
    crate::name::validate_consumer(&consumer)?;
    Ok((name, consumer))
}

/// Paths come from an orchestrator: absolute, and without `..`, so that
/// what is checked is what is mounted.
fn check_caller_path(what: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::InvalidRequest(format!(
            "{what} {} must be absolute",
            path.display()
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::InvalidRequest(format!(
            "{what} {} must not contain '..'",
            path.display()
        )));
    }
    Ok(())
}

/// The topmost mount at `path`: the last one mounted there.
fn top_mount<'t>(table: &'t [MountEntry], path: &Path) -> Option<&'t MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// Whether two mounts show the same tree of the same filesystem.
fn same_tree(a: &MountEntry, b: &MountEntry) -> bool {
    a.device == b.device && a.root == b.root
}

/// A failed mount at a caller's path: a symlink in it is the caller's
/// error, anything else Stowage's.
fn path_error(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    if stowage_sys::is_symlink_refusal(&e) {
        return Error::InvalidRequest(format!(
            "{} has a symlink in it; give the real path",
            path.display()
        ));
    }
    Error::io(op, path)(e)
}

fn taken(path: &Path, m: &MountEntry) -> Error {
    Error::PathTaken {
        path: path.to_path_buf(),
        what: format!("another mount ({} {})", m.fs_type, m.source),
    }
}
