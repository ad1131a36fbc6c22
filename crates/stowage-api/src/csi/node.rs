//! CSI Node: making a volume appear at the paths the CO chooses on this
//! host. Staging mounts the volume once per node under the staging path
//! (or, for raw block access, attaches its device and binds the device
//! node there); publishing binds it at each workload's target, read-only
//! when asked.

use std::path::PathBuf;

use stowage_core::PathUsage;
use tonic::{Request, Response, Status};

use super::capability;
use super::proto::node_server::Node;
use super::proto::node_service_capability::{rpc, Rpc, Type as CapType};
use super::proto::volume_usage::Unit;
use super::proto::*;
use super::{bytes_i64, required, Csi};

#[tonic::async_trait]
impl Node for Csi {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let staging = path("staging_target_path", &req.staging_target_path)?;
        let access = capability::parse_one(req.volume_capability.as_ref())?;
        self.exclusive(&id.clone(), move |s| {
            super::controller::check_mode(s, &id, &access)?;
            match access.block {
                true => s.stage_device(&id, &staging, access.read_only),
                false => s.stage(&id, &staging),
            }
        })
        .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let staging = path("staging_target_path", &req.staging_target_path)?;
        self.exclusive(&id.clone(), move |s| s.unstage(&id, &staging))
            .await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let target = path("target_path", &req.target_path)?;
        let access = capability::parse_one(req.volume_capability.as_ref())?;
        // Stowage stages every volume, so a CO always names the staging path.
        let staging = path("staging_target_path", &req.staging_target_path)?;
        let mut attrs = access.attrs;
        attrs.read_only |= req.readonly;
        // The group is applied per publication, so that workloads with
        // other groups can share one staging.
        let group = access.mount_group;
        self.exclusive(&id.clone(), move |s| {
            s.publish(&id, &staging, &target, attrs, group)
        })
        .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let target = path("target_path", &req.target_path)?;
        self.exclusive(&id.clone(), move |s| s.unpublish(&id, &target))
            .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let volume_path = PathBuf::from(required("volume_path", &req.volume_path)?);
        let shown = self.on_id(move |s| s.path_usage(&id, &volume_path)).await?;
        let usage = |unit: Unit, total: u64, used: u64, available: u64| VolumeUsage {
            available: bytes_i64(available),
            total: bytes_i64(total),
            used: bytes_i64(used),
            unit: unit as i32,
        };
        let usage = match shown {
            PathUsage::Filesystem(u) => vec![
                usage(
                    Unit::Bytes,
                    u.capacity_bytes,
                    u.used_bytes,
                    u.available_bytes,
                ),
                usage(
                    Unit::Inodes,
                    u.inodes,
                    u.inodes_used,
                    u.inodes.saturating_sub(u.inodes_used),
                ),
            ],
            // What a raw device's user keeps on it is not Stowage's to read.
            PathUsage::Device { capacity_bytes } => vec![usage(Unit::Bytes, capacity_bytes, 0, 0)],
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: None,
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        required("volume_path", &req.volume_path)?;
        if let Some(cap) = req.volume_capability.as_ref() {
            capability::parse(cap).map_err(Status::invalid_argument)?;
        }
        // The controller grew device and filesystem together, online; a
        // node call only makes sure of it.
        let capacity = match req.capacity_range {
            Some(range) => self.expand(&id, &range).await?,
            None => {
                let volume = self.on_id(move |s| s.inspect(&id)).await?;
                volume.size_bytes.unwrap_or(0)
            }
        };
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: bytes_i64(capacity),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::ExpandVolume,
            rpc::Type::VolumeMountGroup,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.service.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: Some(self.topology()),
        }))
    }
}

/// A required path field.
fn path(field: &'static str, value: &str) -> Result<PathBuf, Status> {
    Ok(PathBuf::from(required(field, value)?))
}
