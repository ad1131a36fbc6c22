//! A minimal HTTP/1 client for the daemon's unix socket.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// `host` is `unix:///path/to.sock` (or a bare absolute path).
    pub fn new(host: &str) -> Result<Self> {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        if !path.starts_with('/') {
            bail!("unsupported host {host:?}: use unix:///path/to/stowage.sock");
        }
        Ok(Client {
            socket: PathBuf::from(path),
        })
    }

    /// Sends one request; returns the status and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes)> {
        let resp = self.open(method, path, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends one request; returns the response with its body unread, for
    /// answers too large to hold in memory.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot connect to the stowage daemon at {} (is `stowage serve` running?)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "stowage");
        let bytes = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&v)?)
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(bytes))?).await?;
        if resp.headers().contains_key(hyper::header::WARNING) {
            eprintln!(
                "warning: the cluster store has no quorum: this answer is one etcd member's copy, and may be stale"
            );
        }
        Ok(resp)
    }

    /// Sends one request and decodes a successful JSON answer; an error
    /// answer becomes an error with the daemon's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let bytes = self.call_bytes(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).context("decoding the daemon's answer")
    }

    /// Sends one request and returns a successful answer's body, for a
    /// caller that decodes it borrowing from it; an error answer becomes
    /// an error with the daemon's message.
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(bytes)
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v["error"]["message"].as_str()) {
        Some(message) => anyhow!("{message}"),
        None => anyhow!(
            "daemon answered {status}: {}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// Percent-encodes one path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
