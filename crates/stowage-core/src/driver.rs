//! The driver trait: how a kind of volume provisions, presents and releases
//! its storage. The service owns the lifecycle; a driver only acts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use stowage_sys::UserNamespace;

use crate::error::{Error, Result};
use crate::options::Options;
use crate::volume::VolumeRecord;

/// How a mount presents the volume.
#[derive(Debug, Default, Clone, Copy)]
pub struct MountSpec<'a> {
    /// Present owners through this user namespace.
    pub idmap: Option<&'a UserNamespace>,
    /// SELinux context, for drivers that label by mount option.
    pub context: Option<&'a str>,
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
    /// Whether the driver applies `MountSpec::context` as a mount option.
    /// Otherwise the service relabels the files.
    fn labels_by_mount_option(&self) -> bool {
        false
    }
    /// The on-disk owner (uid, gid) of the volume's root, which
    /// `owner=UID:GID` presents as UID:GID.
    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)>;
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
