//! The doors, driven as a client would drive them, over a service on the
//! recording system (`RecordingSys`): the REST API and the plugin API
//! through their routers, the CSI services through their handlers, and
//! the CSI socket's HTTP/2 front over a byte stream.
//!
//! Requests are structure-aware: built from `arbitrary` choices among the
//! names, paths and keys the doors know, with room for any text, so that
//! sequences reach deep states (a volume made, staged, published,
//! snapshotted) and not only the parsers at the front.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use stowage_api::csi::proto::controller_server::Controller;
use stowage_api::csi::proto::node_server::Node;
use stowage_api::csi::proto::{self as csi_proto, volume_capability as cap};
use stowage_api::csi::Csi;
use stowage_core::{CallerPaths, Layout, MemoryStore, VolumeService};
use stowage_sys::{RecordingSys, Sys, TmpfsOptions};
use tower::ServiceExt;

const DATA_ROOT: &str = "/data";
const RUN_ROOT: &str = "/run/s";
/// The only tree CSI paths may lie in (`--csi-allowed-paths`).
const CO_DIR: &str = "/var/lib/kubelet";
/// Someone else's mount inside the CO's tree, which no call may remove.
const FOREIGN: &str = "/var/lib/kubelet/pods/p/foreign";
const NODE_ID: &str = "node-a";

/// Most calls in one input: enough to create, stage, publish and undo.
const MAX_CALLS: usize = 12;

/// A text the doors care about, or sometimes any text.
#[derive(Debug)]
struct Word(String);

const WORDS: &[&str] = &[
    "v1",
    "v2",
    "s1",
    "c1",
    "c2",
    NODE_ID,
    "name",
    "driver",
    "options",
    "labels",
    "consumer",
    "size",
    "force",
    "source",
    "volume",
    "local",
    "block",
    "tmpfs",
    "bind",
    "path",
    "fs",
    "ext4",
    "xfs",
    "owner",
    "1000:1000",
    "uidmap",
    "gidmap",
    "0:100000:65536",
    "label",
    "z",
    "provisioning",
    "thick",
    "thin",
    "from-snapshot",
    "clone-of",
    "mode",
    "0700",
    "1M",
    "64M",
    "1G",
    "..",
    "../../etc",
    "/etc",
    "/data/volumes",
    "/run/s/mounts",
    CO_DIR,
    FOREIGN,
    "/var/lib/kubelet/pods/p/vol",
    "/var/lib/kubelet/staging/v1",
    "%2e%2e",
    "",
];

impl<'a> Arbitrary<'a> for Word {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        crate::word(u, WORDS).map(Word)
    }
}

/// A JSON value of bounded depth, with keys and strings mostly from
/// [`WORDS`].
#[derive(Debug)]
struct Json(Value);

impl Json {
    fn build(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
        let kinds = if depth == 0 { 4 } else { 6 };
        Ok(match u.choose_index(kinds)? {
            0 => Value::Null,
            1 => Value::Bool(u.arbitrary()?),
            2 => match u.arbitrary::<bool>()? {
                true => Value::from(u.arbitrary::<i64>()?),
                false => Value::from(u.arbitrary::<u64>()?),
            },
            3 => Value::String(Word::arbitrary(u)?.0),
            4 => {
                let n = u.choose_index(4)?;
                let items = (0..n).map(|_| Self::build(u, depth - 1));
                Value::Array(items.collect::<arbitrary::Result<_>>()?)
            }
            _ => {
                let n = u.choose_index(5)?;
                let mut map = serde_json::Map::new();
                for _ in 0..n {
                    let key = Word::arbitrary(u)?.0;
                    map.insert(key, Self::build(u, depth - 1)?);
                }
                Value::Object(map)
            }
        })
    }
}

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::build(u, 3).map(Json)
    }
}

#[derive(Arbitrary, Debug)]
enum Payload {
    None,
    Json(Json),
    Raw(Vec<u8>),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::None => Vec::new(),
            Payload::Json(j) => j.0.to_string().into_bytes(),
            Payload::Raw(b) => b.clone(),
        }
    }
}

