//! Stowage's built-in volume drivers.
//!
//! - [`Local`]: a directory under the data root.
//! - [`Tmpfs`]: a tmpfs mounted while the volume has consumers.
//! - [`Bind`]: an existing host directory, imported without copying.
//! - [`Block`]: a loop-backed image file with a filesystem and a size.
//!
//! Each is a small struct implementing [`stowage_core::Driver`]; the
//! service keeps them in a [`DriverSet`] next to any external driver.

mod bind;
mod block;
mod local;
mod tmpfs;

use std::path::Path;
use std::sync::Arc;

use stowage_core::{DataIdentity, DriverSet, Error, Layout, Result};
use stowage_sys::Sys;

pub use bind::Bind;
pub use block::{nbd::Nbd, Block};
pub use local::Local;
pub use tmpfs::Tmpfs;

/// The built-in drivers, ready for a [`stowage_core::VolumeService`].
pub fn builtin(sys: Arc<dyn Sys>, layout: &Layout) -> DriverSet {
    DriverSet::new()
        .with(Arc::new(Local::new(sys.clone(), layout.clone())))
        .with(Arc::new(Block::new(sys.clone(), layout.clone())))
        .with(Arc::new(Tmpfs::new(sys.clone())))
        .with(Arc::new(Bind::new(sys, layout.clone())))
}

/// The identity of the directory `dir` as mounts of it show it; `None` if
/// it is gone.
fn directory_identity(sys: &dyn Sys, dir: &Path) -> Result<Option<DataIdentity>> {
    match sys.mount_containing(dir) {
        Ok(m) => Ok(Some(DataIdentity::of_path(&m, dir))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("look up the mount holding", dir)(e)),
    }
}
