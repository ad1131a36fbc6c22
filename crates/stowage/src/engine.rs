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

use anyhow::{anyhow, bail, Context, Result};
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::cli::EngineKind;
use crate::client::{encode, Client};
use http_body_util::BodyExt;

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
    let header = tar
        .get(..512)
        .context("the archive is shorter than one tar header")?;
    header_owner(header)
}

/// Reads the container's exported filesystem until `path`'s header.
async fn export_owner(engine: &Client, id: &str, path: &str) -> Result<(u32, u32)> {
    let resp = engine
        .open(Method::GET, &format!("/containers/{id}/export"), None)
        .await?;
    if !resp.status().is_success() {
        let body = resp.into_body().collect().await?.to_bytes();
        bail!("{}", message(&body));
    }
    let want = path.trim_start_matches('/').trim_end_matches('/');
    let mut scanner = TarScanner::default();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if let Some(owner) = scanner.feed(&data, want)? {
                return Ok(owner);
            }
        }
    }
    bail!("no such file or directory in the image")
}

/// Finds one entry's header in a tar stream fed in pieces. Knows ustar
/// names with prefixes, GNU long names and pax `path` records.
#[derive(Default)]
struct TarScanner {
    buf: Vec<u8>,
    /// Bytes of entry data still to skip.
    skip: u64,
    /// A long name announced by the previous (GNU or pax) header.
    long_name: Option<String>,
}

impl TarScanner {
    fn feed(&mut self, data: &[u8], want: &str) -> Result<Option<(u32, u32)>> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min((self.buf.len() - at) as u64) as usize;
                at += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    break;
                }
            }
            let Some(header) = self.buf.get(at..at + 512) else {
                break;
            };
            if header.iter().all(|b| *b == 0) {
                at += 512;
                continue;
            }
            let size = octal(&header[124..136])?;
            let padded = size.div_ceil(512) * 512;
            let kind = header[156];
            let name = match self.long_name.take() {
                Some(n) => n,
                None => ustar_name(header),
            };
            match kind {
                b'L' | b'x' => {
                    // The name lives in this entry's data.
                    let Some(payload) = self.buf.get(at + 512..at + 512 + size as usize) else {
                        break; // wait for the whole record
                    };
                    self.long_name = if kind == b'L' {
                        Some(cstr(payload))
                    } else {
                        pax_path(payload)
                    };
                    at += 512 + padded as usize;
                    continue;
                }
                _ => {}
            }
            if name.trim_start_matches("./").trim_end_matches('/') == want {
                return header_owner(header).map(Some);
            }
            at += 512;
            self.skip = padded;
        }
        self.buf.drain(..at);
        Ok(None)
    }
}

fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn ustar_name(header: &[u8]) -> String {
    let name = cstr(&header[..100]);
    let prefix = if &header[257..262] == b"ustar" {
        cstr(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// The `path` of a pax extended header: records `LEN key=value\n`.
fn pax_path(payload: &[u8]) -> Option<String> {
    String::from_utf8_lossy(payload).lines().find_map(|r| {
        r.split_once(' ')?
            .1
            .strip_prefix("path=")
            .map(str::to_string)
    })
}

fn octal(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        return Ok(field[1..]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let text = text.trim_start_matches(' ');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| anyhow!("bad tar number {text:?}"))
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// The uid and gid of a tar header (octal fields at offsets 108 and 116;
/// GNU base-256 for large ids).
fn header_owner(header: &[u8]) -> Result<(u32, u32)> {
    let id = |at: usize| -> Result<u32> {
        let v = octal(&header[at..at + 8])?;
        u32::try_from(v).map_err(|_| anyhow!("tar id {v} out of range"))
    };
    Ok((id(108)?, id(116)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(uid: &[u8; 8], gid: &[u8; 8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[108..116].copy_from_slice(uid);
        h[116..124].copy_from_slice(gid);
        h
    }

    #[test]
    fn reads_octal_and_base256_ids() {
        assert_eq!(
            header_owner(&header(b"0000270\0", b"0001746\0")).unwrap(),
            (184, 998)
        );
        let mut big = [0u8; 8];
        big[0] = 0x80;
        big[4..8].copy_from_slice(&2147483647u32.to_be_bytes());
        assert_eq!(
            header_owner(&header(&big, b"0000000\0")).unwrap(),
            (2147483647, 0)
        );
        assert!(header_owner(&header(b"zz\0\0\0\0\0\0", b"0\0\0\0\0\0\0\0")).is_err());
    }

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
