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
//!
//! A volume staged as a raw block device instead has its device attached
//! (to stay attached with no mount) and the device node bound at
//! `<staging>/device`; publishing binds that node at the target file. The
//! record lists the staging paths first, so that reconcile can detach a
//! device no staging path holds any more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use stowage_sys::{exists_ok, missing_ok, MountAttrs, MountEntry};
use tracing::warn;

use super::access::refused_write;
use super::confine::CallerPaths;
use super::{logged, not_found, Loaded, VolumeService, MAX_STACKED_MOUNTS};
use crate::driver::DataIdentity;
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::volume::{DeviceUse, Usage, VolumeRecord};

/// What a staging path's consumer name starts with.
const STAGING_CONSUMER: &str = "csi-stage:";
/// The file in a staging directory where a raw device's node is bound.
pub(super) const DEVICE_NODE: &str = "device";

/// What a volume shows at a staging or target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUsage {
    Filesystem(Usage),
    /// A raw block device of this many bytes.
    Device {
        capacity_bytes: u64,
    },
}

/// How the kernel shows a volume.
enum Shown {
    /// Its data as a filesystem tree: what its own mountpoint shows, or,
    /// with nothing mounted there, what the driver says a mount of it
    /// looks like.
    Tree(DataIdentity),
    /// Its raw device, whose node a mount binds.
    Device(PathBuf),
}

impl Shown {
    fn at(&self, m: &MountEntry) -> bool {
        match self {
            Shown::Tree(v) => v.shown_by(m),
            Shown::Device(d) => binds_device(m, d),
        }
    }
}

impl VolumeService {
    /// Mounts the volume and binds it at `staging`, an existing directory.
    /// Staging again at the same path succeeds.
    pub fn stage(&self, name: &str, staging: &Path) -> Result<()> {
        logged("stage", name, || {
            let (name, consumer) = staging_call(&self.caller_paths, name, staging)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_for_use(&name)?;
            let volume = self.shown(&loaded.record)?;
            match self.mount_at(staging)? {
                Some(m) if volume.is_some_and(|v| v.at(&m)) => {
                    // Staged, perhaps before a crash that lost the record.
                    self.mount_loaded(&mut loaded, &consumer)?;
                    return Ok(());
                }
                Some(m) => return Err(taken(staging, &m)),
                None => {}
            }
            let mountpoint = self.mount_loaded(&mut loaded, &consumer)?;
            if let Err(e) = self
                .sys
                .bind_with(&mountpoint, staging, MountAttrs::default(), None)
            {
                let _ = self.unmount_loaded(&mut loaded, &consumer);
                return Err(path_error("bind volume at staging path", staging, e));
            }
            Ok(())
        })
    }

    /// Attaches the volume's raw block device and binds its node at
    /// `<staging>/device`; a read-only device refuses every write. Staging
    /// again at the same path succeeds.
    pub fn stage_device(&self, name: &str, staging: &Path, read_only: bool) -> Result<()> {
        logged("stage", name, || {
            let name = VolumeName::parse(name)?;
            self.caller_paths.check("staging path", staging)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_here(&name)?;
            let precondition = |reason: String| Error::Precondition {
                name: name.to_string(),
                reason,
            };
            if loaded.record.access.read_only() && !read_only {
                return Err(refused_write(&name, loaded.record.access));
            }
            if !loaded.record.consumers.is_empty() {
                return Err(precondition(format!(
                    "is mounted as a filesystem (by {}); raw block access needs it unmounted",
                    loaded.record.users().join(", ")
                )));
            }
            let first = loaded.record.device.is_none();
            let device_use = loaded.record.device.get_or_insert_with(|| DeviceUse {
                read_only,
                stagings: BTreeSet::new(),
            });
            if device_use.read_only != read_only {
                return Err(precondition(format!(
                    "is staged on this node {}; stage it the same way",
                    access_word(device_use.read_only)
                )));
            }
            let new = device_use.stagings.insert(staging.to_path_buf());
            if new {
                // The record goes first: reconcile detaches a device that
                // no recorded staging path holds.
                self.save_mounts(&mut loaded)?;
            }
            let bound = self.bind_device(&loaded.record, staging, read_only, first);
            if bound.is_err() && new {
                if let Err(e) = self.drop_staging(&mut loaded, staging) {
                    warn!(volume = %name, error = %e, "staging left recorded until restart");
                }
            }
            bound
        })
    }

