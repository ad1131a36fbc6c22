//! The Docker Volume Plugin API (protocol v1), as Docker and Podman speak
//! it: `POST /Plugin.Activate` and `POST /VolumeDriver.*` with JSON bodies.
//!
//! Every failure is HTTP 500 with `{"Err": "..."}`. Podman ignores `Err` in
//! a 200 reply and would hand a container the wrong directory, so no
//! failure may ever leave with a 200. `Get` only fails for a volume that
//! does not exist: Docker forgets a volume whose `Get` fails after its own
//! restart.
//!
//! Docker's `-o` options go to the Stowage driver, except `driver`, which
//! names it (`-o driver=tmpfs`; `local` when absent).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stowage_core::{AccessMode, CreateRequest, Volume, VolumeService};

use crate::{DoorError, MAX_BODY_BYTES};

/// The option that picks the Stowage driver; not passed on to it.
pub const DRIVER_OPTION: &str = "driver";
/// Options that create the volume as a copy of a snapshot or of a volume.
pub const FROM_SNAPSHOT_OPTION: &str = "from-snapshot";
pub const CLONE_OF_OPTION: &str = "clone-of";
/// Options that place the volume (`--node`) and set its access mode.
pub const NODE_OPTION: &str = "node";
pub const ACCESS_OPTION: &str = "access";

/// The content type of the plugin protocol.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

type Svc = Arc<VolumeService>;

/// The plugin router over `service`.
pub fn router(service: Svc) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .route("/VolumeDriver.Create", post(create))
        .route("/VolumeDriver.Remove", post(remove))
        .route("/VolumeDriver.Mount", post(mount))
        .route("/VolumeDriver.Unmount", post(unmount))
        .route("/VolumeDriver.Path", post(path))
        .route("/VolumeDriver.Get", post(get))
        .route("/VolumeDriver.List", post(list))
        .fallback(|uri: axum::http::Uri| async move {
            failure(
                StatusCode::NOT_FOUND,
                format!("unknown endpoint {}", uri.path()),
            )
        })
        // A failure like any other: 500 with `Err`, never a bare 405.
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{} takes POST, not {method}", uri.path()),
                )
            },
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

fn reply(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn failure(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        json!({ "Err": message }).to_string(),
    )
        .into_response()
}

fn error(e: DoorError) -> Response {
    let message = match e {
        DoorError::Core(e) => e.to_string(),
        DoorError::Panicked(m) => m,
    };
    failure(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// A JSON request body. Engines send their own content type (or none), so
/// the body is parsed whatever the header says; an empty body is `{}`.
struct PluginBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for PluginBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("invalid request body: {}", e.body_text()),
            )
        })?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body).map(PluginBody).map_err(|e| {
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("invalid request body: {e}"),
            )
        })
    }
}

/// Runs a core call and turns its outcome into a reply.
async fn call<T: Send + 'static>(
    svc: Svc,
    f: impl FnOnce(&VolumeService) -> stowage_core::Result<T> + Send + 'static,
    ok: impl FnOnce(T) -> Value,
) -> Response {
    match crate::blocking(move || f(&svc)).await {
        Ok(v) => reply(ok(v)),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
struct NameRequest {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID")]
    id: String,
}

/// What `Get` and `List` say of a volume.
#[derive(Serialize)]
struct PluginVolume {
    #[serde(rename = "Name")]
    name: String,
    /// Only while mounted: nobody may take an unmounted path for the data.
    #[serde(rename = "Mountpoint")]
    mountpoint: String,
    #[serde(rename = "CreatedAt")]
    created_at: String,
    #[serde(rename = "Status")]
    status: Value,
}

fn describe(v: Volume) -> PluginVolume {
    let created_at = v
        .created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    PluginVolume {
        mountpoint: if v.mounted {
            v.mountpoint.display().to_string()
        } else {
            String::new()
        },
        status: json!({
            "driver": v.driver,
            "options": v.options,
            "consumers": v.consumers,
            "created_at": created_at,
            "state": v.status,
            "presentation": v.presentation,
        }),
        name: v.name,
        created_at,
    }
}

async fn activate() -> Response {
    reply(json!({ "Implements": ["VolumeDriver"] }))
}

async fn capabilities() -> Response {
    reply(json!({ "Capabilities": { "Scope": "local" } }))
}

async fn create(State(svc): State<Svc>, PluginBody(req): PluginBody<CreateBody>) -> Response {
    let mut options = req.opts.unwrap_or_default();
    let driver = options.remove(DRIVER_OPTION);
    let from_snapshot = options.remove(FROM_SNAPSHOT_OPTION);
    let clone_of = options.remove(CLONE_OF_OPTION);
    let node = options.remove(NODE_OPTION);
    let access = options.remove(ACCESS_OPTION);
    call(
        svc,
        move |s| {
            let request = CreateRequest {
                name: req.name,
                driver,
                options,
                labels: BTreeMap::new(),
                from_snapshot,
                clone_of,
                node,
                access: access.as_deref().map(AccessMode::parse).transpose()?,
                ..Default::default()
            };
            s.create(request)
        },
        |_| json!({ "Err": "" }),
    )
    .await
}

async fn remove(State(svc): State<Svc>, PluginBody(req): PluginBody<NameRequest>) -> Response {
    call(
        svc,
        move |s| s.remove(&req.name, false),
        |_| json!({ "Err": "" }),
    )
    .await
}

async fn mount(State(svc): State<Svc>, PluginBody(req): PluginBody<MountBody>) -> Response {
    call(
        svc,
        move |s| s.mount(&req.name, &req.id),
        |path| json!({ "Mountpoint": path, "Err": "" }),
    )
    .await
}

async fn unmount(State(svc): State<Svc>, PluginBody(req): PluginBody<MountBody>) -> Response {
    call(
        svc,
        move |s| s.unmount(&req.name, &req.id),
        |_| json!({ "Err": "" }),
    )
    .await
}

async fn path(State(svc): State<Svc>, PluginBody(req): PluginBody<NameRequest>) -> Response {
    call(
        svc,
        move |s| s.inspect(&req.name),
        |v| json!({ "Mountpoint": describe(v).mountpoint, "Err": "" }),
    )
    .await
}

async fn get(State(svc): State<Svc>, PluginBody(req): PluginBody<NameRequest>) -> Response {
    call(
        svc,
        move |s| s.inspect(&req.name),
        |v| json!({ "Volume": describe(v), "Err": "" }),
    )
    .await
}

async fn list(State(svc): State<Svc>) -> Response {
    call(
        svc,
        |s| s.list(&Default::default()),
        |vs| {
            let vs: Vec<PluginVolume> = vs.into_iter().map(describe).collect();
            json!({ "Volumes": vs, "Err": "" })
        },
    )
    .await
}

#[cfg(test)]
mod tests;
