//! The driver trait: how a kind of volume provisions, presents and releases
//! its storage. The service owns the lifecycle; a driver only acts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stowage_sys::{CopyMethod, MountEntry, Usage, UserNamespace};

use crate::access::Capabilities;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::snapshot::SnapshotRecord;
use crate::volume::VolumeRecord;

/// Where a new volume's data comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Snapshot(&'a SnapshotRecord),
    /// A live volume, mounted at the path if it is in use.
    Volume(&'a VolumeRecord, Option<&'a Path>),
}

/// Progress of a long copy: (bytes done, bytes to copy).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// How a mount presents the volume.
#[derive(Debug, Default, Clone, Copy)]
pub struct MountSpec<'a> {
    /// Present owners through this user namespace.
    pub idmap: Option<&'a UserNamespace>,
    /// SELinux context, for drivers that label by mount option.
    pub context: Option<&'a str>,
}

/// How the mount table shows a mount of a volume's data, found without the
/// volume's own mountpoint: Stowage unmounts only what it can prove is a
/// volume's, never a mount found by its path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataIdentity {
    /// A directory of a filesystem: the filesystem's device (`major:minor`)
    /// and the directory's path within it, a mount's `device` and `root`.
    Tree { device: String, root: PathBuf },
    /// Any mount of the filesystem with this source: a volume's own block
    /// device, or a tmpfs named for the volume.
    Source(String),
}

impl DataIdentity {
    /// The identity of what the mount `m` shows.
    pub fn of_mount(m: &MountEntry) -> DataIdentity {
        DataIdentity::Tree {
            device: m.device.clone(),
            root: m.root.clone(),
        }
    }

    /// The identity of the directory `path`, which lies in the mount `m`.
    pub fn of_path(m: &MountEntry, path: &Path) -> DataIdentity {
        DataIdentity::Tree {
            device: m.device.clone(),
            root: stowage_sys::path_in_filesystem(m, path),
        }
    }

    /// Whether the mount `m` shows this data.
    pub fn shown_by(&self, m: &MountEntry) -> bool {
        match self {
            DataIdentity::Tree { device, root } => m.device == *device && m.root == *root,
            DataIdentity::Source(source) => m.source == *source,
        }
    }
}