/// A fresh service on the recording system, with the CO's tree and a
/// foreign mount in it.
fn service() -> (Arc<VolumeService>, Arc<RecordingSys>) {
    let sys = Arc::new(RecordingSys::new());
    for dir in [
        CO_DIR,
        "/var/lib/kubelet/pods",
        "/var/lib/kubelet/pods/p",
        FOREIGN,
    ] {
        sys.add_dir(dir);
    }
    let tmpfs = TmpfsOptions {
        mode: 0o755,
        ..TmpfsOptions::default()
    };
    sys.mount_tmpfs("foreign", Path::new(FOREIGN), &tmpfs, None)
        .expect("the foreign mount");
    let layout = Layout::new(DATA_ROOT, RUN_ROOT);
    let drivers = stowage_drivers::builtin(sys.clone(), &layout);
    let paths = CallerPaths::new(&layout).allowing(vec![PathBuf::from(CO_DIR)]);
    let svc = VolumeService::new(Arc::new(MemoryStore::new()), drivers, sys.clone(), layout)
        .with_node_id(NODE_ID)
        .with_caller_paths(paths);
    svc.reconcile().expect("reconcile of an empty store");
    (Arc::new(svc), sys)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

/// Runs `f`, failing if anything panicked on any thread meanwhile. A door
/// catches a panic in an operation and reports it as an error (whose text
/// a fuzzer can also forge), so panics are counted where they happen: in a
/// hook, installed once, that chains to the one before it (libFuzzer's,
/// which aborts).
fn without_panics<T>(f: impl FnOnce() -> T) -> T {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    let before = PANICS.load(Ordering::SeqCst);
    let out = f();
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        before,
        "a panic in an operation"
    );
    out
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// What no sequence of calls may leave: the foreign mount gone, or a mount
/// outside Stowage's roots and the CO's tree.
fn assert_mounts_confined(sys: &RecordingSys) {
    let table = sys.mount_table().expect("the simulated table");
    assert!(
        table.iter().any(|m| m.mount_point == Path::new(FOREIGN)),
        "the foreign mount was removed: {table:#?}"
    );
    for m in &table {
        let p = &m.mount_point;
        assert!(
            p.starts_with(DATA_ROOT) || p.starts_with(RUN_ROOT) || p.starts_with(CO_DIR),
            "a mount outside the allowed trees: {m:?}"
        );
        assert_ne!(p, Path::new(CO_DIR), "a mount over the CO's whole tree");
    }
}

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
    Patch,
}

#[derive(Arbitrary, Debug)]
enum RestPath {
    Version,
    Volumes { query: Option<Word> },
    Prune,
    Volume(Word),
    Mount(Word),
    Unmount(Word),
    Resize(Word),
    Snapshots { query: Option<Word> },
    Snapshot(Word),
    Raw(String),
}

impl RestPath {
    fn uri(&self) -> String {
        let q = |q: &Option<Word>| q.as_ref().map_or(String::new(), |w| format!("?{}", w.0));
        match self {
            RestPath::Version => "/v1/version".into(),
            RestPath::Volumes { query } => format!("/v1/volumes{}", q(query)),
            RestPath::Prune => "/v1/volumes/prune".into(),
            RestPath::Volume(n) => format!("/v1/volumes/{}", n.0),
            RestPath::Mount(n) => format!("/v1/volumes/{}/mount", n.0),
            RestPath::Unmount(n) => format!("/v1/volumes/{}/unmount", n.0),
            RestPath::Resize(n) => format!("/v1/volumes/{}/resize", n.0),
            RestPath::Snapshots { query } => format!("/v1/snapshots{}", q(query)),
            RestPath::Snapshot(n) => format!("/v1/snapshots/{}", n.0),
            RestPath::Raw(s) => format!("/{s}"),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct RestCall {
    verb: Verb,
    path: RestPath,
    body: Payload,
}

/// Sends one request through `app`; `None` if no request can carry that
/// URI (the HTTP layer refuses it before any door).
async fn send(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> Option<(StatusCode, Vec<u8>)> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .ok()?;
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .expect("routers are infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("a body").to_bytes();
    Some((status, bytes.to_vec()))
}

/// REST: every answer is JSON; every failure is `{"error": {"code",
/// "message"}}` with the status its code stands for, never `internal`
/// (the recording system fails nothing unasked) and never a caught panic.
pub fn rest(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(calls) = u
        .arbitrary_iter::<RestCall>()
        .map(|it| it.take(MAX_CALLS).collect::<arbitrary::Result<Vec<_>>>())
    else {
        return;
    };
    let Ok(calls) = calls else { return };
    let (svc, sys) = service();
    let app = stowage_api::rest::router(svc);
    without_panics(|| {
        block_on(async {
            for call in calls {
                let method = match call.verb {
                    Verb::Get => Method::GET,
                    Verb::Post => Method::POST,
                    Verb::Put => Method::PUT,
                    Verb::Delete => Method::DELETE,
                    Verb::Patch => Method::PATCH,
                };
                let Some((status, body)) =
                    send(&app, method, &call.path.uri(), call.body.bytes()).await
                else {
                    continue;
                };
                let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "{status}: not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&body)
                    )
                });
                if status.is_success() {
                    continue;
                }
                let code = json["error"]["code"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{status}: {json}"));
                let message = json["error"]["message"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{status}: {json}"));
                assert_ne!(code, "internal", "{status}: {message}");
                assert!(
                    status.is_client_error() || status == StatusCode::INSUFFICIENT_STORAGE,
                    "{status}: {json}"
                );
            }
        })
    });
    assert_mounts_confined(&sys);
}

const PLUGIN_ENDPOINTS: &[&str] = &[
    "Plugin.Activate",
    "VolumeDriver.Capabilities",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
];

#[derive(Debug)]
struct Endpoint(String);

impl<'a> Arbitrary<'a> for Endpoint {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        crate::word(u, PLUGIN_ENDPOINTS).map(Endpoint)
    }
}

#[derive(Arbitrary, Debug)]
struct PluginCall {
    get: bool,
    endpoint: Endpoint,
    body: Payload,
}

/// The plugin API: every answer is a JSON object; a failure is a 500 (or
/// 404 for an unknown endpoint) with a non-empty `Err`, as engines expect;
/// never a caught panic.
pub fn plugin(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(calls) = u
        .arbitrary_iter::<PluginCall>()
        .map(|it| it.take(MAX_CALLS).collect::<arbitrary::Result<Vec<_>>>())
    else {
        return;
    };
    let Ok(calls) = calls else { return };
    let (svc, sys) = service();
    let app = stowage_api::docker::router(svc);
    without_panics(|| {
        block_on(async {
            for call in calls {
                let method = if call.get { Method::GET } else { Method::POST };
                let uri = format!("/{}", call.endpoint.0);
                let Some((status, body)) = send(&app, method, &uri, call.body.bytes()).await else {
                    continue;
                };
                let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "{status}: not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&body)
                    )
                });
                assert!(json.is_object(), "{json}");
                if status == StatusCode::OK {
                    continue;
                }
                assert!(
                    status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::NOT_FOUND,
                    "{status}: {json}"
                );
                let err = json["Err"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{status}: {json}"));
                assert!(!err.is_empty(), "{status}: {json}");
            }
        })
    });
    assert_mounts_confined(&sys);
}

