//! Identity and Controller RPCs: happy paths, repeats, error codes and
//! pagination.

use std::collections::HashMap;

use stowage_testkit::csi::proto;
use tonic::Code;

use proto::plugin_capability::service::Type as ServiceType;
use proto::volume_capability::access_mode::Mode;
use proto::volume_capability::{AccessMode, AccessType};

use crate::{block_cap, code, create_req, mount_cap, Fixture, MIB};

#[tokio::test]
async fn identity_names_the_plugin_and_reports_ready() {
    let f = Fixture::start().await;
    let mut id = f.csi.identity.clone();
    let info = id
        .get_plugin_info(proto::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "stowage.csi.dev");
    assert!(!info.vendor_version.is_empty());
    let caps = id
        .get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let services: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(proto::plugin_capability::Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert!(services.contains(&(ServiceType::ControllerService as i32)));
    assert!(services.contains(&(ServiceType::VolumeAccessibilityConstraints as i32)));
    let probe = id.probe(proto::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
async fn create_volume_honours_capacity_and_repeats() {
    let f = Fixture::start().await;
    let v = f
        .create(create_req("pvc-a", "block", 100 * MIB))
        .await
        .unwrap();
    assert_eq!(v.volume_id, "pvc-a");
    assert_eq!(v.capacity_bytes, 100 * MIB);
    let topology = &v.accessible_topology[0].segments;
    assert_eq!(
        topology.get("topology.stowage.csi.dev/node"),
        Some(&f.node_id)
    );
    // The same request again: the same volume.
    let again = f
        .create(create_req("pvc-a", "block", 100 * MIB))
        .await
        .unwrap();
    assert_eq!(again, v);
    // The same name with another size.
    let other = f.create(create_req("pvc-a", "block", 200 * MIB)).await;
    assert_eq!(code(other), Code::AlreadyExists);
    // An odd request is rounded up to whole MiB, within the limit.
    let mut req = create_req("pvc-odd", "block", 50 * MIB + 1);
    req.capacity_range.as_mut().unwrap().limit_bytes = 60 * MIB;
    assert_eq!(f.create(req).await.unwrap().capacity_bytes, 51 * MIB);
    // No capacity: the default size.
    let none = f
        .create(create_req("pvc-default", "block", 0))
        .await
        .unwrap();
    assert_eq!(none.capacity_bytes, 1 << 30);
    // One store: the CLI sees CSI's volumes, CSI sees the CLI's.
    let listed = f.daemon.ok(&["volume", "ls", "-q"]);
    assert!(listed.lines().any(|l| l == "pvc-a"), "{listed}");
    f.daemon.ok(&["volume", "create", "from-cli"]);
    let all = f
        .csi
        .controller
        .clone()
        .list_volumes(proto::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all
        .entries
        .iter()
        .any(|e| e.volume.as_ref().unwrap().volume_id == "from-cli"));
}

#[tokio::test]
async fn create_volume_refuses_bad_requests_with_the_spec_codes() {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    let no_name = create_req("", "block", 0);
    assert_eq!(code(c.create_volume(no_name).await), Code::InvalidArgument);
    let mut no_caps = create_req("nocaps", "block", 0);
    no_caps.volume_capabilities.clear();
    assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument);
    // Names of up to 128 bytes.
    let longest = "n".repeat(128);
    assert_eq!(
        code(f.create(create_req(&longest, "local", 0)).await),
        Code::Ok
    );
    let too_long = "n".repeat(129);
    assert_eq!(
        code(f.create(create_req(&too_long, "local", 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(f.create(create_req("../escape", "local", 0)).await),
        Code::InvalidArgument
    );
    // A directory volume cannot honour a capacity, so it refuses it.
    assert_eq!(
        code(f.create(create_req("sized-local", "local", MIB)).await),
        Code::OutOfRange
    );
    let mut inverted = create_req("inverted", "block", 20 * MIB);
    inverted.capacity_range.as_mut().unwrap().limit_bytes = 10 * MIB;
    assert_eq!(code(f.create(inverted).await), Code::InvalidArgument);
    let mut negative = create_req("negative", "block", 0);
    negative.capacity_range = Some(proto::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    assert_eq!(code(f.create(negative).await), Code::InvalidArgument);
    // More than the data root holds.
    assert_eq!(
        code(f.create(create_req("huge", "block", 1 << 60)).await),
        Code::ResourceExhausted
    );
    // mkfs option injection through a parameter.
    let mut inject = create_req("inject", "block", 64 * MIB);
    inject
        .parameters
        .insert("inode-ratio".into(), "4096 -O ^has_journal".into());
    assert_eq!(code(f.create(inject).await), Code::InvalidArgument);
    let mut unknown = create_req("unknown-param", "block", 64 * MIB);
    unknown.parameters.insert("mkfs-args".into(), "-F".into());
    assert_eq!(code(f.create(unknown).await), Code::InvalidArgument);
    let mut flags = create_req("bad-flags", "block", 64 * MIB);
    flags.volume_capabilities = vec![proto::VolumeCapability {
        access_type: Some(AccessType::Mount(proto::volume_capability::MountVolume {
            mount_flags: vec!["bind".into()],
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }];
    assert_eq!(code(f.create(flags).await), Code::InvalidArgument);
    // A host the topology requires that is not this one.
    let mut elsewhere = create_req("elsewhere", "block", 64 * MIB);
    elsewhere.accessibility_requirements = Some(proto::TopologyRequirement {
        requisite: vec![proto::Topology {
            segments: HashMap::from([(
                "topology.stowage.csi.dev/node".to_string(),
                "another-host".to_string(),
            )]),
        }],
        preferred: vec![],
    });
    assert_eq!(code(f.create(elsewhere).await), Code::ResourceExhausted);
    let mut from_nothing = create_req("from-nothing", "block", 64 * MIB);
    from_nothing.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(proto::volume_content_source::Type::Snapshot(
            proto::volume_content_source::SnapshotSource {
                snapshot_id: "no-such-snapshot".into(),
            },
        )),
    });
    assert_eq!(code(f.create(from_nothing).await), Code::NotFound);
    // None of the refusals left a volume behind.
    let left = f.daemon.ok(&["volume", "ls", "-q"]);
    assert_eq!(left.trim(), longest, "{left}");
}

#[tokio::test]
async fn delete_is_idempotent_and_refuses_a_volume_in_use() {
    let f = Fixture::start().await;
    f.create(create_req("gone", "local", 0)).await.unwrap();
    assert_eq!(code(f.delete("gone").await), Code::Ok);
    assert_eq!(code(f.delete("gone").await), Code::Ok);
    assert_eq!(code(f.delete("never-was").await), Code::Ok);
    assert_eq!(code(f.delete("").await), Code::InvalidArgument);
    f.create(create_req("busy", "local", 0)).await.unwrap();
    let staging = f.staging("busy");
    f.stage("busy", &staging).await.unwrap();
    assert_eq!(code(f.delete("busy").await), Code::FailedPrecondition);
    f.unstage("busy", &staging).await.unwrap();
    assert_eq!(code(f.delete("busy").await), Code::Ok);
}

#[tokio::test]
async fn controller_publish_records_the_node_and_enforces_access() {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    f.create(create_req("att", "local", 0)).await.unwrap();
    let publish =
        |volume: &str, node: &str, readonly: bool| proto::ControllerPublishVolumeRequest {
            volume_id: volume.into(),
            node_id: node.into(),
            volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
            readonly,
            ..Default::default()
        };
    let node = f.node_id.clone();
    assert_eq!(
        code(
            c.controller_publish_volume(publish("att", &node, false))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            c.controller_publish_volume(publish("att", &node, false))
                .await
        ),
        Code::Ok
    );
    // The same node with other access.
    assert_eq!(
        code(
            c.controller_publish_volume(publish("att", &node, true))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            c.controller_publish_volume(publish("att", "no-such-node", false))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller_publish_volume(publish("no-such-volume", &node, false))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(c.controller_publish_volume(publish("", &node, false)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.controller_publish_volume(publish("att", "", false)).await),
        Code::InvalidArgument
    );
    let mut no_cap = publish("att", &node, false);
    no_cap.volume_capability = None;
    assert_eq!(
        code(c.controller_publish_volume(no_cap).await),
        Code::InvalidArgument
    );
    // ListVolumes shows where it is published; inspect shows it too.
    let listed = c
        .list_volumes(proto::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let status = listed.entries[0].status.as_ref().unwrap();
    assert_eq!(status.published_node_ids, vec![node.clone()]);
    let inspected = f.daemon.inspect("att");
    assert_eq!(inspected["attachments"][&node]["exclusive"], true);

    let unpublish = |volume: &str, node: &str| proto::ControllerUnpublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        ..Default::default()
    };
    for _ in 0..2 {
        assert_eq!(
            code(c.controller_unpublish_volume(unpublish("att", &node)).await),
            Code::Ok
        );
    }
    assert_eq!(
        code(
            c.controller_unpublish_volume(unpublish("no-such-volume", &node))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(c.controller_unpublish_volume(unpublish("", &node)).await),
        Code::InvalidArgument
    );
    assert!(f.daemon.inspect("att")["attachments"]
        .as_object()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn validate_confirms_what_stowage_serves_and_only_that() {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    f.create(create_req("val", "block", 64 * MIB))
        .await
        .unwrap();
    let validate = |caps: Vec<proto::VolumeCapability>| proto::ValidateVolumeCapabilitiesRequest {
        volume_id: "val".into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = c
        .validate_volume_capabilities(validate(vec![
            mount_cap(Mode::SingleNodeWriter),
            mount_cap(Mode::SingleNodeReaderOnly),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.confirmed.unwrap().volume_capabilities.len(), 2);
    // Made for one node (rwo): not for many.
    let many = c
        .validate_volume_capabilities(validate(vec![mount_cap(Mode::MultiNodeReaderOnly)]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        many.confirmed.is_none() && many.message.contains("access mode rwo"),
        "{}",
        many.message
    );
    // Raw block access: for a volume with a device, not for a directory.
    let block = block_cap(Mode::SingleNodeWriter);
    let raw = c
        .validate_volume_capabilities(validate(vec![block.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(raw.confirmed.is_some(), "{}", raw.message);
    f.create(create_req("val-dir", "local", 0)).await.unwrap();
    let mut on_dir = validate(vec![block]);
    on_dir.volume_id = "val-dir".into();
    let refused = c
        .validate_volume_capabilities(on_dir)
        .await
        .unwrap()
        .into_inner();
    assert!(refused.confirmed.is_none());
    assert!(refused.message.contains("block"), "{}", refused.message);
    assert_eq!(
        code(c.validate_volume_capabilities(validate(vec![])).await),
        Code::InvalidArgument
    );
    let mut missing = validate(vec![mount_cap(Mode::SingleNodeWriter)]);
    missing.volume_id = "no-such-volume".into();
    assert_eq!(
        code(c.validate_volume_capabilities(missing).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn list_volumes_pages_without_repeats_and_refuses_foreign_tokens() {
    let f = Fixture::start().await;
    let mut c = f.csi.controller.clone();
    for i in 0..5 {
        f.create(create_req(&format!("page-{i}"), "local", 0))
            .await
            .unwrap();
    }
    let list = |max: i32, token: &str| proto::ListVolumesRequest {
        max_entries: max,
        starting_token: token.into(),
    };
    let first = c.list_volumes(list(2, "")).await.unwrap().into_inner();
    let ids = |r: &proto::ListVolumesResponse| -> Vec<String> {
        r.entries
            .iter()
            .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
            .collect()
    };
    assert_eq!(ids(&first), ["page-0", "page-1"]);
    assert!(!first.next_token.is_empty());
    // The last volume of the page goes away; its token still works.
    f.delete("page-1").await.unwrap();
    let second = c
        .list_volumes(list(2, &first.next_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&second), ["page-2", "page-3"]);
    let last = c
        .list_volumes(list(0, &second.next_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&last), ["page-4"]);
    assert!(last.next_token.is_empty());
    assert_eq!(
        code(c.list_volumes(list(0, "invalid-token")).await),
        Code::Aborted
    );
    assert_eq!(
        code(c.list_volumes(list(-1, "")).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn capacity_is_the_free_space_of_the_data_root() {
    let f = Fixture::start().await;
    let cap = f
        .csi
        .controller
        .clone()
        .get_capacity(proto::GetCapacityRequest {
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
    assert_eq!(cap.maximum_volume_size, Some(cap.available_capacity));
    let caps = f
        .csi
        .controller
        .clone()
        .controller_get_capabilities(proto::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.len() >= 9);
}
