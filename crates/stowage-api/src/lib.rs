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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

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

/// How many connections one door holds at once. Each door has its own
/// count, so that a client holding many connections to one (a runaway
/// engine, say) starves none of the others; past it, a new connection is
/// closed as it arrives.
pub const MAX_CONNECTIONS: usize = 256;
/// How long an HTTP client may take to send a request's headers, counted
/// from when the connection is ready for one: a kept-alive connection
/// that sits idle this long is closed too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections a door may still take.
#[derive(Clone)]
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    door: &'static str,
    refused: Arc<AtomicU64>,
}

impl Admission {
    pub(crate) fn new(door: &'static str) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            door,
            refused: Arc::default(),
        }
    }

    /// A permit for one more connection, held for its life; `None` (and a
    /// warning, now and then) at the limit.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed);
            if refused.is_power_of_two() {
                warn!(
                    door = self.door,
                    limit = MAX_CONNECTIONS,
                    refused = refused + 1,
                    "connection limit reached; closing new connections"
                );
            }
        }
        permit
    }
}

/// Waits a little after a failed accept (out of descriptors, say), so that
/// the loop does not spin while the condition lasts.
pub(crate) async fn accept_failed(door: &str, e: &std::io::Error) {
    warn!(door, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serves `router` over HTTP/1 on a unix socket until `shutdown`
/// completes, then lets the requests in flight finish. At most
/// [`MAX_CONNECTIONS`] at once, each given [`HEADER_TIMEOUT`] per request.
pub async fn serve(
    door: &'static str,
    listener: tokio::net::UnixListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admission = Admission::new(door);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(door, &e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permit) = admission.admit() else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
