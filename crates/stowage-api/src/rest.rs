//! The REST API. Every route is listed in [`routes`], which builds the
//! router and which a test compares with `docs/openapi.yaml`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stowage_core::options::parse_size;
use stowage_core::{
    CreateRequest, Error, Node, Snapshot, SnapshotRequest, Volume, VolumeFilter, VolumeService,
};

use crate::DoorError;

/// The API version, the prefix of every route.
pub const API_VERSION: &str = "v1";
pub use crate::MAX_BODY_BYTES;

type Svc = Arc<VolumeService>;

/// One route of the API.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<Svc>,
}

fn route(method: Method, path: &'static str, handler: MethodRouter<Svc>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route the server answers.
pub fn routes() -> Vec<Route> {
    use routing::{delete, get, post};
    vec![
        route(Method::GET, "/v1/version", get(version)),
        route(Method::GET, "/v1/volumes", get(list)),
        route(Method::POST, "/v1/volumes", post(create)),
        route(Method::POST, "/v1/volumes/prune", post(prune)),
        route(Method::GET, "/v1/volumes/{name}", get(inspect)),
        route(Method::DELETE, "/v1/volumes/{name}", delete(remove)),
        route(Method::POST, "/v1/volumes/{name}/mount", post(mount)),
        route(Method::POST, "/v1/volumes/{name}/unmount", post(unmount)),
        route(Method::POST, "/v1/volumes/{name}/resize", post(resize)),
        route(Method::GET, "/v1/snapshots", get(list_snapshots)),
        route(Method::POST, "/v1/snapshots", post(create_snapshot)),
        route(Method::GET, "/v1/snapshots/{name}", get(inspect_snapshot)),
        route(
            Method::DELETE,
            "/v1/snapshots/{name}",
            delete(remove_snapshot),
        ),
        route(Method::GET, "/v1/nodes", get(list_nodes)),
        route(Method::GET, "/v1/nodes/{name}", get(inspect_node)),
        route(Method::DELETE, "/v1/nodes/{name}", delete(remove_node)),
        route(Method::POST, "/v1/nodes/{name}/cordon", post(cordon_node)),
        route(
            Method::POST,
            "/v1/nodes/{name}/uncordon",
            post(uncordon_node),
        ),
    ]
}

/// The REST router over `service`.
pub fn router(service: Svc) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

/// An error on its way out: a status and `{"error": {"code", "message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        ApiError {
            status: StatusCode::from_u16(kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: kind.code(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A lost race, or a store that does not answer now: worth a retry.
        let retry = matches!(self.code, "aborted" | "unavailable");
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if retry {
            (response.headers_mut())
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// JSON bodies whose rejections (malformed, wrong type, too large) come
/// back in the API's error format.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

/// A body that is not JSON of the route's shape is the client's mistake:
/// 400 whatever axum's finer status (415 without the JSON content type, 422
/// for the wrong fields), so that clients and the document deal with one
/// status; a body over the limit stays 413.
fn reject(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message,
        };
    }
    invalid_request(message)
}

/// Runs core work off the executor, mapping its error for this door.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    crate::blocking(f).await.map_err(|e| match e {
        DoorError::Core(e) => ApiError::from(e),
        DoorError::Panicked(message) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        },
    })
}

/// The warning an answer read from one store member's copy carries
/// (RFC 7234's code 110, "Response is Stale").
pub const STALE_WARNING: &str =
    "110 stowage \"Response is Stale: the cluster store has no quorum; this is one member's copy\"";

/// An answer, with whether the store gave any of it from a copy that may
/// be stale.
struct MaybeStale<T>(T, bool);

impl<T: IntoResponse> IntoResponse for MaybeStale<T> {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        if self.1 {
            let warning = header::HeaderValue::from_static(STALE_WARNING);
            response.headers_mut().insert(header::WARNING, warning);
        }
        response
    }
}

