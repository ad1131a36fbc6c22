//! The whole life of a volume as Kubernetes drives it, on `local` and
//! `block`, with real mounts; and a daemon killed in the middle of it.

use std::io::ErrorKind;

use stowage_testkit::csi::proto;
use tonic::Code;

use proto::volume_capability::access_mode::Mode;

use crate::{code, create_req, mount_cap, Fixture, MIB};

async fn full_lifecycle(driver: &str, capacity: i64) {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    let name = format!("life-{driver}");
    let v = f.create(create_req(&name, driver, capacity)).await.unwrap();
    assert_eq!(v.capacity_bytes, capacity);
    c.controller_publish_volume(proto::ControllerPublishVolumeRequest {
        volume_id: name.clone(),
        node_id: f.node_id.clone(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    })
    .await
    .unwrap();
    let staging = f.staging(&name);
    let writer = f.target("writer");
    let reader = f.target("reader");
    f.stage(&name, &staging).await.unwrap();
    f.publish(&name, &staging, &writer, false).await.unwrap();
    f.publish(&name, &staging, &reader, true).await.unwrap();

    std::fs::write(writer.join("payload"), b"kept").unwrap();
    assert_eq!(std::fs::read(reader.join("payload")).unwrap(), b"kept");
    let refused = std::fs::write(reader.join("nope"), b"x").unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ReadOnlyFilesystem);

    let stats = f.stats(&name, &writer).await;
    let bytes = &stats.usage[0];
    let inodes = &stats.usage[1];
    assert!(bytes.total > 0 && bytes.used > 0 && bytes.available > 0);
    assert!(inodes.total > 0 && inodes.used > 0);
    if driver == "block" {
        // The filesystem is the volume's own, of the size asked.
        assert!(bytes.total <= capacity && bytes.total > capacity / 2);
    }

    f.unpublish(&name, &reader).await.unwrap();
    f.unpublish(&name, &writer).await.unwrap();
    assert!(!writer.exists() && !reader.exists());
    f.unstage(&name, &staging).await.unwrap();
    c.controller_unpublish_volume(proto::ControllerUnpublishVolumeRequest {
        volume_id: name.clone(),
        node_id: f.node_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(f.leftover_mounts().is_empty());
    // The data outlived every publication: staged again, it is there.
    f.stage(&name, &staging).await.unwrap();
    assert_eq!(std::fs::read(staging.join("payload")).unwrap(), b"kept");
    f.unstage(&name, &staging).await.unwrap();
    f.delete(&name).await.unwrap();
    assert!(f.daemon.ok(&["volume", "ls", "-q"]).trim().is_empty());
    assert!(f.daemon.mounts().is_empty(), "{:?}", f.daemon.mounts());
}

#[tokio::test]
async fn full_lifecycle_on_local() {
    full_lifecycle("local", 0).await;
}

#[tokio::test]
async fn full_lifecycle_on_block() {
    full_lifecycle("block", 64 * MIB).await;
}

#[tokio::test]
async fn a_daemon_killed_mid_life_picks_up_where_it_was() {
    let mut f = Fixture::start().await;
    f.create(create_req("survivor", "block", 64 * MIB))
        .await
        .unwrap();
    let staging = f.staging("survivor");
    let target = f.target("survivor");
    f.stage("survivor", &staging).await.unwrap();
    f.publish("survivor", &staging, &target, false)
        .await
        .unwrap();
    std::fs::write(target.join("payload"), b"written before the crash").unwrap();

    f.daemon.kill9();
    // The workload keeps its data while the daemon is down.
    assert_eq!(
        std::fs::read(target.join("payload")).unwrap(),
        b"written before the crash"
    );
    f.daemon.spawn();
    f.reconnect().await;
    // The CO retries what it last asked: the answers are the same.
    f.stage("survivor", &staging).await.unwrap();
    f.publish("survivor", &staging, &target, false)
        .await
        .unwrap();
    assert_eq!(f.leftover_mounts().len(), 2);
    f.unpublish("survivor", &target).await.unwrap();
    f.unstage("survivor", &staging).await.unwrap();
    assert!(f.leftover_mounts().is_empty());
    assert_eq!(code(f.delete("survivor").await), Code::Ok);
    assert!(f.daemon.mounts().is_empty());
}

/// A client whose `:authority` is derived from the socket path, as
/// grpc-python, grpc-java and grpcurl derive it, is served like grpc-go.
#[tokio::test]
async fn grpc_clients_that_send_the_socket_path_as_authority_are_served() {
    let f = Fixture::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/csi/grpc_python.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(f.daemon.csi_socket())
        .arg(&f.node_id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("grpcio ok"));
}
