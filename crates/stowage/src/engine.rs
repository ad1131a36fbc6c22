//! Asking a container engine which uid:gid owns a path in an image, for
//! `stowage volume create --owner-from-image IMAGE:PATH`.
//!
//! Through the engine's HTTP API (Docker's, which Podman also serves with
//! `podman system service`): create a stopped container from the image,
//! read the owner from a tar header, and remove the container. Docker's
//! `GET /containers/{id}/archive?path=PATH` gives PATH's header first;
//! Podman 4.3 writes 0:0 into every header of that archive, so for Podman
//! the owner comes from `GET /containers/{id}/export`, read as a stream
//! until PATH's header (measured on this machine).

use std::io;

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::json;
use stowage::archive::{self, Entry};
use tokio_stream::StreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::cli::EngineKind;
use crate::client::{encode, Client};

/// Where each engine's API listens unless told otherwise.
pub fn default_host(kind: EngineKind) -> String {
    let (var, fallback) = match kind {
        EngineKind::Docker => ("DOCKER_HOST", "unix:///var/run/docker.sock"),
        EngineKind::Podman => ("CONTAINER_HOST", "unix:///run/podman/podman.sock"),
    };
    std::env::var(var).unwrap_or_else(|_| fallback.to_string())
}

/// Splits `IMAGE:PATH` at the colon that starts the absolute path, so that
/// registry ports and tags (`host:5000/img:tag:/data`) stay in the image.
pub fn parse_image_path(spec: &str) -> Result<(&str, &str)> {
    match spec.find(":/") {
        Some(i) if i > 0 => Ok((&spec[..i], &spec[i + 1..])),
        _ => {
            bail!("expected IMAGE:PATH with an absolute path, such as mongo:/data/db; got {spec:?}")
        }
    }
}

/// The owner of `path` in `image`, as the engine at `host` reports it.
pub async fn image_path_owner(
    kind: EngineKind,
    host: &str,
    image: &str,
    path: &str,
) -> Result<(u32, u32)> {
    let engine = Client::new(host)?;
    let body = json!({ "Image": image, "Cmd": ["true"], "NetworkDisabled": true });
    let (status, bytes) = engine
        .send(Method::POST, "/containers/create", Some(body))
        .await
        .with_context(|| format!("asking the engine at {host}"))?;
    if status != StatusCode::CREATED && status != StatusCode::OK {
        bail!(
            "the engine could not create a container from {image}: {}",
            message(&bytes)
        );
    }
    let created: serde_json::Value = serde_json::from_slice(&bytes)?;
    let id = created["Id"]
        .as_str()
        .context("the engine returned no container id")?
        .to_string();
    let owner = match kind {
        EngineKind::Docker => archive_owner(&engine, &id, path).await,
        EngineKind::Podman => export_owner(&engine, &id, path).await,
    };
    if let Err(e) = engine
        .send(
            Method::DELETE,
            &format!("/containers/{id}?force=true"),
            None,
        )
        .await
    {
        eprintln!("warning: could not remove the helper container {id}: {e:#}");
    }
    owner.with_context(|| format!("{path} in {image}"))
}

async fn archive_owner(engine: &Client, id: &str, path: &str) -> Result<(u32, u32)> {
    let archive = format!("/containers/{id}/archive?path={}", encode(path));
    let (status, tar) = engine.send(Method::GET, &archive, None).await?;
    if !status.is_success() {
        bail!("{}", message(&tar));
    }
    archive::entry_owner(&tar[..], Entry::First)?.context("the engine sent an empty archive")
}

/// Reads the container's exported filesystem until `path`'s header, on a
/// blocking thread fed by the response as it streams in.
async fn export_owner(engine: &Client, id: &str, path: &str) -> Result<(u32, u32)> {
    let resp = engine
        .open(Method::GET, &format!("/containers/{id}/export"), None)
        .await?;
    if !resp.status().is_success() {
        let body = resp.into_body().collect().await?.to_bytes();
        bail!("{}", message(&body));
    }
    let stream = resp
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(io::Error::other));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let path = path.to_string();
    tokio::task::spawn_blocking(move || archive::entry_owner(reader, Entry::Path(&path)))
        .await??
        .context("no such file or directory in the image")
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_image_and_path() {
        assert_eq!(
            parse_image_path("mongo:/data/db").unwrap(),
            ("mongo", "/data/db")
        );
        assert_eq!(
            parse_image_path("reg:5000/mongo:4.4:/data").unwrap(),
            ("reg:5000/mongo:4.4", "/data")
        );
        assert!(parse_image_path("mongo").is_err());
        assert!(parse_image_path(":/data").is_err());
    }
}
