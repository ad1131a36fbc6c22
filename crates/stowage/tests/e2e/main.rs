//! End-to-end tests: the real `stowage` binary, real mounts, temporary
//! roots and sockets. They need root (CI runs as root).

mod bad_input;
mod crash;
mod harness;
mod lifecycle;
