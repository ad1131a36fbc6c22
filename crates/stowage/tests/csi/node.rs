//! Node RPCs: required fields, repeats and conflicts at the paths a CO
//! hands over.

use stowage_testkit::csi::proto;
use tonic::Code;

use std::os::unix::fs::PermissionsExt;

use proto::node_service_capability::rpc::Type as NodeCap;
use proto::volume_capability::access_mode::Mode;
use proto::volume_capability::AccessType;

use crate::{code, create_req, mount_cap, s, Fixture};

#[tokio::test]
async fn node_info_and_capabilities() {
    let f = Fixture::start().await;
    let mut n = f.csi.node.clone();
    let info = n
        .node_get_info(proto::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, f.node_id);
    let topology = info.accessible_topology.unwrap().segments;
    assert_eq!(
        topology.get("topology.stowage.csi.dev/node"),
        Some(&f.node_id)
    );
    let caps = n
        .node_get_capabilities(proto::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let types: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            let proto::node_service_capability::Type::Rpc(r) = c.r#type.as_ref()?;
            Some(r.r#type)
        })
        .collect();
    for wanted in [
        NodeCap::StageUnstageVolume,
        NodeCap::GetVolumeStats,
        NodeCap::ExpandVolume,
        NodeCap::VolumeMountGroup,
    ] {
        assert!(types.contains(&(wanted as i32)), "{wanted:?}");
    }
}