    /// Binds the volume's device node, attaching the device if `attach`
    /// or if it is gone, at `<staging>/device`.
    fn bind_device(
        &self,
        record: &VolumeRecord,
        staging: &Path,
        read_only: bool,
        attach: bool,
    ) -> Result<()> {
        let driver = self.drivers.get(&record.driver)?;
        let device = match driver.attached_device(record)? {
            Some(d) if !attach => d,
            // A device found without a staging is an autoclearing one on
            // its way out; attaching waits for it.
            _ => driver.attach_device(record, read_only)?,
        };
        let node = staging.join(DEVICE_NODE);
        match self.mount_at(&node)? {
            Some(m) if binds_device(&m, &device) => return Ok(()),
            Some(m) => return Err(taken(&node, &m)),
            None => {}
        }
        exists_ok(self.sys.create_file(&node, 0o600))
            .map_err(|e| path_error("create device node at", &node, e))?;
        let attrs = MountAttrs {
            read_only,
            ..MountAttrs::default()
        };
        self.sys
            .bind_with(&device, &node, attrs, None)
            .map_err(|e| path_error("bind device at staging path", &node, e))
    }

    /// Forgets one staging of the device, detaching it after the last.
    pub(super) fn drop_staging(&self, loaded: &mut Loaded, staging: &Path) -> Result<()> {
        let Some(device_use) = loaded.record.device.as_mut() else {
            return Ok(());
        };
        device_use.stagings.remove(staging);
        if !device_use.stagings.is_empty() {
            return self.save_mounts(loaded);
        }
        loaded.record.device = None;
        // The record goes first: reconcile detaches the device of a
        // volume that nothing holds.
        self.save_mounts(loaded)?;
        self.drivers
            .get(&loaded.record.driver)?
            .detach_device(&loaded.record)
    }

    /// Undoes [`Self::stage`] or [`Self::stage_device`]; unstaging what is
    /// not staged succeeds.
    pub fn unstage(&self, name: &str, staging: &Path) -> Result<()> {
        logged("unstage", name, || {
            let (name, consumer) = staging_call(&self.caller_paths, name, staging)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_for_use(&name)?;
            let device_staged =
                (loaded.record.device.as_ref()).is_some_and(|d| d.stagings.contains(staging));
            if device_staged {
                let node = staging.join(DEVICE_NODE);
                self.unmount_ours(&loaded.record, &node)?;
                missing_ok(self.sys.remove_file(&node)).map_err(Error::io("remove", &node))?;
                return self.drop_staging(&mut loaded, staging);
            }
            self.unmount_ours(&loaded.record, staging)?;
            self.unmount_loaded(&mut loaded, &consumer)
        })
    }

    /// The recorded device stagings where the kernel no longer shows the
    /// volume's device bound (all of them once the device is detached).
    pub(super) fn lost_device_stagings(&self, record: &VolumeRecord) -> Result<Vec<PathBuf>> {
        let Some(device_use) = &record.device else {
            return Ok(Vec::new());
        };
        let Some(shown) = self.shown(record)? else {
            return Ok(device_use.stagings.iter().cloned().collect());
        };
        let mut lost = Vec::new();
        for staging in &device_use.stagings {
            let node = self.mount_at(&staging.join(DEVICE_NODE))?;
            if !node.is_some_and(|m| shown.at(&m)) {
                lost.push(staging.clone());
            }
        }
        Ok(lost)
    }