/// [`blocking`] for a request that only reads: without a quorum, the
/// store may answer it from its own copy, and the answer says so.
async fn reading<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<MaybeStale<T>, ApiError> {
    let (out, stale) = blocking(move || {
        let (out, stale) = stowage_core::store::stale::allowing(f);
        out.map(|o| (o, stale))
    })
    .await?;
    Ok(MaybeStale(out, stale))
}

async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "no_route",
        message: format!("no route for {method} {}", uri.path()),
    }
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("{} does not take {method}", uri.path()),
    }
}

#[derive(Serialize)]
struct VersionInfo {
    version: &'static str,
    api_version: &'static str,
}

async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION"),
        api_version: API_VERSION,
    })
}

/// The `{name}` of a route. A rejection (a name that is not UTF-8 once
/// percent-decoded) is an API error like any other, not axum's plain text.
struct Name(String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(n)| Name(n))
            .map_err(|r| invalid_request(r.body_text()))
    }
}

/// Query parameters kept as pairs (`filter` may repeat), rejected as
/// [`Name`] is.
struct QueryPairs(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryPairs(q))
            .map_err(|r| invalid_request(r.body_text()))
    }
}

fn invalid_request(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
        message,
    }
}

async fn list(
    State(svc): State<Svc>,
    QueryPairs(params): QueryPairs,
) -> Result<Response, ApiError> {
    let mut filters = Vec::new();
    let mut summary = false;
    for (key, value) in params {
        match (key.as_str(), value.as_str()) {
            ("filter", _) => filters.push(value),
            ("view", "summary") => summary = true,
            ("view", "full") => summary = false,
            ("view", other) => {
                return Err(invalid_request(format!(
                    "unknown view {other:?}; use full or summary"
                )))
            }
            _ => {
                return Err(invalid_request(format!(
                    "unknown query parameter {key:?}; use filter=KEY=VALUE or view=summary"
                )))
            }
        }
    }
    let filter = VolumeFilter::parse(filters.iter().map(String::as_str))?;
    Ok(if summary {
        // Serialised while the summaries are borrowed from the service's
        // cache: no copy of 100k names on the way.
        let MaybeStale(body, stale) = reading(move || {
            svc.with_summaries(&filter, |s| {
                serde_json::to_vec(s).expect("strings, numbers and booleans always serialise")
            })
        })
        .await?;
        let body = ([(header::CONTENT_TYPE, "application/json")], body);
        MaybeStale(body, stale).into_response()
    } else {
        let MaybeStale(volumes, stale) = reading(move || svc.list(&filter)).await?;
        MaybeStale(Json(volumes), stale).into_response()
    })
}

async fn create(
    State(svc): State<Svc>,
    Body(req): Body<CreateRequest>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(blocking(move || svc.create(req)).await?))
}

async fn inspect(
    State(svc): State<Svc>,
    Name(name): Name,
) -> Result<MaybeStale<Json<Volume>>, ApiError> {
    let MaybeStale(volume, stale) = reading(move || svc.inspect(&name)).await?;
    Ok(MaybeStale(Json(volume), stale))
}

