use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use stowage_core::{Layout, MemoryStore};
use stowage_sys::RecordingSys;
use tower::ServiceExt;

use super::*;

fn app() -> (Router, Arc<RecordingSys>) {
    let sys = Arc::new(RecordingSys::new());
    let layout = Layout::new("/data", "/run/s");
    let drivers = stowage_drivers::builtin(sys.clone(), &layout);
    let svc = VolumeService::new(Arc::new(MemoryStore::new()), drivers, sys.clone(), layout);
    svc.reconcile().unwrap();
    (router(Arc::new(svc)), sys)
}

/// Posts `body` with the engines' own content type.
async fn post(app: &Router, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/vnd.docker.plugins.v1.2+json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn handshake() {
    let (app, _) = app();
    let (s, v) = post(&app, "/Plugin.Activate", "").await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"Implements": ["VolumeDriver"]}))
    );
    let (s, v) = post(&app, "/VolumeDriver.Capabilities", "{}").await;
    assert_eq!(
        (s, v["Capabilities"]["Scope"].as_str()),
        (StatusCode::OK, Some("local"))
    );
}

#[tokio::test]
async fn docker_volume_lifecycle() {
    let (app, _) = app();
    // docker volume create: Get fails for a new name, then Create.
    let (s, v) = post(&app, "/VolumeDriver.Get", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["Err"], "no such volume: mongodata");
    let create = r#"{"Name":"mongodata","Opts":{"uid":"184","gid":"998"}}"#;
    assert_eq!(
        post(&app, "/VolumeDriver.Create", create).await,
        (StatusCode::OK, json!({"Err": ""}))
    );
    let (s, _) = post(
        &app,
        "/VolumeDriver.Create",
        r#"{"Name":"plain","Opts":null}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(
        &app,
        "/VolumeDriver.Create",
        r#"{"Name":"mem","Opts":{"driver":"tmpfs","size":"1m"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let (s, v) = post(&app, "/VolumeDriver.Get", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["Volume"]["Name"], "mongodata");
    assert_eq!(v["Volume"]["Mountpoint"], "");
    assert_eq!(v["Volume"]["Status"]["driver"], "local");
    assert_eq!(v["Volume"]["Status"]["options"]["uid"], "184");
    assert!(v["Volume"]["CreatedAt"].as_str().unwrap().ends_with('Z'));
    let (_, v) = post(&app, "/VolumeDriver.Get", r#"{"Name":"mem"}"#).await;
    assert_eq!(v["Volume"]["Status"]["driver"], "tmpfs");
    assert_eq!(v["Volume"]["Status"]["options"], json!({"size": "1m"}));

    // Docker: a fresh ID per mount; the volume stays mounted until the last.
    let (s, m1) = post(
        &app,
        "/VolumeDriver.Mount",
        r#"{"Name":"mongodata","ID":"aaa"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let mountpoint = m1["Mountpoint"].as_str().unwrap().to_string();
    assert!(mountpoint.starts_with("/run/s/mounts/"));
    let (_, m2) = post(
        &app,
        "/VolumeDriver.Mount",
        r#"{"Name":"mongodata","ID":"bbb"}"#,
    )
    .await;
    assert_eq!(m2["Mountpoint"], mountpoint.as_str());
    let (_, p) = post(&app, "/VolumeDriver.Path", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(p["Mountpoint"], mountpoint.as_str());
    let (_, v) = post(&app, "/VolumeDriver.Get", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(v["Volume"]["Status"]["consumers"], json!(["aaa", "bbb"]));
    let (s, v) = post(&app, "/VolumeDriver.Remove", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(v["Err"].as_str().unwrap().contains("in use"), "{v}");
    post(
        &app,
        "/VolumeDriver.Unmount",
        r#"{"Name":"mongodata","ID":"aaa"}"#,
    )
    .await;
    let (_, p) = post(&app, "/VolumeDriver.Path", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(
        p["Mountpoint"],
        mountpoint.as_str(),
        "still mounted for bbb"
    );
    post(
        &app,
        "/VolumeDriver.Unmount",
        r#"{"Name":"mongodata","ID":"bbb"}"#,
    )
    .await;
    let (_, p) = post(&app, "/VolumeDriver.Path", r#"{"Name":"mongodata"}"#).await;
    assert_eq!(p["Mountpoint"], "");

    let (s, l) = post(&app, "/VolumeDriver.List", "{}").await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = l["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mem", "mongodata", "plain"]);
    assert_eq!(
        post(&app, "/VolumeDriver.Remove", r#"{"Name":"mongodata"}"#).await,
        (StatusCode::OK, json!({"Err": ""}))
    );
}

#[tokio::test]
async fn every_failure_is_a_500_with_err() {
    let (app, sys) = app();
    post(&app, "/VolumeDriver.Create", r#"{"Name":"v"}"#).await;
    sys.fail_next("BindMount", 5);
    for (path, body, needle) in [
        (
            "/VolumeDriver.Mount",
            r#"{"Name":"v","ID":"x"}"#,
            "Input/output error",
        ),
        (
            "/VolumeDriver.Mount",
            r#"{"Name":"missing","ID":"x"}"#,
            "no such volume",
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"../x"}"#,
            "invalid volume name",
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"w","Opts":{"colour":"red"}}"#,
            "valid options",
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"uid":"1"}}"#,
            "already exists",
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"w","Opts":{"driver":"nfs"}}"#,
            "unknown driver",
        ),
        ("/VolumeDriver.Create", "{not json", "invalid request body"),
        (
            "/VolumeDriver.Mount",
            r#"{"Name":"v"}"#,
            "missing field `ID`",
        ),
        (
            "/VolumeDriver.Unmount",
            r#"{"Name":"v","ID":""}"#,
            "invalid consumer id",
        ),
        (
            "/VolumeDriver.Remove",
            r#"{"Name":"missing"}"#,
            "no such volume",
        ),
        ("/VolumeDriver.Nope", "{}", "unknown endpoint"),
    ] {
        let (s, v) = post(&app, path, body).await;
        assert!(
            s.is_client_error() || s.is_server_error(),
            "{path} {body}: {s}"
        );
        let err = v["Err"].as_str().unwrap();
        assert!(err.contains(needle), "{path} {body}: {err}");
    }
    // Another method than POST is a failure like any other.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/VolumeDriver.List")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["Err"].as_str().unwrap().contains("takes POST"), "{v}");
    // The failed mount left nothing behind.
    let (_, v) = post(&app, "/VolumeDriver.Get", r#"{"Name":"v"}"#).await;
    assert_eq!(v["Volume"]["Status"]["consumers"], json!([]));
}
