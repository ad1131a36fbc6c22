use std::collections::BTreeSet;

use axum::body::Body as HttpBody;
use axum::http::Request as HttpRequest;
use http_body_util::BodyExt;
use stowage_core::{Layout, MemoryStore};
use stowage_sys::RecordingSys;
use tower::ServiceExt;

use super::*;

fn service() -> Svc {
    let sys = Arc::new(RecordingSys::new());
    let layout = Layout::new("/data", "/run/s");
    let drivers = stowage_drivers::builtin(sys.clone(), &layout);
    let svc = VolumeService::new(Arc::new(MemoryStore::new()), drivers, sys, layout);
    svc.reconcile().unwrap();
    Arc::new(svc)
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, serde_json::Value) {
    let mut req = HttpRequest::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(HttpBody::from(body.unwrap_or_default())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// The (method, path) pairs that `docs/openapi.yaml` documents.
fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for (p, item) in doc["paths"].as_mapping().unwrap() {
        for (m, _) in item.as_mapping().unwrap() {
            let m = m.as_str().unwrap();
            if ["get", "post", "put", "delete", "patch", "head"].contains(&m) {
                out.insert((m.to_uppercase(), p.as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn openapi_document_and_routes_agree() {
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(served, documented());
}

#[tokio::test]
async fn every_documented_route_reaches_a_handler() {
    let app = router(service());
    for (method, path) in documented() {
        let uri = path.replace("{name}", "nosuch");
        let body = (method == "POST").then(|| b"{}".to_vec());
        let (status, json) = call(&app, method.parse().unwrap(), &uri, body).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(json["error"]["code"], "no_route", "{method} {path}");
    }
    let (status, json) = call(&app, Method::GET, "/v1/nothing", None).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
}

#[tokio::test]
async fn lifecycle_over_rest() {
    let app = router(service());
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/volumes",
        Some(
            br#"{"name":"v","driver":"tmpfs","options":{"size":"1m"},"labels":{"a":"b"}}"#.to_vec(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["driver"], "tmpfs");
    let (s, m) = call(
        &app,
        Method::POST,
        "/v1/volumes/v/mount",
        Some(br#"{"consumer":"c1"}"#.to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["mountpoint"], v["mountpoint"]);
    let (s, e) = call(&app, Method::DELETE, "/v1/volumes/v", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("failed_precondition"))
    );
    let (s, l) = call(
        &app,
        Method::GET,
        "/v1/volumes?filter=label=a=b&filter=dangling=false",
        None,
    )
    .await;
    assert_eq!((s, l.as_array().unwrap().len()), (StatusCode::OK, 1));
    // The summary view: the same volumes, read no further than a table needs.
    let (s, sum) = call(
        &app,
        Method::GET,
        "/v1/volumes?filter=label=a=b&filter=dangling=false&view=summary",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        sum,
        serde_json::json!([{"name": "v", "driver": "tmpfs", "status": "ready", "consumers": 1,
                            "mounted": l[0]["mounted"], "created_at": l[0]["created_at"]}])
    );
    let (s, sum) = call(
        &app,
        Method::GET,
        "/v1/volumes?filter=dangling=true&view=summary",
        None,
    )
    .await;
    assert_eq!((s, sum), (StatusCode::OK, serde_json::json!([])));
    let (s, e) = call(&app, Method::GET, "/v1/volumes?view=wide", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (s, _) = call(
        &app,
        Method::POST,
        "/v1/volumes/v/unmount",
        Some(br#"{"consumer":"c1"}"#.to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, p) = call(&app, Method::POST, "/v1/volumes/prune", None).await;
    assert_eq!((s, p["removed"][0].as_str()), (StatusCode::OK, Some("v")));
    let (s, _) = call(&app, Method::GET, "/v1/volumes/v", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let app = router(service());
    /// Method, URI, body, expected status and error code.
    type Case = (
        Method,
        &'static str,
        Option<Vec<u8>>,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/volumes",
            Some(b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/volumes",
            Some(br#"{"name":"v","colour":1}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/volumes",
            Some(vec![b' '; MAX_BODY_BYTES + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/volumes",
            Some(br#"{"name":"../x"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        // Found by the fuzzer: a name that is not UTF-8 once decoded.
        (
            Method::GET,
            "/v1/volumes/%FF",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/snapshots?volume=%FF",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/v1/volumes",
            Some(br#"{"name":"v","options":{"path":"/"}}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::GET,
            "/v1/volumes?filter=colour=red",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::GET,
            "/v1/volumes?sort=name",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::DELETE,
            "/v1/volumes/v?force=maybe",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/volumes/..%2Fetc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::PUT,
            "/v1/volumes",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/v1/volumes",
            Some(br#"{"name":"v","options":{"path":"a\nb"}}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let (s, json) = call(&app, method.clone(), uri, body).await;
        assert_eq!(
            (s, json["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {uri}: {json}"
        );
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, json) = call(
        &app,
        Method::POST,
        "/v1/volumes",
        Some(br#"{"name":"v","options":{"path":"a\nb"}}"#.to_vec()),
    )
    .await;
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("invalid option \"path\""), "{message}");
    let (_, list) = call(&app, Method::GET, "/v1/volumes", None).await;
    assert_eq!(list, serde_json::json!([]), "bad requests changed nothing");
}