#[derive(Arbitrary, Debug)]
enum Mode {
    SingleNodeWriter,
    SingleNodeReader,
    MultiNodeReader,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
    Other(i32),
}

#[derive(Arbitrary, Debug)]
struct Capability {
    block: bool,
    fs_type: Word,
    flags: Vec<Word>,
    group: Option<Word>,
    mode: Option<Mode>,
}

impl Capability {
    fn proto(&self) -> csi_proto::VolumeCapability {
        use cap::access_mode::Mode as M;
        let mode = self.mode.as_ref().map(|m| cap::AccessMode {
            mode: match m {
                Mode::SingleNodeWriter => M::SingleNodeWriter as i32,
                Mode::SingleNodeReader => M::SingleNodeReaderOnly as i32,
                Mode::MultiNodeReader => M::MultiNodeReaderOnly as i32,
                Mode::MultiNodeSingleWriter => M::MultiNodeSingleWriter as i32,
                Mode::MultiNodeMultiWriter => M::MultiNodeMultiWriter as i32,
                Mode::SingleNodeSingleWriter => M::SingleNodeSingleWriter as i32,
                Mode::SingleNodeMultiWriter => M::SingleNodeMultiWriter as i32,
                Mode::Other(n) => *n,
            },
        });
        let access_type = if self.block {
            cap::AccessType::Block(cap::BlockVolume {})
        } else {
            cap::AccessType::Mount(cap::MountVolume {
                fs_type: self.fs_type.0.clone(),
                mount_flags: self.flags.iter().map(|w| w.0.clone()).collect(),
                volume_mount_group: self.group.as_ref().map_or(String::new(), |w| w.0.clone()),
            })
        };
        csi_proto::VolumeCapability {
            access_type: Some(access_type),
            access_mode: mode,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Range {
    required: i64,
    limit: i64,
}

impl Range {
    fn proto(r: &Option<Range>) -> Option<csi_proto::CapacityRange> {
        r.as_ref().map(|r| csi_proto::CapacityRange {
            required_bytes: r.required,
            limit_bytes: r.limit,
        })
    }
}

fn map(pairs: &[(Word, Word)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.0.clone(), v.0.clone()))
        .collect()
}

/// One CSI call, with fields from the words the service knows.
#[derive(Arbitrary, Debug)]
enum CsiCall {
    Create {
        name: Word,
        range: Option<Range>,
        caps: Vec<Capability>,
        parameters: Vec<(Word, Word)>,
        from_snapshot: Option<Word>,
        from_volume: Option<Word>,
    },
    Delete(Word),
    ControllerPublish {
        id: Word,
        node: Word,
        cap: Option<Capability>,
        readonly: bool,
    },
    ControllerUnpublish {
        id: Word,
        node: Word,
    },
    Validate {
        id: Word,
        caps: Vec<Capability>,
    },
    List {
        max: i32,
        token: Word,
    },
    Capacity {
        caps: Vec<Capability>,
        parameters: Vec<(Word, Word)>,
    },
    Snapshot {
        source: Word,
        name: Word,
    },
    DeleteSnapshot(Word),
    ListSnapshots {
        max: i32,
        token: Word,
        source: Word,
        id: Word,
    },
    Expand {
        id: Word,
        range: Option<Range>,
    },
    Stage {
        id: Word,
        staging: Word,
        cap: Option<Capability>,
    },
    Unstage {
        id: Word,
        staging: Word,
    },
    Publish {
        id: Word,
        staging: Word,
        target: Word,
        cap: Option<Capability>,
        readonly: bool,
    },
    Unpublish {
        id: Word,
        target: Word,
    },
    Stats {
        id: Word,
        path: Word,
    },
    NodeExpand {
        id: Word,
        path: Word,
        range: Option<Range>,
    },
}

async fn call_csi(csi: &Csi, call: CsiCall) -> Result<(), tonic::Status> {
    use csi_proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    use tonic::Request as R;
    match call {
        CsiCall::Create {
            name,
            range,
            caps,
            parameters,
            from_snapshot,
            from_volume,
        } => {
            let source = match (from_snapshot, from_volume) {
                (Some(s), _) => Some(Type::Snapshot(SnapshotSource { snapshot_id: s.0 })),
                (None, Some(v)) => Some(Type::Volume(VolumeSource { volume_id: v.0 })),
                (None, None) => None,
            };
            let req = csi_proto::CreateVolumeRequest {
                name: name.0,
                capacity_range: Range::proto(&range),
                volume_capabilities: caps.iter().map(Capability::proto).collect(),
                parameters: map(&parameters),
                volume_content_source: source
                    .map(|t| csi_proto::VolumeContentSource { r#type: Some(t) }),
                ..Default::default()
            };
            csi.create_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Delete(id) => {
            let req = csi_proto::DeleteVolumeRequest {
                volume_id: id.0,
                ..Default::default()
            };
            csi.delete_volume(R::new(req)).await.map(drop)
        }
        CsiCall::ControllerPublish {
            id,
            node,
            cap,
            readonly,
        } => {
            let req = csi_proto::ControllerPublishVolumeRequest {
                volume_id: id.0,
                node_id: node.0,
                volume_capability: cap.as_ref().map(Capability::proto),
                readonly,
                ..Default::default()
            };
            csi.controller_publish_volume(R::new(req)).await.map(drop)
        }
        CsiCall::ControllerUnpublish { id, node } => {
            let req = csi_proto::ControllerUnpublishVolumeRequest {
                volume_id: id.0,
                node_id: node.0,
                ..Default::default()
            };
            csi.controller_unpublish_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Validate { id, caps } => {
            let req = csi_proto::ValidateVolumeCapabilitiesRequest {
                volume_id: id.0,
                volume_capabilities: caps.iter().map(Capability::proto).collect(),
                ..Default::default()
            };
            csi.validate_volume_capabilities(R::new(req))
                .await
                .map(drop)
        }
        CsiCall::List { max, token } => {
            let req = csi_proto::ListVolumesRequest {
                max_entries: max,
                starting_token: token.0,
            };
            csi.list_volumes(R::new(req)).await.map(drop)
        }
        CsiCall::Capacity { caps, parameters } => {
            let req = csi_proto::GetCapacityRequest {
                volume_capabilities: caps.iter().map(Capability::proto).collect(),
                parameters: map(&parameters),
                ..Default::default()
            };
            csi.get_capacity(R::new(req)).await.map(drop)
        }
        CsiCall::Snapshot { source, name } => {
            let req = csi_proto::CreateSnapshotRequest {
                source_volume_id: source.0,
                name: name.0,
                ..Default::default()
            };
            csi.create_snapshot(R::new(req)).await.map(drop)
        }
        CsiCall::DeleteSnapshot(id) => {
            let req = csi_proto::DeleteSnapshotRequest {
                snapshot_id: id.0,
                ..Default::default()
            };
            csi.delete_snapshot(R::new(req)).await.map(drop)
        }
        CsiCall::ListSnapshots {
            max,
            token,
            source,
            id,
        } => {
            let req = csi_proto::ListSnapshotsRequest {
                max_entries: max,
                starting_token: token.0,
                source_volume_id: source.0,
                snapshot_id: id.0,
                ..Default::default()
            };
            csi.list_snapshots(R::new(req)).await.map(drop)
        }
        CsiCall::Expand { id, range } => {
            let req = csi_proto::ControllerExpandVolumeRequest {
                volume_id: id.0,
                capacity_range: Range::proto(&range),
                ..Default::default()
            };
            csi.controller_expand_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Stage { id, staging, cap } => {
            let req = csi_proto::NodeStageVolumeRequest {
                volume_id: id.0,
                staging_target_path: staging.0,
                volume_capability: cap.as_ref().map(Capability::proto),
                ..Default::default()
            };
            csi.node_stage_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Unstage { id, staging } => {
            let req = csi_proto::NodeUnstageVolumeRequest {
                volume_id: id.0,
                staging_target_path: staging.0,
            };
            csi.node_unstage_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Publish {
            id,
            staging,
            target,
            cap,
            readonly,
        } => {
            let req = csi_proto::NodePublishVolumeRequest {
                volume_id: id.0,
                staging_target_path: staging.0,
                target_path: target.0,
                volume_capability: cap.as_ref().map(Capability::proto),
                readonly,
                ..Default::default()
            };
            csi.node_publish_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Unpublish { id, target } => {
            let req = csi_proto::NodeUnpublishVolumeRequest {
                volume_id: id.0,
                target_path: target.0,
            };
            csi.node_unpublish_volume(R::new(req)).await.map(drop)
        }
        CsiCall::Stats { id, path } => {
            let req = csi_proto::NodeGetVolumeStatsRequest {
                volume_id: id.0,
                volume_path: path.0,
                ..Default::default()
            };
            csi.node_get_volume_stats(R::new(req)).await.map(drop)
        }
        CsiCall::NodeExpand { id, path, range } => {
            let req = csi_proto::NodeExpandVolumeRequest {
                volume_id: id.0,
                volume_path: path.0,
                capacity_range: Range::proto(&range),
                ..Default::default()
            };
            csi.node_expand_volume(R::new(req)).await.map(drop)
        }
    }
}

/// CSI, through the Controller and Node handlers: no call answers
/// `INTERNAL` or reports a caught panic, and no sequence removes the
/// foreign mount or mounts anything outside Stowage's roots and the CO's
/// tree (defects 1, 4 and 5 of the hardening issue).
pub fn csi(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(calls) = u
        .arbitrary_iter::<CsiCall>()
        .map(|it| it.take(MAX_CALLS).collect::<arbitrary::Result<Vec<_>>>())
    else {
        return;
    };
    let Ok(calls) = calls else { return };
    let (svc, sys) = service();
    let csi = Csi::new(svc);
    without_panics(|| {
        block_on(async {
            for call in calls {
                let what = format!("{call:?}");
                if let Err(status) = call_csi(&csi, call).await {
                    assert_ne!(status.code(), tonic::Code::Internal, "{what}: {status:?}");
                }
            }
        })
    });
    assert_mounts_confined(&sys);
}

/// The 24 bytes every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The frames of `bytes`, if it is a whole sequence of them.
fn frames(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header = bytes.get(..9)?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let frame = bytes.get(..9 + len)?;
        out.push((header[3], frame));
        bytes = &bytes[9 + len..];
    }
    Some(out)
}

/// The CSI socket's front: any bytes pass through it without a panic; a
/// well-formed stream of frames comes out as a well-formed stream, with
/// every frame that is not part of a header block passed on unchanged
/// and in order.
pub fn authority(data: &[u8]) {
    use tokio::io::AsyncReadExt;
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(data);
    let mut out = Vec::new();
    let read = block_on(async {
        let mut front = stowage_api::csi::authority::AuthorityFix::new(&input[..], None);
        front.read_to_end(&mut out).await
    });
    let Some(sent) = frames(data) else { return };
    if read.is_err() {
        return; // a header block too large: the connection ends
    }
    let out = out.strip_prefix(PREFACE).expect("the preface first");
    let got = frames(out).expect("whole frames out of whole frames in");
    let others = |f: &[(u8, &[u8])]| -> Vec<Vec<u8>> {
        f.iter()
            .filter(|(kind, _)| *kind != 0x1 && *kind != 0x9)
            .map(|(_, frame)| frame.to_vec())
            .collect()
    };
    assert_eq!(others(&got), others(&sent));
}
