//! A CSI client on the daemon's unix socket, as a CO would hold one.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use stowage_api::csi::proto::controller_client::ControllerClient;
use stowage_api::csi::proto::identity_client::IdentityClient;
use stowage_api::csi::proto::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

pub use stowage_api::csi::proto;

/// The three CSI services of one plugin, over one connection.
#[derive(Clone)]
pub struct CsiClient {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl CsiClient {
    /// Connects to the CSI socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<CsiClient, tonic::transport::Error> {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by the API and unused: the connector dials
        // the unix socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(CsiClient {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }
}
