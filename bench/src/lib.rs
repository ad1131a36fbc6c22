//! Shared pieces of Stowage's benchmarks.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use stowage_testkit::Daemon;
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

/// The `stowage` binary built beside the running bench.
pub fn stowage_bin() -> Result<String> {
    let bin = std::env::current_exe()?.with_file_name("stowage");
    Ok(bin.to_str().context("binary path")?.to_string())
}

/// A daemon with its roots where `stowage serve` puts them by default:
/// the data root on the root filesystem (under /var/tmp, like
/// /var/lib/stowage), so fsync and mkfs cost what they cost for a real
/// data root, and the run root, which holds the mountpoints, under /run
/// (a tmpfs on most hosts; on this VM, the same ext4 as /, mounted with
/// `discard`, so each removed directory waits for a discard).
pub fn daemon_on_root_fs() -> Result<Daemon> {
    Ok(Daemon::start_apart(
        &stowage_bin()?,
        Path::new("/var/tmp"),
        Path::new("/run"),
    ))
}

/// The REST requests of one volume's life, the lifecycle cycle every
/// bench compares against: create (with `create_body`), mount, unmount,
/// remove.
pub fn rest_cycle(name: &str, create_body: String) -> [(Method, String, Option<String>); 4] {
    let consumer = || Some(r#"{"consumer":"bench"}"#.to_string());
    [
        (Method::POST, "/v1/volumes".to_string(), Some(create_body)),
        (
            Method::POST,
            format!("/v1/volumes/{name}/mount"),
            consumer(),
        ),
        (
            Method::POST,
            format!("/v1/volumes/{name}/unmount"),
            consumer(),
        ),
        (Method::DELETE, format!("/v1/volumes/{name}"), None),
    ]
}

/// The median of some durations.
pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// The median of some figures.
pub fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `--runs N --seconds S`: how often, and for how long each time, a bench
/// of timed runs repeats its measurement.
pub struct RunSettings {
    pub runs: usize,
    pub seconds: f64,
}

impl RunSettings {
    /// Reads the flags from the command line; 5 runs of 2 s by default.
    pub fn from_args() -> Result<RunSettings> {
        let mut s = RunSettings {
            runs: 5,
            seconds: 2.0,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let value = it.next().context("flag without a value")?;
            match a.as_str() {
                "--runs" => s.runs = value.parse()?,
                "--seconds" => s.seconds = value.parse()?,
                _ => bail!("unknown flag {a}; use --runs N --seconds S"),
            }
        }
        Ok(s)
    }
}