    /// Binds the staged volume at `target`, which is created (and removed
    /// again by [`Self::unpublish`]), presented to `mount_group` if given.
    /// Publishing again with the same attributes succeeds; other
    /// attributes are a conflict.
    pub fn publish(
        &self,
        name: &str,
        staging: &Path,
        target: &Path,
        attrs: MountAttrs,
        mount_group: Option<u32>,
    ) -> Result<()> {
        logged("publish", name, || {
            let name = VolumeName::parse(name)?;
            self.caller_paths.check("staging path", staging)?;
            self.caller_paths.check("target path", target)?;
            let _guard = self.locks.lock(name.as_str());
            let loaded = self.load_ready(&name)?;
            let not_staged = || Error::NotStaged {
                name: name.to_string(),
                path: staging.to_path_buf(),
            };
            // The device staged at this staging path, if that is what it holds.
            let device = (loaded.record.device.as_ref()).filter(|d| d.stagings.contains(staging));
            let source = match device {
                Some(_) => staging.join(DEVICE_NODE),
                None => staging.to_path_buf(),
            };
            if let Some(d) = device.filter(|d| d.read_only != attrs.read_only) {
                // A read-only mount of a device node does not stop writes
                // to the device; only a read-only device does.
                let how = access_word(d.read_only);
                return Err(Error::Precondition {
                    name: name.to_string(),
                    reason: format!("is staged as a {how} device; publish it {how} too"),
                });
            }
            if device.is_some() && mount_group.is_some() {
                return Err(Error::InvalidRequest(
                    "a mount group applies to a filesystem, not to a raw device".into(),
                ));
            }
            let volume = self.shown(&loaded.record)?.ok_or_else(not_staged)?;
            if !self.mount_at(&source)?.is_some_and(|m| volume.at(&m)) {
                return Err(not_staged());
            }
            if let Some(m) = self.mount_at(target)? {
                if !volume.at(&m) {
                    return Err(taken(target, &m));
                }
                if m.read_only != attrs.read_only {
                    return Err(Error::PathTaken {
                        path: target.to_path_buf(),
                        what: format!("volume {name} published with other access"),
                    });
                }
                return Ok(());
            }
            if loaded.record.access.read_only() && !attrs.read_only {
                return Err(refused_write(&name, loaded.record.access));
            }
            if loaded.record.access.single_consumer() {
                self.refuse_second_publication(&loaded.record, &volume, &source, target)?;
            }
            // A device node is bound on a file, a filesystem on a directory.
            let made = match device {
                Some(_) => self.sys.create_file(target, 0o600),
                None => self.sys.create_dir(target, 0o750),
            };
            let created = match made {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(path_error("create target path", target, e)),
            };
            let mountpoint = self.layout.mountpoint(&loaded.record.id);
            let idmap = match mount_group {
                Some(group) => self.group_namespace(&loaded.record, &mountpoint, group),
                None => Ok(None),
            };
            let bound = idmap.and_then(|idmap| {
                (self.sys.bind_with(&source, target, attrs, idmap.as_deref()))
                    .map_err(|e| path_error("bind volume at target path", target, e))
            });
            if let Err(e) = bound {
                if created {
                    let _ = self.remove_target(target);
                }
                return Err(e);
            }
            Ok(())
        })
    }

    /// Refuses to publish a volume of one consumer (`rwop`) at `target`
    /// while the kernel shows it published at another path: each
    /// publication is a consumer (a pod), whichever staging it binds.
    fn refuse_second_publication(
        &self,
        record: &VolumeRecord,
        volume: &Shown,
        source: &Path,
        target: &Path,
    ) -> Result<()> {
        let mountpoint = self.layout.mountpoint(&record.id);
        let table = self.mount_table()?;
        let other = table.iter().find(|m| {
            volume.at(m)
                && m.mount_point != mountpoint
                && m.mount_point != source
                && m.mount_point != target
                && !is_staging(record, &m.mount_point)
        });
        match other {
            Some(m) => Err(Error::HeldElsewhere {
                name: record.name.to_string(),
                node: self.node_id.clone(),
                mode: record.access,
                consumer: Some(format!("the publication at {}", m.mount_point.display())),
            }),
            None => Ok(()),
        }
    }

