//! A CSI client on the daemon's unix socket, as a CO would hold one.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use stowage_api::csi::proto::controller_client::ControllerClient;
use stowage_api::csi::proto::identity_client::IdentityClient;
use stowage_api::csi::proto::node_client::NodeClient;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response, Uri};

pub use stowage_api::csi::proto;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection, used the way a CO's gRPC client uses it: a
/// unary call's headers and message leave in one write.
///
/// Why not tonic's `Channel` or hyper's client: `Channel` puts a buffer
/// task between every call and the connection (for reconnecting and load
/// balancing, which a socket to a local plugin does not need), and
/// hyper's HTTP/2 client streams every request body from a task of its
/// own, so the headers and the message go out in two writes and the
/// server wakes for each. Both are client overhead, not the door's, and
/// the benchmark compares doors; grpc-go, which kubelet uses, writes a
/// unary call at once.
#[derive(Clone)]
pub struct Connection(h2::client::SendRequest<Bytes>);

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<Reply>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Reply>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let sender = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // A unary call's body is one message, ready at once.
            let body = body.collect().await?;
            let trailers = body.trailers().cloned();
            let (response, mut stream) =
                (sender.ready().await?).send_request(Request::from_parts(parts, ()), false)?;
            stream.send_data(body.to_bytes(), trailers.is_none())?;
            if let Some(trailers) = trailers {
                stream.send_trailers(trailers)?;
            }
            Ok(response.await?.map(Reply))
        })
    }
}

/// The body of a reply: the stream's data, then its trailers (where gRPC
/// puts the call's status).
pub struct Reply(h2::RecvStream);

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let stream = &mut self.0;
        if let Some(data) = ready!(stream.poll_data(cx)) {
            return Poll::Ready(Some(data.and_then(|data| {
                // Received bytes are consumed: let the server send more.
                stream.flow_control().release_capacity(data.len())?;
                Ok(Frame::data(data))
            })));
        }
        Poll::Ready(
            ready!(stream.poll_trailers(cx))
                .transpose()
                .map(|t| t.map(Frame::trailers)),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
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
        let (sender, connection) = h2::client::handshake(stream)
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

/// Runs `call` with a client connected to `socket`, to its end, from code
/// that is not async.
pub fn blocking<T, F>(socket: &Path, call: impl FnOnce(CsiClient) -> F) -> T
where
    F: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let csi = CsiClient::connect(socket).await.unwrap();
        call(csi).await
    })
}

/// A filesystem volume with access `mode`.
pub fn mount_cap(mode: proto::volume_capability::access_mode::Mode) -> proto::VolumeCapability {
    use proto::volume_capability::{AccessMode, AccessType, MountVolume};
    proto::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// ControllerPublish of `volume` to `node`, single-node-writer, through
/// the CSI socket at `socket`.
pub fn attach(socket: &Path, volume: &str, node: &str) -> Result<(), tonic::Status> {
    use proto::volume_capability::access_mode::Mode;
    let req = proto::ControllerPublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    blocking(socket, |csi| async move {
        csi.controller
            .clone()
            .controller_publish_volume(req)
            .await
            .map(drop)
    })
}

/// ControllerUnpublish of `volume` from `node` through the CSI socket at
/// `socket`.
pub fn detach(socket: &Path, volume: &str, node: &str) -> Result<(), tonic::Status> {
    let req = proto::ControllerUnpublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        ..Default::default()
    };
    blocking(socket, |csi| async move {
        csi.controller
            .clone()
            .controller_unpublish_volume(req)
            .await
            .map(drop)
    })
}