#[tokio::test]
async fn node_calls_refuse_missing_fields_and_unknown_volumes() {
    let f = Fixture::start().await;
    let mut n = f.csi.node.clone();
    let staging = f.staging("x");
    let target = f.target("x");
    let stage = |id: &str, path: &str, cap: bool| proto::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path.into(),
        volume_capability: cap.then(|| {
            crate::mount_cap(proto::volume_capability::access_mode::Mode::SingleNodeWriter)
        }),
        ..Default::default()
    };
    assert_eq!(
        code(n.node_stage_volume(stage("", &s(&staging), true)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_stage_volume(stage("v", "", true)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_stage_volume(stage("v", &s(&staging), false)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            n.node_stage_volume(stage("no-such-volume", &s(&staging), true))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(code(f.unstage("", &staging).await), Code::InvalidArgument);
    assert_eq!(
        code(f.publish("", &staging, &target, false).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(f.publish("no-such-volume", &staging, &target, false).await),
        Code::NotFound
    );
    assert_eq!(code(f.unpublish("", &target).await), Code::InvalidArgument);
    assert_eq!(
        code(
            n.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
                volume_id: "v".into(),
                target_path: String::new(),
            })
            .await
        ),
        Code::InvalidArgument
    );
    let stats = |id: &str, path: &str| proto::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    assert_eq!(
        code(n.node_get_volume_stats(stats("", "/x")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_get_volume_stats(stats("v", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_get_volume_stats(stats("no-such-volume", "/x")).await),
        Code::NotFound
    );
    // A volume that exists, asked about at a path where it is not.
    f.create(create_req("v", "local", 0)).await.unwrap();
    assert_eq!(
        code(n.node_get_volume_stats(stats("v", "some/path")).await),
        Code::NotFound
    );
    assert_eq!(
        code(n.node_get_volume_stats(stats("v", &s(&staging))).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            n.node_expand_volume(proto::NodeExpandVolumeRequest {
                volume_id: "no-such-volume".into(),
                volume_path: s(&target),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    // Publishing before staging is out of order.
    assert_eq!(
        code(f.publish("v", &staging, &target, false).await),
        Code::FailedPrecondition
    );
    assert!(!target.exists());
    // Relative and `..` paths are refused.
    assert_eq!(
        code(f.stage("v", std::path::Path::new("relative/dir")).await),
        Code::InvalidArgument
    );
    let dotdot = staging.join("../../etc");
    assert_eq!(code(f.stage("v", &dotdot).await), Code::InvalidArgument);
    // A symlink swapped in for the staging path, or above the target.
    let elsewhere = f.staging("elsewhere");
    let link = staging.with_file_name("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    assert_eq!(code(f.stage("v", &link).await), Code::InvalidArgument);
    assert!(f.daemon.inspect("v")["consumers"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(f.leftover_mounts().is_empty());
}

#[tokio::test]
async fn staging_and_publishing_repeat_and_refuse_foreign_mounts() {
    let f = Fixture::start().await;
    f.create(create_req("rep", "local", 0)).await.unwrap();
    f.create(create_req("intruder", "local", 0)).await.unwrap();
    let staging = f.staging("rep");
    let target = f.target("rep");
    for _ in 0..2 {
        f.stage("rep", &staging).await.unwrap();
    }
    for _ in 0..2 {
        f.publish("rep", &staging, &target, false).await.unwrap();
    }
    // One mount at each path, however often asked.
    let mounts = f.leftover_mounts();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    // The same target read-only: another publication of it, refused.
    assert_eq!(
        code(f.publish("rep", &staging, &target, true).await),
        Code::AlreadyExists
    );
    // Another volume onto a staging path or target already taken.
    assert_eq!(
        code(f.stage("intruder", &staging).await),
        Code::AlreadyExists
    );
    let other_staging = f.staging("intruder");
    f.stage("intruder", &other_staging).await.unwrap();
    assert_eq!(
        code(f.publish("intruder", &other_staging, &target, false).await),
        Code::AlreadyExists
    );
    // Its data stays its own.
    std::fs::write(target.join("owner"), b"rep").unwrap();
    assert_eq!(std::fs::read(staging.join("owner")).unwrap(), b"rep");
    assert!(!other_staging.join("owner").exists());
    // Unpublish removes the target, and repeats.
    for _ in 0..2 {
        f.unpublish("rep", &target).await.unwrap();
    }
    assert!(!target.exists());
    for _ in 0..2 {
        f.unstage("rep", &staging).await.unwrap();
    }
    f.unstage("intruder", &other_staging).await.unwrap();
    // The staging directory belongs to the CO: it stays, empty of mounts.
    assert!(staging.is_dir());
    assert!(f.leftover_mounts().is_empty());
    assert_eq!(f.daemon.inspect("rep")["consumers"], serde_json::json!([]));
}

/// A mount group (Kubernetes' fsGroup) is presented through an idmapped
/// publication: the root's group shows as the mount group, a member
/// running as any uid writes there, and the data on disk keeps its owner.
#[tokio::test]
async fn a_mount_group_is_presented_per_publication_without_chown() {
    let f = Fixture::start().await;
    f.create(create_req("grouped", "local", 0)).await.unwrap();
    let staging = f.staging("grouped");
    let member = f.target("member");
    let plain = f.target("plain");
    f.stage("grouped", &staging).await.unwrap();
    let mut cap = mount_cap(Mode::SingleNodeWriter);
    if let Some(AccessType::Mount(m)) = &mut cap.access_type {
        m.volume_mount_group = "2000".into();
    }
    f.publish_as("grouped", &staging, &member, cap.clone(), false)
        .await
        .unwrap();
    f.publish_as("grouped", &staging, &member, cap.clone(), false)
        .await
        .unwrap();
    f.publish("grouped", &staging, &plain, false).await.unwrap();

    let (_, shown_gid) = stowage_testkit::owner(&member);
    assert_eq!(shown_gid, 2000);
    let mode = std::fs::metadata(&member).unwrap().permissions().mode();
    assert_eq!(mode & 0o2070, 0o2070, "root is group-writable and setgid");
    // uid 1234 with only the mount group as a supplementary group.
    let file = member.join("by-member");
    stowage_testkit::run(
        "setpriv",
        &[
            "--reuid=1234",
            "--regid=1234",
            "--groups=2000",
            "touch",
            &s(&file),
        ],
    );
    assert_eq!(stowage_testkit::owner(&file), (1234, 2000));
    // Without the group the same file shows its on-disk owner: the root's
    // group, as nothing was chowned.
    let (_, disk_gid) = stowage_testkit::owner(&plain);
    assert_eq!(
        stowage_testkit::owner(&plain.join("by-member")),
        (1234, disk_gid)
    );
    assert_ne!(disk_gid, 2000);

    for target in [&member, &plain] {
        f.unpublish("grouped", target).await.unwrap();
    }
    f.unstage("grouped", &staging).await.unwrap();

    // A volume that presents its own owner takes no mount group.
    let mut owned = create_req("owned", "local", 0);
    owned.parameters.insert("owner".into(), "184:998".into());
    f.create(owned).await.unwrap();
    let staging = f.staging("owned");
    f.stage("owned", &staging).await.unwrap();
    let target = f.target("owned");
    let refused = f.publish_as("owned", &staging, &target, cap, false).await;
    assert_eq!(code(refused), Code::InvalidArgument);
    assert!(!target.exists());
    f.unstage("owned", &staging).await.unwrap();
    assert!(f.leftover_mounts().is_empty());
}