    /// Undoes [`Self::publish`], removing the target; unpublishing what is
    /// not published succeeds.
    pub fn unpublish(&self, name: &str, target: &Path) -> Result<()> {
        logged("unpublish", name, || {
            let name = VolumeName::parse(name)?;
            self.caller_paths.check("target path", target)?;
            let _guard = self.locks.lock(name.as_str());
            let loaded = self.load(&name)?.ok_or_else(|| not_found(&name))?;
            self.unmount_ours(&loaded.record, target)?;
            match missing_ok(self.remove_target(target)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Not an empty directory: not one we made; leave it.
                    warn!(path = %target.display(), error = %e, "target path left in place");
                    Ok(())
                }
            }
        })
    }

    /// What the volume shows at `path`, a staging or target path where it
    /// is mounted or its device bound: the filesystem's usage, or the
    /// device's size.
    pub fn path_usage(&self, name: &str, path: &Path) -> Result<PathUsage> {
        let name = VolumeName::parse(name)?;
        let loaded = self.load(&name)?.ok_or_else(|| not_found(&name))?;
        let shown = match self.caller_paths.check("volume path", path) {
            Ok(()) => self.shown(&loaded.record)?,
            Err(_) => None,
        };
        let at_path = match &shown {
            Some(_) => self.mount_at(path)?,
            None => None,
        };
        match shown.filter(|v| at_path.is_some_and(|m| v.at(&m))) {
            None => Err(Error::NotPublished {
                name: name.to_string(),
                path: path.to_path_buf(),
            }),
            Some(Shown::Device(_)) => Ok(PathUsage::Device {
                capacity_bytes: loaded.record.size_bytes.unwrap_or(0),
            }),
            Some(Shown::Tree(_)) => {
                // A volume with a size has the driver's own accounting (a
                // subvolume's qgroup); the filesystem at `path` may be the
                // whole data root. Shown as a tree, it is mounted at its
                // mountpoint: no need to look again.
                if loaded.record.size_bytes.is_some() {
                    let mountpoint = self.layout.mountpoint(&loaded.record.id);
                    if let Some(usage) = self.usage_at(&loaded.record, Some(&mountpoint))? {
                        return Ok(PathUsage::Filesystem(usage));
                    }
                }
                let usage = self
                    .sys
                    .fs_usage(path)
                    .map_err(Error::io("read usage of", path))?;
                Ok(PathUsage::Filesystem(usage.into()))
            }
        }
    }

    /// Removes a target path Stowage created: a directory, or the file a
    /// device node was bound on. A non-empty directory fails.
    fn remove_target(&self, path: &Path) -> std::io::Result<()> {
        match self.sys.remove_dir(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => self.sys.remove_file(path),
            other => other,
        }
    }

    /// How the kernel shows the volume, if that can be told: its raw
    /// device while staged as one, else the filesystem tree at its
    /// mountpoint, else what the driver knows of its data.
    fn shown(&self, record: &VolumeRecord) -> Result<Option<Shown>> {
        let driver = self.drivers.get(&record.driver)?;
        if record.device.is_some() {
            return Ok(driver.attached_device(record)?.map(Shown::Device));
        }
        if let Some(m) = self.mount_at(&self.layout.mountpoint(&record.id))? {
            return Ok(Some(Shown::Tree(DataIdentity::of_mount(&m))));
        }
        Ok(driver.data_identity(record)?.map(Shown::Tree))
    }

    /// Unmounts every mount at `path` that shows this volume, topmost
    /// first. A mount that cannot be proven to be the volume's is refused,
    /// and left as it is.
    fn unmount_ours(&self, record: &VolumeRecord, path: &Path) -> Result<()> {
        let volume = self.shown(record)?;
        for _ in 0..MAX_STACKED_MOUNTS {
            let Some(m) = self.mount_at(path)? else {
                return Ok(());
            };
            if !volume.as_ref().is_some_and(|v| v.at(&m)) {
                return Err(Error::ForeignMount {
                    name: record.name.to_string(),
                    path: path.to_path_buf(),
                    what: format!("{} {}", m.fs_type, m.source),
                });
            }
            match self.sys.unmount(path) {
                Ok(()) => {}
                Err(e) if stowage_sys::is_not_mounted(&e) => return Ok(()),
                Err(e) => return Err(Error::io("unmount", path)(e)),
            }
        }
        Err(Error::PathTaken {
            path: path.to_path_buf(),
            what: format!("more than {MAX_STACKED_MOUNTS} mounts stacked there"),
        })
    }
}

/// The volume a stage or unstage call names, and the consumer its staging
/// path holds the volume as; both checked.
fn staging_call(paths: &CallerPaths, name: &str, staging: &Path) -> Result<(VolumeName, String)> {
    let name = VolumeName::parse(name)?;
    paths.check("staging path", staging)?;
    let consumer = format!("{STAGING_CONSUMER}{}", staging.display());
    crate::name::validate_consumer(&consumer)?;
    Ok((name, consumer))
}

/// How an error names a device's or a publication's access.
fn access_word(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "writable"
    }
}

/// Whether `m` binds the node of `device` (devtmpfs shows the node's
/// name as the mount's root).
fn binds_device(m: &MountEntry, device: &Path) -> bool {
    m.fs_type == "devtmpfs"
        && device
            .file_name()
            .is_some_and(|n| m.root == Path::new("/").join(n))
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

/// Whether `path` is where the volume is staged: as a filesystem (its
/// staging consumer) or as a device (its device node there).
fn is_staging(record: &VolumeRecord, path: &Path) -> bool {
    let staged_fs = (record.consumers.iter())
        .filter_map(|c| c.strip_prefix(STAGING_CONSUMER))
        .any(|s| Path::new(s) == path);
    let staged_device = (record.device.iter())
        .flat_map(|d| &d.stagings)
        .any(|s| s.join(DEVICE_NODE) == path);
    staged_fs || staged_device
}
