//! The core of Stowage: the volume model, the lifecycle state machine and
//! the traits that backends implement.
//!
//! Every door (REST, Docker plugin, CSI) calls one [`VolumeService`]; it
//! serializes operations per volume, journals intent before touching the
//! kernel, and reconciles the [`Store`] with the mount table on start.

pub mod access;
pub mod driver;
pub mod error;
pub mod layout;
mod locks;
pub mod name;
pub mod netattach;
pub mod node;
pub mod options;
pub mod ownership;
pub mod secret;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod transport;
pub mod volume;

pub use access::{AccessMode, Capabilities, Reach};
pub use driver::{DataIdentity, Driver, DriverSet, MountSpec, Progress, Source};
pub use error::{Error, ErrorKind, Result};
pub use layout::Layout;
pub use locks::{KeyGuard, KeyedLocks};
pub use name::VolumeName;
pub use node::{Node, NodeInfo, NodeState};
pub use service::{
    CallerPaths, NetworkAttach, PathUsage, ReconcileReport, SpaceAccount, SpacePolicy,
    VolumeService,
};
pub use snapshot::{Snapshot, SnapshotRecord, SnapshotRequest};
pub use store::{
    Collection, Durability, MemoryStore, Precondition, Read, Revision, Store, StoreError, Versioned,
};
pub use stowage_sys::MountAttrs;
pub use volume::{
    Attachment, CopyProgress, CreateRequest, DeviceUse, Volume, VolumeFilter, VolumeRecord,
    VolumeState, VolumeSummary,
};
