//! The CSI door: Container Storage Interface v1.12 over gRPC on a unix
//! socket, for Kubernetes, Nomad and Swarm.
//!
//! Like the other doors it only parses: each RPC becomes calls on the
//! [`VolumeService`], and core errors leave as the canonical gRPC codes of
//! [`ErrorKind::grpc_code`]. What is CSI's own lives here: checking
//! required fields, capacity ranges and capabilities, pagination tokens,
//! and answering `ABORTED` while another call on the same volume runs.
//! Volume and snapshot ids are Stowage names, so volumes made through CSI
//! are the ones `stowage volume ls` shows, and the other way round.
//! Secrets are accepted and never read or logged.

pub mod authority;
mod capability;
mod controller;
mod identity;
mod node;

use std::future::Future;
use std::sync::Arc;

use stowage_core::{Error, KeyGuard, KeyedLocks, VolumeService};
use tonic::{Code, Status};

use crate::{blocking, DoorError};

/// The generated CSI types and services (`proto/csi.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

/// The name Stowage registers under with orchestrators.
pub const PLUGIN_NAME: &str = "stowage.csi.dev";
/// The topology segment naming the host a volume lives on.
pub const TOPOLOGY_KEY: &str = "topology.stowage.csi.dev/node";

/// The three CSI services over one [`VolumeService`]: what [`serve`]
/// serves, and what fuzzing calls without the transport.
#[derive(Clone)]
pub struct Csi {
    service: Arc<VolumeService>,
    in_flight: Arc<InFlight>,
}

/// Serves the Identity, Controller and Node services on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    service: Arc<VolumeService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let csi = Csi::new(service);
    let admission = crate::Admission::new("csi");
    let incoming = admitted_connections(listener, admission);
    tonic::transport::Server::builder()
        // A peer that stops answering pings is gone: its slot is freed.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(proto::identity_server::IdentityServer::new(csi.clone()))
        .add_service(proto::controller_server::ControllerServer::new(csi.clone()))
        .add_service(proto::node_server::NodeServer::new(csi))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// How often an idle CSI connection is pinged, and how long the answer may
/// take before the connection is closed.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The CSI socket's connections, each admitted and behind the authority
/// front. Accepting runs in its own task so that a failed accept (out of
/// descriptors) waits and retries rather than ending the server.
fn admitted_connections(
    listener: tokio::net::UnixListener,
    admission: crate::Admission,
) -> impl tokio_stream::Stream<Item = std::io::Result<authority::AuthorityFix<tokio::net::UnixStream>>>
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    crate::accept_failed("csi", &e).await;
                    continue;
                }
            };
            let Some(permit) = admission.admit() else {
                continue;
            };
            let conn = authority::AuthorityFix::new(stream, permit);
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl Csi {
    pub fn new(service: Arc<VolumeService>) -> Self {
        Csi {
            service,
            in_flight: Arc::default(),
        }
    }

    /// Runs blocking core work on the volume or snapshot `key`, answering
    /// `ABORTED` if another call on it is still running.
    async fn exclusive<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&VolumeService) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let _guard = self.in_flight.begin(key)?;
        self.on_id(f).await
    }

    /// Runs blocking core work on an id the CO gave. An id that is not
    /// even a valid name names nothing: `NOT_FOUND`, not a bad argument.
    async fn on_id<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VolumeService) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        self.run(move |s| {
            f(s).map_err(|e| match e {
                Error::InvalidName { name, .. } => Error::NotFound { name },
                e => e,
            })
        })
        .await
    }

    /// Runs blocking core work off the executor.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VolumeService) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let service = self.service.clone();
        blocking(move || f(&service)).await.map_err(status)
    }
}

/// Ids with a call in progress: a second call on one is answered, not
/// queued.
#[derive(Default)]
struct InFlight(KeyedLocks);

impl InFlight {
    fn begin(&self, key: &str) -> Result<KeyGuard<'_>, Status> {
        self.0
            .try_lock(key)
            .ok_or_else(|| Status::aborted(format!("an operation on {key} is already in progress")))
    }
}

/// A core error as a gRPC status, by its kind.
fn status(e: DoorError) -> Status {
    match e {
        DoorError::Core(e) => Status::new(Code::from(e.kind().grpc_code()), e.to_string()),
        DoorError::Panicked(msg) => Status::internal(msg),
    }
}

/// Treats `NOT_FOUND` as done: for deletes and detaches, which are
/// idempotent.
fn gone_is_ok(result: Result<(), Status>) -> Result<(), Status> {
    match result {
        Err(e) if e.code() == Code::NotFound => Ok(()),
        other => other,
    }
}

/// Fails with `INVALID_ARGUMENT` when a required field is empty.
fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

