//! Sizes: growing a volume, and reading its usage.

use std::path::Path;

use super::{logged, VolumeService};
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::volume::{Usage, Volume, VolumeRecord};

impl VolumeService {
    /// Grows a volume to `size` bytes, online if it is in use, or gives a
    /// volume without a size one. Asking for the current size succeeds and
    /// changes nothing; a smaller size is refused.
    pub fn resize(&self, name: &str, size: u64) -> Result<Volume> {
        logged("resize", name, || self.resize_inner(name, size))
    }

    fn resize_inner(&self, name: &str, size: u64) -> Result<Volume> {
        let name = VolumeName::parse(name)?;
        let _guard = self.locks.lock(name.as_str());
        let mut loaded = self.load_here(&name)?;
        let driver = self.drivers.get(&loaded.record.driver)?.clone();
        // A volume without a size gets one where its driver can enforce
        // it (a subvolume's limit); other drivers refuse.
        let current = loaded.record.size_bytes;
        if let Some(current) = current.filter(|c| size < *c) {
            return Err(Error::InvalidRequest(format!(
                "volume {name} has {current} bytes; shrinking to {size} is not supported"
            )));
        }
        if current != Some(size) {
            let more = size - current.unwrap_or(0);
            let (_, own) = crate::ownership::split(&loaded.record.options);
            let now = driver.preallocated_bytes(&own, more)?;
            self.check_space(driver.as_ref(), more, now)?;
            let mounted = self.mounted_at(&loaded.record.id)?;
            driver.resize(&loaded.record, size, mounted.as_deref())?;
            loaded.record.size_bytes = Some(size);
            self.save(&mut loaded)?;
        }
        let mut volume = self.view(&loaded.record)?;
        volume.usage = self.usage(&loaded.record)?;
        Ok(volume)
    }

    /// Bytes free on the data root, where new volumes' storage goes.
    pub fn free_space(&self) -> Result<u64> {
        let root = &self.layout.data_root;
        Ok(self
            .sys
            .fs_usage(root)
            .map_err(Error::io("read free space of", root))?
            .available_bytes)
    }

    /// Usage of a ready volume, read under its lock.
    pub(super) fn usage(&self, record: &VolumeRecord) -> Result<Option<Usage>> {
        let mounted = self.mounted_at(&record.id)?;
        self.usage_at(record, mounted.as_deref())
    }

    /// Usage of a ready volume known to be mounted at `mounted_at` (or
    /// not mounted, if `None`).
    pub(super) fn usage_at(
        &self,
        record: &VolumeRecord,
        mounted_at: Option<&Path>,
    ) -> Result<Option<Usage>> {
        let driver = self.drivers.get(&record.driver)?;
        Ok(driver.usage(record, mounted_at)?.map(Usage::from))
    }
}
