//! A CSI client on the daemon's unix socket, as a CO would hold one.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stowage_api::csi::proto::controller_client::ControllerClient;
use stowage_api::csi::proto::identity_client::IdentityClient;
use stowage_api::csi::proto::node_client::NodeClient;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response, Uri};

pub use stowage_api::csi::proto;

/// One HTTP/2 connection, used directly. tonic's `Channel` would put a
/// buffer task between every call and the connection (for reconnecting
/// and load balancing, which a socket to a local plugin does not need);
/// that hop is client overhead, not the door's, and the benchmark
/// compares doors.
#[derive(Clone)]
pub struct Connection(SendRequest<Body>);

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// The three CSI services of one plugin, over one connection.
#[derive(Clone)]
pub struct CsiClient {
    pub identity: IdentityClient<Connection>,
    pub controller: ControllerClient<Connection>,
    pub node: NodeClient<Connection>,
}

impl CsiClient {
    /// Connects to the CSI socket at `socket`.
    pub async fn connect(socket: &Path) -> std::io::Result<CsiClient> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let connection = Connection(sender);
        // Requests need an authority; a unix socket has none of its own.
        let origin = Uri::from_static("http://localhost");
        Ok(CsiClient {
            identity: IdentityClient::with_origin(connection.clone(), origin.clone()),
            controller: ControllerClient::with_origin(connection.clone(), origin.clone()),
            node: NodeClient::with_origin(connection, origin),
        })
    }
}
