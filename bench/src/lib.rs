//! Shared pieces of Stowage's benchmarks.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// A keep-alive HTTP/1 connection to the daemon.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(socket: &Path) -> Result<Conn> {
        let stream = UnixStream::connect(socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Sends one request and returns the body; an error status becomes an
    /// error.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "stowage");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }
}

/// The median of some durations.
pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}
