//! End-to-end tests: the real `stowage` binary, real mounts, temporary
//! roots and sockets. They need root (CI runs as root).

mod bad_input;
mod block;
mod corrupt;
mod crash;
mod escape;
mod exhaustion;
mod lifecycle;
mod ownership;
mod permissions;
mod space;
mod store_loss;
mod subvolumes;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stowage");