/// Pagination: a page of `items` (sorted by key) after `token`, at most
/// `max` long (0: all), and the token of the next page. The token is the
/// last key returned, so a page stays right when entries come and go.
fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    max: i32,
    token: &str,
) -> Result<(Vec<T>, String), Status> {
    const PREFIX: &str = "after:";
    let max = usize::try_from(max)
        .map_err(|_| Status::invalid_argument("max_entries must not be negative"))?;
    let after = match token {
        "" => None,
        t => Some(t.strip_prefix(PREFIX).ok_or_else(|| {
            Status::aborted(format!("starting_token {t:?} was not issued by Stowage"))
        })?),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| after.is_none_or(|a| key(i) > a))
        .collect();
    if max == 0 || rest.len() <= max {
        return Ok((rest, String::new()));
    }
    rest.truncate(max);
    let next = format!("{PREFIX}{}", key(rest.last().expect("max > 0")));
    Ok((rest, next))
}

/// Converts a byte count for the wire.
fn bytes_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_core::ErrorKind;

    fn code_of(kind: ErrorKind) -> Code {
        Code::from(kind.grpc_code())
    }

    #[test]
    fn core_errors_map_to_the_codes_the_spec_names() {
        assert_eq!(code_of(ErrorKind::InvalidArgument), Code::InvalidArgument);
        assert_eq!(code_of(ErrorKind::NotFound), Code::NotFound);
        assert_eq!(code_of(ErrorKind::Conflict), Code::AlreadyExists);
        assert_eq!(
            code_of(ErrorKind::FailedPrecondition),
            Code::FailedPrecondition
        );
        assert_eq!(
            code_of(ErrorKind::ResourceExhausted),
            Code::ResourceExhausted
        );
        assert_eq!(code_of(ErrorKind::OutOfRange), Code::OutOfRange);
        assert_eq!(code_of(ErrorKind::Internal), Code::Internal);
        assert_eq!(code_of(ErrorKind::Aborted), Code::Aborted);
        assert_eq!(code_of(ErrorKind::Unavailable), Code::Unavailable);
    }

    #[test]
    fn pages_follow_the_last_key_and_refuse_foreign_tokens() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = names(&["a", "b", "c", "d", "e"]);
        let (first, next) = page(all.clone(), |s| s, 2, "").unwrap();
        assert_eq!(first, names(&["a", "b"]));
        assert_eq!(next, "after:b");
        // "b" removed and "bb" added between pages: no repeat, no loss.
        let changed = names(&["a", "bb", "c", "d", "e"]);
        let (second, next) = page(changed, |s| s, 2, &next).unwrap();
        assert_eq!(second, names(&["bb", "c"]));
        let (last, next) = page(all.clone(), |s| s, 0, &next).unwrap();
        assert_eq!(last, names(&["d", "e"]));
        assert_eq!(next, "");
        assert_eq!(
            page(all.clone(), |s| s, 0, "invalid-token")
                .unwrap_err()
                .code(),
            Code::Aborted
        );
        assert_eq!(
            page(all, |s| s, -1, "").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    /// The checked-in manifests name this plugin, and kubelet's socket
    /// path is where the daemon is told to serve.
    #[test]
    fn kubernetes_manifests_name_this_plugin() {
        use serde::Deserialize;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes");
        let mut kinds = Vec::new();
        for file in [
            "csidriver.yaml",
            "storageclass.yaml",
            "daemonset.yaml",
            "rbac.yaml",
        ] {
            let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc = serde_yaml::Value::deserialize(doc).unwrap();
                let kind = doc["kind"].as_str().unwrap().to_string();
                match kind.as_str() {
                    "CSIDriver" => assert_eq!(doc["metadata"]["name"].as_str(), Some(PLUGIN_NAME)),
                    "StorageClass" => assert_eq!(doc["provisioner"].as_str(), Some(PLUGIN_NAME)),
                    _ => {}
                }
                kinds.push(kind);
            }
        }
        for wanted in ["CSIDriver", "StorageClass", "DaemonSet", "ClusterRole"] {
            assert!(kinds.iter().any(|k| k == wanted), "{wanted} missing");
        }
        let daemonset = std::fs::read_to_string(format!("{dir}/daemonset.yaml")).unwrap();
        assert!(daemonset.contains(&format!("/var/lib/kubelet/plugins/{PLUGIN_NAME}/csi.sock")));
        assert!(daemonset.contains(&format!("path: /var/lib/kubelet/plugins/{PLUGIN_NAME}\n")));
    }

    #[test]
    fn a_second_call_on_the_same_key_is_aborted_until_the_first_ends() {
        let set = InFlight::default();
        let first = set.begin("v").unwrap();
        assert_eq!(set.begin("v").err().unwrap().code(), Code::Aborted);
        assert!(set.begin("w").is_ok());
        drop(first);
        assert!(set.begin("v").is_ok());
    }
}