/// A kind of volume. Every method must be idempotent: after a crash the
/// service calls them again on half-done work.
pub trait Driver: Send + Sync + 'static {
    /// The name users pass as `--driver`.
    fn name(&self) -> &'static str;
    /// Checks the driver's own options before anything is recorded: unknown
    /// keys, values, and for imported paths the path itself. Options every
    /// driver takes (`owner`, `label`, ...) are checked by the service and
    /// not passed here.
    fn validate(&self, options: &Options) -> Result<()>;
    /// What volumes made with `options` (already validated) can do: where
    /// their storage is reached from and the access modes it allows.
    fn capabilities(&self, _options: &Options) -> Capabilities {
        Capabilities::NODE_LOCAL
    }
    /// Whether `create` and `remove` make or delete data on the host. A
    /// driver that provisions overrides all three; the others (storage
    /// found elsewhere, like `bind`, or made at mount time, like `tmpfs`)
    /// have their volumes created and removed with one store write, and
    /// these two are never called for them.
    fn provisions_storage(&self) -> bool {
        false
    }
    /// Provisions the volume's storage.
    fn create(&self, _volume: &VolumeRecord) -> Result<()> {
        Ok(())
    }
    /// Releases the volume's storage. Never deletes data it did not create.
    fn remove(&self, _volume: &VolumeRecord) -> Result<()> {
        Ok(())
    }
    /// Presents the volume's data on the empty directory `target` as `spec`
    /// says. A filesystem that refuses idmapping must fail with `EINVAL`,
    /// so the service can fall back to changing owners.
    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()>;
    /// Attaches the volume's block device so that it stays attached with
    /// no mount, read-only if asked, and returns its path (raw block
    /// access). Called while the volume is not mounted.
    fn attach_device(&self, _volume: &VolumeRecord, _read_only: bool) -> Result<PathBuf> {
        Err(self.unsupported("raw block access"))
    }
    /// The volume's block device, if one is attached.
    fn attached_device(&self, _volume: &VolumeRecord) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// Detaches the device `attach_device` attached; one that is not
    /// attached is not an error.
    fn detach_device(&self, _volume: &VolumeRecord) -> Result<()> {
        Ok(())
    }
    /// The image file of the volume's block device, which its home node
    /// may export to other nodes; `None` for storage that is no image,
    /// which only its home node reaches.
    fn network_image(&self, _volume: &VolumeRecord) -> Option<PathBuf> {
        None
    }
    /// Whether [`Driver::network_image`] names an image for its volumes.
    fn exports_images(&self) -> bool {
        false
    }
    /// How a mount of the volume's data looks in the mount table while its
    /// own mountpoint shows nothing, if that can be told (a volume whose
    /// storage is made at mount time has none until then).
    fn data_identity(&self, _volume: &VolumeRecord) -> Result<Option<DataIdentity>> {
        Ok(None)
    }
    /// Whether the driver applies `MountSpec::context` as a mount option.
    /// Otherwise the service relabels the files.
    fn labels_by_mount_option(&self) -> bool {
        false
    }
    /// The on-disk owner (uid, gid) of the volume's root, which
    /// `owner=UID:GID` presents as UID:GID. Called while not mounted.
    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)>;

    /// Undoes, on a volume found mounted at start, whatever a crash may
    /// have left half done (a frozen filesystem).
    fn recover(&self, _volume: &VolumeRecord, _mounted_at: &Path) -> Result<()> {
        Ok(())
    }
    /// The size in bytes a volume created with `options` will have, if
    /// the driver enforces one. Checked against the space on the host.
    fn requested_size(&self, _options: &Options) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Bytes of the data root the volume's storage takes now (what a thin
    /// image has allocated so far).
    fn allocated_bytes(&self, _volume: &VolumeRecord) -> Result<u64> {
        Ok(0)
    }
    /// Bytes that storage of `size` bytes with `options` takes at once, as
    /// a thick image does; 0 for storage that takes blocks as written.
    fn preallocated_bytes(&self, _options: &Options, _size: u64) -> Result<u64> {
        Ok(0)
    }
    /// Grows the volume to `size` bytes, or gives a volume without a size
    /// that size; it is mounted at `mounted_at` when in use. Smaller sizes
    /// have been refused by the caller.
    fn resize(&self, _volume: &VolumeRecord, _size: u64, _mounted_at: Option<&Path>) -> Result<()> {
        Err(self.unsupported("resizing"))
    }
    /// Capacity and use, for volumes with a size.
    fn usage(&self, _volume: &VolumeRecord, _mounted_at: Option<&Path>) -> Result<Option<Usage>> {
        Ok(None)
    }
    /// Copies the volume's data, consistently even while mounted at
    /// `mounted_at`, to the new snapshot `snapshot`.
    fn snapshot(
        &self,
        _volume: &VolumeRecord,
        _mounted_at: Option<&Path>,
        _snapshot: &SnapshotRecord,
        _progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        Err(self.unsupported("snapshots"))
    }
    /// Deletes a snapshot's data; absent data is not an error.
    fn remove_snapshot(&self, _snapshot: &SnapshotRecord) -> Result<()> {
        Ok(())
    }
    /// Provisions the volume's storage as a copy of `source`. Like
    /// `create`, it must be undone by `remove`.
    fn create_from(
        &self,
        _volume: &VolumeRecord,
        _source: Source<'_>,
        _progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        Err(self.unsupported("clones and restores"))
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported {
            driver: self.name().to_string(),
            what: what.to_string(),
        }
    }
}

/// The drivers a service knows, by name.
#[derive(Clone, Default)]
pub struct DriverSet {
    drivers: BTreeMap<&'static str, Arc<dyn Driver>>,
}

impl DriverSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, driver: Arc<dyn Driver>) -> Self {
        self.drivers.insert(driver.name(), driver);
        self
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn Driver>> {
        self.drivers.get(name).ok_or_else(|| Error::UnknownDriver {
            driver: name.to_string(),
            known: self.names().map(str::to_string).collect(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.drivers.keys().copied()
    }
}
