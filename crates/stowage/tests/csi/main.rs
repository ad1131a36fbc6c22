//! End-to-end tests of the CSI door: the real daemon, a tonic client on
//! its socket, real mounts under temporary staging and target paths, as a
//! CO drives them. They need root (CI runs as root).

mod confinement;
mod controller;
mod lifecycle;
mod node;
mod raw_block;
mod snapshots;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stowage_testkit::csi::{proto, CsiClient};
use stowage_testkit::Daemon;
use tonic::{Code, Status};

use proto::volume_capability::access_mode::Mode;
use proto::volume_capability::{AccessMode, AccessType, BlockVolume};
pub use stowage_testkit::csi::mount_cap;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stowage");

/// A daemon with a CSI client, and a directory for staging and target
/// paths.
pub struct Fixture {
    pub daemon: Daemon,
    pub csi: CsiClient,
    pub node_id: String,
    paths: tempfile::TempDir,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Fixture {
        Fixture::start_in(&std::env::temp_dir(), extra).await
    }

    /// A fixture whose daemon keeps its roots under `parent` (a data root
    /// on a filesystem made for the test).
    pub async fn start_in(parent: &Path, extra: &[&str]) -> Fixture {
        let mut args = vec!["--node-id", "csi-test-node"];
        args.extend_from_slice(extra);
        let daemon = Daemon::start_in(BIN, parent, &args);
        let csi = CsiClient::connect(&daemon.csi_socket()).await.unwrap();
        Fixture {
            daemon,
            csi,
            node_id: "csi-test-node".into(),
            paths: tempfile::tempdir().unwrap(),
        }
    }

    /// Reconnects after the daemon was restarted.
    pub async fn reconnect(&mut self) {
        self.csi = CsiClient::connect(&self.daemon.csi_socket()).await.unwrap();
    }

    /// A staging directory, made as a CO makes it.
    pub fn staging(&self, name: &str) -> PathBuf {
        let p = self.paths.path().join("staging").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A target path whose parent exists and which itself does not.
    pub fn target(&self, name: &str) -> PathBuf {
        let parent = self.paths.path().join("pods").join(name);
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    pub async fn create(&self, req: proto::CreateVolumeRequest) -> Result<proto::Volume, Status> {
        let r = self.csi.controller.clone().create_volume(req).await?;
        Ok(r.into_inner().volume.unwrap())
    }

    pub async fn stage(&self, id: &str, staging: &Path) -> Result<(), Status> {
        self.stage_as(id, staging, mount_cap(Mode::SingleNodeWriter))
            .await
    }

    pub async fn stage_as(
        &self,
        id: &str,
        staging: &Path,
        cap: proto::VolumeCapability,
    ) -> Result<(), Status> {
        self.csi
            .node
            .clone()
            .node_stage_volume(proto::NodeStageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: s(staging),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await
            .map(drop)
    }

    pub async fn unstage(&self, id: &str, staging: &Path) -> Result<(), Status> {
        self.csi
            .node
            .clone()
            .node_unstage_volume(proto::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: s(staging),
            })
            .await
            .map(drop)
    }

    pub async fn publish(
        &self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        let cap = mount_cap(Mode::SingleNodeWriter);
        self.publish_as(id, staging, target, cap, readonly).await
    }

    pub async fn publish_as(
        &self,
        id: &str,
        staging: &Path,
        target: &Path,
        cap: proto::VolumeCapability,
        readonly: bool,
    ) -> Result<(), Status> {
        self.csi
            .node
            .clone()
            .node_publish_volume(proto::NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: s(staging),
                target_path: s(target),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            })
            .await
            .map(drop)
    }

    pub async fn unpublish(&self, id: &str, target: &Path) -> Result<(), Status> {
        self.csi
            .node
            .clone()
            .node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: s(target),
            })
            .await
            .map(drop)
    }

    pub async fn delete(&self, id: &str) -> Result<(), Status> {
        self.csi
            .controller
            .clone()
            .delete_volume(proto::DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            })
            .await
            .map(drop)
    }

    /// What NodeGetVolumeStats reports for `id` at `path`.
    pub async fn stats(&self, id: &str, path: &Path) -> proto::NodeGetVolumeStatsResponse {
        self.csi
            .node
            .clone()
            .node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: s(path),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The bytes NodeGetVolumeStats reports as the total of `id` at `path`.
    pub async fn total_bytes(&self, id: &str, path: &Path) -> i64 {
        self.stats(id, path).await.usage[0].total
    }

    /// Mounts left under the staging and target directories.
    pub fn leftover_mounts(&self) -> Vec<PathBuf> {
        stowage_testkit::mounts_under(self.paths.path())
    }
}

pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn block_cap(mode: Mode) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub const MIB: i64 = 1 << 20;

/// A CreateVolume request for `driver` with `required` bytes (0: none).
pub fn create_req(name: &str, driver: &str, required: i64) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: (required > 0).then_some(proto::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        parameters: HashMap::from([("driver".to_string(), driver.to_string())]),
        ..Default::default()
    }
}

/// The gRPC code of a call's outcome (`Ok` for success).
pub fn code<T>(r: Result<T, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}
