//! Stowage's doors. A door only parses a request into a call on the
//! [`stowage_core::VolumeService`] and maps the result back; no lifecycle
//! logic lives here.
//!
//! - [`rest`]: the REST API on the daemon's unix socket (described by
//!   `docs/openapi.yaml`).

pub mod rest;
