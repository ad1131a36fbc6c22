//! `tmpfs`: memory-backed storage. Like Docker's tmpfs volumes, the data
//! lives while the volume is mounted: the first consumer gets a fresh
//! tmpfs, and the last unmount releases it.

use std::path::Path;
use std::sync::Arc;

use stowage_core::options::{self, check_known, Options};
use stowage_core::{DataIdentity, Driver, Error, MountSpec, Result, VolumeRecord};
use stowage_sys::{Sys, TmpfsOptions};

const OPTIONS: &[&str] = &["size", "mode", "uid", "gid"];
const DEFAULT_MODE: u32 = 0o755;

pub struct Tmpfs {
    sys: Arc<dyn Sys>,
}

impl Tmpfs {
    pub fn new(sys: Arc<dyn Sys>) -> Self {
        Tmpfs { sys }
    }

    fn mount_options(opts: &Options) -> Result<TmpfsOptions> {
        Ok(TmpfsOptions {
            size: options::tmpfs_size(opts, "size")?,
            mode: options::mode(opts, "mode")?.unwrap_or(DEFAULT_MODE),
            uid: options::id(opts, "uid")?.unwrap_or(0),
            gid: options::id(opts, "gid")?.unwrap_or(0),
            context: None,
        })
    }
}

/// The source a volume's tmpfs is mounted with: unique to the volume.
fn source_name(volume: &VolumeRecord) -> String {
    format!("stowage-{}", volume.id)
}

impl Driver for Tmpfs {
    fn name(&self) -> &'static str {
        "tmpfs"
    }

    fn validate(&self, opts: &Options) -> Result<()> {
        check_known(self.name(), opts, OPTIONS)?;
        Self::mount_options(opts).map(drop)
    }

    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()> {
        let mut opts = Self::mount_options(&volume.options)?;
        opts.context = spec.context.map(str::to_string);
        self.sys
            .mount_tmpfs(&source_name(volume), target, &opts, spec.idmap)
            .map_err(Error::io("mount tmpfs on", target))
    }

    /// The volume's tmpfs, while it lives, is the one named for it.
    fn data_identity(&self, volume: &VolumeRecord) -> Result<Option<DataIdentity>> {
        Ok(Some(DataIdentity::Source(source_name(volume))))
    }

    /// tmpfs takes `context=` at mount time: no relabelling needed.
    fn labels_by_mount_option(&self) -> bool {
        true
    }

    /// A fresh tmpfs's root belongs to its `uid` and `gid` options.
    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)> {
        let opts = Self::mount_options(&volume.options)?;
        Ok((opts.uid, opts.gid))
    }
}
