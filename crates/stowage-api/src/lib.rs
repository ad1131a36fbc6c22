//! Stowage's doors. A door only parses a request into a call on the
//! [`stowage_core::VolumeService`] and maps the result back; no lifecycle
//! logic lives here.
//!
//! - [`rest`]: the REST API on the daemon's unix socket (described by
//!   `docs/openapi.yaml`).
//! - [`docker`]: the Docker Volume Plugin API, used by Docker and Podman.
//! - [`csi`]: the Container Storage Interface over gRPC, used by
//!   Kubernetes, Nomad and Swarm.

pub mod csi;
pub mod docker;
pub mod rest;

use std::future::Future;

use stowage_core::Error;

/// Largest request body any door accepts. Requests are small JSON documents.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a core call made by a door failed.
pub(crate) enum DoorError {
    Core(Error),
    Panicked(String),
}

/// Runs blocking core work (store and kernel calls) off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, DoorError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(DoorError::Core),
        Err(e) => Err(DoorError::Panicked(format!("operation panicked: {e}"))),
    }
}

/// Serves `router` on a unix socket until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
