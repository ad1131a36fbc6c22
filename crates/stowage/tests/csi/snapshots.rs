//! Snapshots, restores, clones and expansion through CSI.

use stowage_testkit::csi::proto;
use tonic::Code;

use proto::volume_content_source::{SnapshotSource, Type as Source, VolumeSource};

use crate::{code, create_req, Fixture, MIB};

fn snapshot_req(name: &str, source: &str) -> proto::CreateSnapshotRequest {
    proto::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    }
}

/// A ControllerExpandVolume request for `id` with this capacity range.
fn expand_req(id: &str, required: i64, limit: i64) -> proto::ControllerExpandVolumeRequest {
    proto::ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(proto::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn snapshots_restore_clone_list_and_delete() {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    f.create(create_req("src", "block", 64 * MIB))
        .await
        .unwrap();
    let staging = f.staging("src");
    f.stage("src", &staging).await.unwrap();
    std::fs::write(staging.join("data"), b"before").unwrap();

    let snap = c
        .create_snapshot(snapshot_req("snap-1", "src"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.snapshot_id, "snap-1");
    assert_eq!(snap.source_volume_id, "src");
    assert_eq!(snap.size_bytes, 64 * MIB);
    assert!(snap.ready_to_use);
    assert!(snap.creation_time.unwrap().seconds > 0);
    let again = c
        .create_snapshot(snapshot_req("snap-1", "src"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    std::fs::write(staging.join("data"), b"after").unwrap();

    // The same name of another volume; a volume that does not exist.
    f.create(create_req("other", "block", 64 * MIB))
        .await
        .unwrap();
    assert_eq!(
        code(c.create_snapshot(snapshot_req("snap-1", "other")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            c.create_snapshot(snapshot_req("snap-x", "no-such-volume"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(c.create_snapshot(snapshot_req("", "src")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_snapshot(snapshot_req("snap-y", "")).await),
        Code::InvalidArgument
    );

    // Restore: the data as it was at the snapshot.
    let mut restore = create_req("restored", "block", 64 * MIB);
    restore.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(Source::Snapshot(SnapshotSource {
            snapshot_id: "snap-1".into(),
        })),
    });
    let restored = f.create(restore).await.unwrap();
    assert!(restored.content_source.is_some());
    let rs = f.staging("restored");
    f.stage("restored", &rs).await.unwrap();
    assert_eq!(std::fs::read(rs.join("data")).unwrap(), b"before");
    // Clone of the live volume: the data as it is now, and independent.
    let mut clone = create_req("cloned", "block", 128 * MIB);
    clone.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(Source::Volume(VolumeSource {
            volume_id: "src".into(),
        })),
    });
    assert_eq!(f.create(clone).await.unwrap().capacity_bytes, 128 * MIB);
    let cs = f.staging("cloned");
    f.stage("cloned", &cs).await.unwrap();
    assert_eq!(std::fs::read(cs.join("data")).unwrap(), b"after");
    std::fs::write(cs.join("data"), b"clone's own").unwrap();
    assert_eq!(std::fs::read(staging.join("data")).unwrap(), b"after");

    // Listing: by id, by source, paged.
    c.create_snapshot(snapshot_req("snap-2", "src"))
        .await
        .unwrap();
    c.create_snapshot(snapshot_req("snap-other", "other"))
        .await
        .unwrap();
    let list = |req: proto::ListSnapshotsRequest| {
        let mut c = c.clone();
        async move {
            c.list_snapshots(req).await.map(|r| {
                let r = r.into_inner();
                let ids: Vec<String> = r
                    .entries
                    .iter()
                    .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
                    .collect();
                (ids, r.next_token)
            })
        }
    };
    let (all, _) = list(Default::default()).await.unwrap();
    assert_eq!(all, ["snap-1", "snap-2", "snap-other"]);
    let (of_src, _) = list(proto::ListSnapshotsRequest {
        source_volume_id: "src".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(of_src, ["snap-1", "snap-2"]);
    let (by_id, _) = list(proto::ListSnapshotsRequest {
        snapshot_id: "snap-2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(by_id, ["snap-2"]);
    let (unknown, _) = list(proto::ListSnapshotsRequest {
        snapshot_id: "no-such-snapshot".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(unknown.is_empty());
    let (page, token) = list(proto::ListSnapshotsRequest {
        max_entries: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(page, ["snap-1", "snap-2"]);
    let (rest, token) = list(proto::ListSnapshotsRequest {
        starting_token: token,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        (rest, token),
        (vec!["snap-other".to_string()], String::new())
    );
    assert_eq!(
        code(
            list(proto::ListSnapshotsRequest {
                starting_token: "invalid-token".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Aborted
    );

    let delete = |id: &str| proto::DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    for _ in 0..2 {
        assert_eq!(code(c.delete_snapshot(delete("snap-1")).await), Code::Ok);
    }
    assert_eq!(
        code(c.delete_snapshot(delete("")).await),
        Code::InvalidArgument
    );
    // The restored volume outlives its snapshot.
    assert_eq!(std::fs::read(rs.join("data")).unwrap(), b"before");
    for (v, p) in [("src", &staging), ("restored", &rs), ("cloned", &cs)] {
        f.unstage(v, p).await.unwrap();
    }
    assert!(f.leftover_mounts().is_empty());
}

#[tokio::test]
async fn expansion_grows_a_volume_in_use() {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    // XFS grows online; ext4 needs CAP_SYS_RESOURCE, which this root lacks.
    let mut req = create_req("grow", "block", 320 * MIB);
    req.parameters.insert("fs".into(), "xfs".into());
    f.create(req).await.unwrap();
    let staging = f.staging("grow");
    let target = f.target("grow");
    f.stage("grow", &staging).await.unwrap();
    f.publish("grow", &staging, &target, false).await.unwrap();
    let before = f.total_bytes("grow", &target).await;

    let expand = |required: i64, limit: i64| expand_req("grow", required, limit);
    let grown = c
        .controller_expand_volume(expand(400 * MIB, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 400 * MIB);
    assert!(!grown.node_expansion_required);
    let after = f.total_bytes("grow", &target).await;
    assert!(after > before, "{after} > {before}");
    // Asking again, or for less, changes nothing.
    for required in [400 * MIB, 100 * MIB] {
        let same = c
            .controller_expand_volume(expand(required, 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(same.capacity_bytes, 400 * MIB);
    }
    // A limit below what the volume has cannot be met: volumes do not shrink.
    assert_eq!(
        code(
            c.controller_expand_volume(expand(100 * MIB, 200 * MIB))
                .await
        ),
        Code::OutOfRange
    );
    let mut no_range = expand(0, 0);
    no_range.capacity_range = None;
    assert_eq!(
        code(c.controller_expand_volume(no_range).await),
        Code::InvalidArgument
    );
    let mut missing = expand(500 * MIB, 0);
    missing.volume_id = "no-such-volume".into();
    assert_eq!(
        code(c.controller_expand_volume(missing).await),
        Code::NotFound
    );
    // The node call reports the capacity the controller made.
    let node = f
        .csi
        .node
        .clone()
        .node_expand_volume(proto::NodeExpandVolumeRequest {
            volume_id: "grow".into(),
            volume_path: crate::s(&target),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.capacity_bytes, 400 * MIB);
    f.unpublish("grow", &target).await.unwrap();
    f.unstage("grow", &staging).await.unwrap();
}

/// On a btrfs data root, `local` volumes take a capacity (a qgroup limit),
/// report it in their stats, grow, and snapshot as subvolumes.
#[tokio::test]
async fn local_volumes_on_a_btrfs_data_root_have_capacities_and_snapshots() {
    let root = stowage_testkit::ScratchFs::new("btrfs", "1G", &[], "");
    let f = Fixture::start_in(root.path(), &[]).await;
    let mut c = f.csi.controller.clone();
    let v = f
        .create(create_req("dir", "local", 20 * MIB))
        .await
        .unwrap();
    assert_eq!(v.capacity_bytes, 20 * MIB);
    let staging = f.staging("dir");
    let target = f.target("dir");
    f.stage("dir", &staging).await.unwrap();
    f.publish("dir", &staging, &target, false).await.unwrap();
    std::fs::write(target.join("data"), b"before").unwrap();
    assert_eq!(f.total_bytes("dir", &target).await, 20 * MIB);
    let grown = c
        .controller_expand_volume(expand_req("dir", 40 * MIB, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 40 * MIB);
    assert_eq!(f.total_bytes("dir", &target).await, 40 * MIB);

    let snap = c
        .create_snapshot(snapshot_req("dir-snap", "dir"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    std::fs::write(target.join("data"), b"after").unwrap();
    let mut restore = create_req("dir-restored", "local", 40 * MIB);
    restore.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(Source::Snapshot(SnapshotSource {
            snapshot_id: "dir-snap".into(),
        })),
    });
    f.create(restore).await.unwrap();
    let staging2 = f.staging("dir-restored");
    f.stage("dir-restored", &staging2).await.unwrap();
    assert_eq!(std::fs::read(staging2.join("data")).unwrap(), b"before");
    f.unstage("dir-restored", &staging2).await.unwrap();
    f.unpublish("dir", &target).await.unwrap();
    f.unstage("dir", &staging).await.unwrap();
}
