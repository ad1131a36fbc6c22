//! Harnesses for Stowage's end-to-end tests and benchmarks: a daemon on
//! temporary roots driven through its CLI ([`daemon`]), and the container
//! engines that drive its plugin socket ([`engines`]), and a CSI client
//! for its gRPC socket ([`csi`]), and a real etcd ([`etcd`]).

pub mod csi;
pub mod daemon;
pub mod engines;
pub mod etcd;
pub mod netns;
pub mod scratch;

pub use daemon::{
    fs_type_at, holds_within, loop_devices_backing, mounts_under, owner, require_root, run,
    stderr_of, wait_until, Daemon,
};
pub use engines::{Env, Kind, Podman, IMAGE};
pub use scratch::ScratchFs;