async fn remove(
    State(svc): State<Svc>,
    Name(name): Name,
    QueryPairs(params): QueryPairs,
) -> Result<StatusCode, ApiError> {
    let force = force_flag(params)?;
    blocking(move || svc.remove(&name, force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `force` query parameter, the only one a removal takes.
fn force_flag(params: Vec<(String, String)>) -> Result<bool, ApiError> {
    let mut force = false;
    for (key, value) in params {
        match (key.as_str(), value.as_str()) {
            ("force", "true" | "1") => force = true,
            ("force", "false" | "0") => force = false,
            _ => {
                return Err(invalid_request(format!(
                    "unknown query parameter {key}={value}; use force=true"
                )))
            }
        }
    }
    Ok(force)
}

async fn list_nodes(State(svc): State<Svc>) -> Result<MaybeStale<Json<Vec<Node>>>, ApiError> {
    let MaybeStale(nodes, stale) = reading(move || svc.nodes()).await?;
    Ok(MaybeStale(Json(nodes), stale))
}

async fn inspect_node(
    State(svc): State<Svc>,
    Name(id): Name,
) -> Result<MaybeStale<Json<Node>>, ApiError> {
    let MaybeStale(node, stale) = reading(move || svc.node(&id)).await?;
    Ok(MaybeStale(Json(node), stale))
}

async fn cordon_node(State(svc): State<Svc>, Name(id): Name) -> Result<Json<Node>, ApiError> {
    Ok(Json(blocking(move || svc.cordon(&id, true)).await?))
}

async fn uncordon_node(State(svc): State<Svc>, Name(id): Name) -> Result<Json<Node>, ApiError> {
    Ok(Json(blocking(move || svc.cordon(&id, false)).await?))
}

#[derive(Serialize)]
struct NodeRemoved {
    /// Volumes homed on the node, forgotten with it.
    forgotten: Vec<String>,
}

async fn remove_node(
    State(svc): State<Svc>,
    Name(id): Name,
    QueryPairs(params): QueryPairs,
) -> Result<Json<NodeRemoved>, ApiError> {
    let force = force_flag(params)?;
    let forgotten = blocking(move || svc.remove_node(&id, force)).await?;
    Ok(Json(NodeRemoved { forgotten }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerRequest {
    consumer: String,
}

#[derive(Serialize)]
struct MountResponse {
    mountpoint: std::path::PathBuf,
}

async fn mount(
    State(svc): State<Svc>,
    Name(name): Name,
    Body(req): Body<ConsumerRequest>,
) -> Result<Json<MountResponse>, ApiError> {
    let mountpoint = blocking(move || svc.mount(&name, &req.consumer)).await?;
    Ok(Json(MountResponse { mountpoint }))
}

async fn unmount(
    State(svc): State<Svc>,
    Name(name): Name,
    Body(req): Body<ConsumerRequest>,
) -> Result<StatusCode, ApiError> {
    blocking(move || svc.unmount(&name, &req.consumer)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct PruneResponse {
    removed: Vec<String>,
}

async fn prune(State(svc): State<Svc>) -> Result<Json<PruneResponse>, ApiError> {
    let removed = blocking(move || svc.prune()).await?;
    Ok(Json(PruneResponse { removed }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeRequest {
    /// Bytes, or a size with a unit such as `20G`.
    size: SizeValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

async fn resize(
    State(svc): State<Svc>,
    Name(name): Name,
    Body(req): Body<ResizeRequest>,
) -> Result<Json<Volume>, ApiError> {
    let size = match req.size {
        SizeValue::Bytes(n) => parse_size("size", &n.to_string())?,
        SizeValue::Text(t) => parse_size("size", &t)?,
    };
    Ok(Json(blocking(move || svc.resize(&name, size)).await?))
}

async fn list_snapshots(
    State(svc): State<Svc>,
    QueryPairs(params): QueryPairs,
) -> Result<MaybeStale<Json<Vec<Snapshot>>>, ApiError> {
    let mut volume = None;
    for (key, value) in params {
        if key != "volume" || volume.is_some() {
            return Err(invalid_request(format!(
                "unexpected query parameter {key:?}; use volume=NAME once"
            )));
        }
        volume = Some(value);
    }
    let MaybeStale(snapshots, stale) =
        reading(move || svc.list_snapshots(volume.as_deref())).await?;
    Ok(MaybeStale(Json(snapshots), stale))
}

async fn create_snapshot(
    State(svc): State<Svc>,
    Body(req): Body<SnapshotRequest>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(blocking(move || svc.create_snapshot(req)).await?))
}

async fn inspect_snapshot(
    State(svc): State<Svc>,
    Name(name): Name,
) -> Result<MaybeStale<Json<Snapshot>>, ApiError> {
    let MaybeStale(snapshot, stale) = reading(move || svc.inspect_snapshot(&name)).await?;
    Ok(MaybeStale(Json(snapshot), stale))
}

async fn remove_snapshot(State(svc): State<Svc>, Name(name): Name) -> Result<StatusCode, ApiError> {
    blocking(move || svc.remove_snapshot(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests;
