//! `local`: a directory under the data root, owned and moded as asked.
//!
//! On a btrfs data root each volume is a subvolume: it snapshots and
//! clones in constant time, and `size=` is enforced as a qgroup limit.
//! Elsewhere it is a plain directory, which takes no size (this refusal is
//! deliberate: a size nothing enforces is worse than none) and no snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stowage_core::options::{self, check_known, Options};
use stowage_core::{
    DataIdentity, Driver, Error, Layout, MountSpec, Progress, Result, SnapshotRecord, Source,
    VolumeRecord,
};
use stowage_sys::{exists_ok, missing_ok, CopyMethod, Sys, Usage};

const OPTIONS: &[&str] = &["uid", "gid", "mode", "size"];
const DEFAULT_MODE: u32 = 0o755;

pub struct Local {
    sys: Arc<dyn Sys>,
    layout: Layout,
}

impl Local {
    pub fn new(sys: Arc<dyn Sys>, layout: Layout) -> Self {
        Local { sys, layout }
    }

    /// Whether new volumes are subvolumes: whether the data root is btrfs.
    fn subvolumes(&self) -> Result<bool> {
        let dir = self.layout.volumes_dir();
        self.sys
            .supports_subvolumes(&dir)
            .map_err(Error::io("inspect the filesystem of", &dir))
    }

    /// Whether `path` is a subvolume; `None` if nothing is there.
    fn subvolume_at(&self, path: &Path) -> Result<Option<bool>> {
        match self.sys.is_subvolume(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other.map(Some).map_err(Error::io("inspect", path)),
        }
    }

    /// The subvolume of `volume`, refusing a plain directory for `what`.
    fn subvolume_of(&self, volume: &VolumeRecord, what: &str) -> Result<PathBuf> {
        let dir = self.layout.volume_dir(&volume.id);
        if self.subvolume_at(&dir)? != Some(true) {
            return Err(Error::Unsupported {
                driver: self.name().into(),
                what: format!(
                    "{what} of volume {}: it is a plain directory, and only volumes on a \
                     btrfs data root (subvolumes) have them",
                    volume.name
                ),
            });
        }
        Ok(dir)
    }

    fn limit(&self, dir: &Path, size: u64) -> Result<()> {
        self.sys
            .limit_subvolume(dir, size)
            .map_err(Error::io("set the size limit (btrfs qgroup) of", dir))
    }

    /// Deletes the subvolume or directory tree at `path`, if any.
    fn delete(&self, path: &Path) -> Result<()> {
        let deleted = match self.subvolume_at(path)? {
            None => return Ok(()),
            Some(true) => self.sys.delete_subvolume(path),
            Some(false) => self.sys.remove_tree(path),
        };
        missing_ok(deleted).map_err(Error::io("remove", path))
    }
}

impl Driver for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn validate(&self, opts: &Options) -> Result<()> {
        check_known(self.name(), opts, OPTIONS)?;
        options::id(opts, "uid")?;
        options::id(opts, "gid")?;
        options::mode(opts, "mode")?;
        if options::size(opts, "size")?.is_some() && !self.subvolumes()? {
            // Never accept a size that nothing enforces.
            return Err(Error::SizeUnsupported {
                driver: self.name().into(),
                reason: format!(
                    "local volumes enforce one only on a btrfs data root (as a qgroup \
                     limit), and {} is not on btrfs; use --driver block -o size=SIZE \
                     for a volume with a size here",
                    self.layout.data_root.display()
                ),
            });
        }
        Ok(())
    }

    fn provisions_storage(&self) -> bool {
        true
    }

    fn requested_size(&self, opts: &Options) -> Result<Option<u64>> {
        options::size(opts, "size")
    }

    fn create(&self, volume: &VolumeRecord) -> Result<()> {
        let dir = self.layout.volume_dir(&volume.id);
        let made = if self.subvolumes()? {
            self.sys.create_subvolume(&dir)
        } else {
            self.sys.create_dir(&dir, 0o700)
        };
        exists_ok(made).map_err(Error::io("create directory", &dir))?;
        if let Some(size) = volume.size_bytes {
            self.limit(&dir, size)?;
        }
        let opts = &volume.options;
        self.sys
            .set_owner_mode(
                &dir,
                options::id(opts, "uid")?.unwrap_or(0),
                options::id(opts, "gid")?.unwrap_or(0),
                options::mode(opts, "mode")?.unwrap_or(DEFAULT_MODE),
            )
            .map_err(Error::io("set owner and mode of", &dir))
    }

    fn remove(&self, volume: &VolumeRecord) -> Result<()> {
        self.delete(&self.layout.volume_dir(&volume.id))
    }

    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()> {
        let dir = self.layout.volume_dir(&volume.id);
        self.sys
            .bind_mount(&dir, target, false, spec.idmap)
            .map_err(Error::io("bind-mount", &dir))
    }

    fn data_identity(&self, volume: &VolumeRecord) -> Result<Option<DataIdentity>> {
        crate::directory_identity(self.sys.as_ref(), &self.layout.volume_dir(&volume.id))
    }

    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)> {
        let dir = self.layout.volume_dir(&volume.id);
        let info = self
            .sys
            .inspect_nofollow(&dir)
            .map_err(Error::io("inspect", &dir))?;
        Ok((info.uid, info.gid))
    }

    fn resize(&self, volume: &VolumeRecord, size: u64, _mounted_at: Option<&Path>) -> Result<()> {
        // A qgroup limit changes online; nothing is mounted or moved.
        let dir = self.subvolume_of(volume, "sizes")?;
        self.limit(&dir, size)
    }

    fn usage(&self, volume: &VolumeRecord, _mounted_at: Option<&Path>) -> Result<Option<Usage>> {
        let dir = self.subvolume_of(volume, "usage")?;
        self.sys
            .subvolume_usage(&dir)
            .map(Some)
            .map_err(Error::io("read usage of", &dir))
    }

    fn snapshot(
        &self,
        volume: &VolumeRecord,
        _mounted_at: Option<&Path>,
        snapshot: &SnapshotRecord,
        _progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        // A btrfs snapshot is atomic: it is consistent without a freeze,
        // even while consumers write.
        let dir = self.subvolume_of(volume, "snapshots")?;
        let dst = self.layout.snapshot(&snapshot.id);
        self.sys
            .snapshot_subvolume(&dir, &dst, true)
            .map_err(Error::io("snapshot", &dir))?;
        Ok(CopyMethod::Subvolume)
    }

    fn remove_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        self.delete(&self.layout.snapshot(&snapshot.id))
    }

    fn create_from(
        &self,
        volume: &VolumeRecord,
        source: Source<'_>,
        _progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        let src = match source {
            Source::Snapshot(snap) => self.layout.snapshot(&snap.id),
            Source::Volume(from, _) => self.subvolume_of(from, "clones")?,
        };
        let dst = self.layout.volume_dir(&volume.id);
        self.sys
            .snapshot_subvolume(&src, &dst, false)
            .map_err(Error::io("snapshot", &src))?;
        if let Some(size) = volume.size_bytes {
            self.limit(&dst, size)?;
        }
        Ok(CopyMethod::Subvolume)
    }
}
