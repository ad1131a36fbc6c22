//! `local`: a directory under the data root, owned and moded as asked.

use std::path::Path;
use std::sync::Arc;

use stowage_core::options::{self, check_known, Options};
use stowage_core::{Driver, Error, Layout, MountSpec, Result, VolumeRecord};
use stowage_sys::{exists_ok, missing_ok, Sys};

const OPTIONS: &[&str] = &["uid", "gid", "mode"];
const DEFAULT_MODE: u32 = 0o755;

pub struct Local {
    sys: Arc<dyn Sys>,
    layout: Layout,
}

impl Local {
    pub fn new(sys: Arc<dyn Sys>, layout: Layout) -> Self {
        Local { sys, layout }
    }
}

impl Driver for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn validate(&self, opts: &Options) -> Result<()> {
        if let Some(size) = opts.get("size") {
            // Never accept a size that nothing enforces.
            return Err(Error::invalid_option(
                "size",
                size,
                "local volumes cannot enforce a size yet (project quotas are not \
                 implemented); use --driver block -o size=SIZE for a volume with a size",
            ));
        }
        check_known(self.name(), opts, OPTIONS)?;
        options::id(opts, "uid")?;
        options::id(opts, "gid")?;
        options::mode(opts, "mode")?;
        Ok(())
    }

    fn provisions_storage(&self) -> bool {
        true
    }

    fn create(&self, volume: &VolumeRecord) -> Result<()> {
        let dir = self.layout.volume_dir(&volume.id);
        exists_ok(self.sys.create_dir(&dir, 0o700)).map_err(Error::io("create directory", &dir))?;
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
        let dir = self.layout.volume_dir(&volume.id);
        missing_ok(self.sys.remove_tree(&dir)).map_err(Error::io("remove", &dir))
    }

    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()> {
        let dir = self.layout.volume_dir(&volume.id);
        self.sys
            .bind_mount(&dir, target, false, spec.idmap)
            .map_err(Error::io("bind-mount", &dir))
    }

    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)> {
        let dir = self.layout.volume_dir(&volume.id);
        let info = self
            .sys
            .inspect_nofollow(&dir)
            .map_err(Error::io("inspect", &dir))?;
        Ok((info.uid, info.gid))
    }
}
