//! End-to-end tests: the real `stowage` binary, real mounts, temporary
//! roots and sockets. They need root (CI runs as root).

mod bad_input;
mod block;
mod cluster;
mod corrupt;
mod crash;
mod escape;
mod exhaustion;
mod hosts;
mod lifecycle;
mod ownership;
mod permissions;
mod schema;
mod space;
mod store_loss;
mod subvolumes;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stowage");

/// The binary under test behind a shell that first runs `prelude` (`umask
/// 000`, `ulimit -Sn 1024`), as a daemon started that way would be; the
/// directory holding it goes with the returned guard.
pub fn wrapped_bin(prelude: &str) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("stowage-wrapped");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\n{prelude}\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = wrapper.to_str().unwrap().to_string();
    (dir, path)
}
