//! CSI Controller: volumes and snapshots as a cluster sees them.
//!
//! Parameters map to a volume's driver and options: `driver` names the
//! driver (default `block`, since CSI volumes have capacities), every other
//! key is a driver or ownership option (`fs`, `owner`, `label`, ...).
//! Keys under `csi.storage.k8s.io/` are Kubernetes' metadata and become
//! labels.

use std::collections::{BTreeMap, HashMap};

use stowage_core::{Attachment, CreateRequest, Error, SnapshotRequest, VolumeFilter, VolumeName};
use tonic::{Request, Response, Status};

use super::capability::{self, Access};
use super::proto::controller_server::Controller;
use super::proto::controller_service_capability::{rpc, Rpc, Type as CapType};
use super::proto::volume_content_source::Type as Source;
use super::proto::*;
use super::{bytes_i64, gone_is_ok, page, required, Csi, TOPOLOGY_KEY};

/// The driver of a CSI volume whose parameters name none.
const DEFAULT_CSI_DRIVER: &str = "block";
/// Parameter keys under this prefix are Kubernetes metadata, kept as labels.
const K8S_METADATA_PREFIX: &str = "csi.storage.k8s.io/";

#[tonic::async_trait]
impl Controller for Csi {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = required("name", &req.name)?.to_string();
        VolumeName::parse(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let access = capability::parse_all(&req.volume_capabilities)?;
        let node = match req.accessibility_requirements.clone() {
            Some(wanted) => {
                let nodes = self.run(|s| s.nodes()).await?;
                let here = self.service.node_id().to_string();
                place(&wanted, &nodes, &here).map_err(Status::resource_exhausted)?
            }
            None => None,
        };
        let Parameters {
            driver,
            mut options,
            labels,
        } = split_parameters(&req.parameters)?;
        if access.iter().any(|a| a.block) && !has_device(&driver) {
            return Err(Status::invalid_argument(format!(
                "driver {driver} has no block device for raw block access; use driver=block"
            )));
        }
        // A directory volume has no filesystem of its own to make.
        if let Some(fs) = requested_fs(&access)?.filter(|_| has_device(&driver)) {
            if let Some(given) = options.get("fs").filter(|g| **g != fs) {
                return Err(Status::invalid_argument(format!(
                    "fs_type {fs} contradicts the fs parameter {given}"
                )));
            }
            options.insert("fs".into(), fs);
        }
        let range = req.capacity_range.as_ref();
        let asked = capability::bounds(range)? != (0, 0);
        let sized = match driver.as_str() {
            "block" | "tmpfs" => true,
            // Sized only where its data root can enforce it (btrfs); the
            // driver refuses with OUT_OF_RANGE elsewhere.
            "local" => asked,
            _ if asked => {
                return Err(Status::out_of_range(format!(
                    "driver {driver} does not enforce sizes; use driver=block or tmpfs \
                     (or local on a btrfs data root)"
                )));
            }
            _ => false,
        };
        if sized {
            options.insert("size".into(), capability::size_for(range)?.to_string());
        }
        let (from_snapshot, clone_of) = match req
            .volume_content_source
            .as_ref()
            .and_then(|c| c.r#type.as_ref())
        {
            Some(Source::Snapshot(s)) => (
                Some(required("snapshot_id", &s.snapshot_id)?.to_string()),
                None,
            ),
            Some(Source::Volume(v)) => {
                (None, Some(required("volume_id", &v.volume_id)?.to_string()))
            }
            None => (None, None),
        };
        let create = CreateRequest {
            name: name.clone(),
            driver: Some(driver),
            options,
            labels,
            from_snapshot,
            clone_of,
            access: Some(capability::mode_for(&access)),
            node,
            ..Default::default()
        };
        let volume = self.exclusive(&name, move |s| s.create(create)).await?;
        if let Some(size) = volume.size_bytes {
            if !capability::fits(size, range)? {
                return Err(Status::already_exists(format!(
                    "volume {name} exists with {size} bytes, outside the range asked"
                )));
            }
        }
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(self.csi_volume(&volume, req.volume_content_source)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        gone_is_ok(
            self.exclusive(&id.clone(), move |s| s.remove(&id, false))
                .await,
        )?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let node = required("node_id", &req.node_id)?.to_string();
        let access = capability::parse_one(req.volume_capability.as_ref())?;
        let how = Attachment {
            read_only: req.readonly || access.read_only,
            exclusive: access.exclusive,
        };
        self.exclusive(&id.clone(), move |s| {
            check_mode(s, &id, &access)?;
            s.attach(&id, &node, how)
        })
        .await?;
        Ok(Response::new(ControllerPublishVolumeResponse {
            publish_context: HashMap::new(),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let node = (!req.node_id.is_empty()).then_some(req.node_id);
        // A volume that is gone is unpublished from every node.
        gone_is_ok(
            self.exclusive(&id.clone(), move |s| s.detach(&id, node.as_deref()))
                .await,
        )?;
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        let volume = self.on_id(move |s| s.inspect(&id)).await?;
        let device = has_device(&volume.driver);
        let refused: Vec<String> = req
            .volume_capabilities
            .iter()
            .filter_map(|c| match capability::parse(c) {
                Ok(a) if a.block && !device => Some(format!(
                    "driver {} has no block device for raw block access",
                    volume.driver
                )),
                Ok(a) => capability::refusal(volume.access, &a),
                Err(e) => Some(e),
            })
            .collect();
        let response = if refused.is_empty() {
            ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: volume_context(&volume),
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            }
        } else {
            ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: refused.join("; "),
            }
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.run(|s| s.list(&VolumeFilter::default())).await?;
        let (volumes, next_token) =
            page(volumes, |v| &v.name, req.max_entries, &req.starting_token)?;
        let entries = volumes
            .iter()
            .map(|v| list_volumes_response::Entry {
                volume: Some(self.csi_volume(v, None)),
                status: Some(list_volumes_response::VolumeStatus {
                    published_node_ids: v.attachments.keys().cloned().collect(),
                    volume_condition: None,
                }),
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let req = request.into_inner();
        for cap in &req.volume_capabilities {
            if let Err(reason) = capability::parse(cap) {
                return Err(Status::invalid_argument(reason));
            }
        }
        let named = (req.accessible_topology.as_ref())
            .and_then(|t| t.segments.get(TOPOLOGY_KEY))
            .filter(|n| *n != self.service.node_id())
            .cloned();
        let free = match named {
            None => self.run(|s| s.free_space()).await?,
            // Another node's free space, as it last published it; none
            // on a node that is not ready, or unknown.
            Some(n) => (self.run(|s| s.nodes()).await?.into_iter())
                .find(|x| x.id == n && x.state == stowage_core::NodeState::Ready)
                .and_then(|x| x.free_bytes)
                .unwrap_or(0),
        };
        Ok(Response::new(GetCapacityResponse {
            available_capacity: bytes_i64(free),
            maximum_volume_size: Some(bytes_i64(free)),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::PublishUnpublishVolume,
            rpc::Type::ListVolumes,
            rpc::Type::GetCapacity,
            rpc::Type::CreateDeleteSnapshot,
            rpc::Type::ListSnapshots,
            rpc::Type::CloneVolume,
            rpc::Type::PublishReadonly,
            rpc::Type::ExpandVolume,
            rpc::Type::ListVolumesPublishedNodes,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let name = required("name", &req.name)?.to_string();
        let volume = required("source_volume_id", &req.source_volume_id)?.to_string();
        VolumeName::parse(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot = self
            .exclusive(&format!("snapshot/{name}"), move |s| {
                s.create_snapshot(SnapshotRequest {
                    volume,
                    name: Some(name),
                })
            })
            .await?;
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let id = required("snapshot_id", &req.snapshot_id)?.to_string();
        gone_is_ok(
            self.exclusive(&format!("snapshot/{id}"), move |s| s.remove_snapshot(&id))
                .await,
        )?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let volume = (!req.source_volume_id.is_empty()).then(|| req.source_volume_id.clone());
        let snapshots = match (volume, req.snapshot_id.as_str()) {
            // A name that cannot exist lists nothing, like one that does not.
            (Some(v), _) if VolumeName::parse(&v).is_err() => Vec::new(),
            (v, "") => self.run(move |s| s.list_snapshots(v.as_deref())).await?,
            (v, id) => {
                let id = id.to_string();
                let found = self.run(move |s| match s.inspect_snapshot(&id) {
                    Ok(snap) => Ok(vec![snap]),
                    Err(Error::SnapshotNotFound { .. } | Error::InvalidName { .. }) => Ok(vec![]),
                    Err(e) => Err(e),
                });
                found
                    .await?
                    .into_iter()
                    .filter(|snap| v.as_ref().is_none_or(|v| *v == snap.volume))
                    .collect()
            }
        };
        let (snapshots, next_token) =
            page(snapshots, |s| &s.name, req.max_entries, &req.starting_token)?;
        Ok(Response::new(ListSnapshotsResponse {
            entries: snapshots
                .iter()
                .map(|s| list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token,
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let range = req
            .capacity_range
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        if let Some(cap) = req.volume_capability.as_ref() {
            capability::parse(cap).map_err(Status::invalid_argument)?;
        }
        let capacity = self.expand(&id, &range).await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: bytes_i64(capacity),
            // Block volumes grow their filesystem with the device, online.
            node_expansion_required: false,
        }))
    }
}

impl Csi {
    /// Grows a volume to fit `range`; a volume already big enough is left
    /// as it is. Returns the capacity.
    pub(super) async fn expand(&self, id: &str, range: &CapacityRange) -> Result<u64, Status> {
        let (_, limit) = capability::bounds(Some(range))?;
        let size = capability::size_for(Some(range))?;
        let id = id.to_string();
        let volume = self
            .exclusive(&id.clone(), move |s| {
                let current = s.inspect(&id)?;
                match current.size_bytes {
                    Some(have) if have >= size => Ok(current),
                    _ => s.resize(&id, size),
                }
            })
            .await?;
        let capacity = volume.size_bytes.unwrap_or(0);
        if limit != 0 && capacity > limit {
            return Err(Status::out_of_range(format!(
                "volume has {capacity} bytes, more than limit_bytes {limit}; volumes do not shrink"
            )));
        }
        Ok(capacity)
    }

    /// The topology of this host.
    pub(super) fn topology(&self) -> Topology {
        node_topology(self.service.node_id())
    }

    fn csi_volume(
        &self,
        v: &stowage_core::Volume,
        content_source: Option<VolumeContentSource>,
    ) -> super::proto::Volume {
        super::proto::Volume {
            capacity_bytes: bytes_i64(v.size_bytes.unwrap_or(0)),
            volume_id: v.name.clone(),
            volume_context: volume_context(v),
            content_source,
            // Node-local storage is reached from its home node; storage
            // every node reaches (an image its home exports to the others
            // included) has no topology.
            accessible_topology: (v.node.as_deref())
                .filter(|_| !self.service.reached_from_every_node(v))
                .map(node_topology)
                .into_iter()
                .collect(),
        }
    }
}

fn node_topology(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
    }
}

/// The node a volume with topology requirement `wanted` goes on: the
/// first node it prefers, else the first it requires, that is ready
/// (`None`: the node that received the call, also when a segment names
/// no node, which any node satisfies). A requisite that no ready node
/// meets is refused; a preference alone is only a preference.
fn place(
    wanted: &TopologyRequirement,
    nodes: &[stowage_core::Node],
    here: &str,
) -> Result<Option<String>, String> {
    let ready = |n: &str| {
        (nodes.iter()).any(|x| x.id == n && x.state == stowage_core::NodeState::Ready)
            || (nodes.is_empty() && n == here)
    };
    let mut named = Vec::new();
    for t in wanted.preferred.iter().chain(&wanted.requisite) {
        match t.segments.get(TOPOLOGY_KEY) {
            None => return Ok(None),
            Some(n) if ready(n) => return Ok((n != here).then(|| n.clone())),
            Some(n) => named.push(n.as_str()),
        }
    }
    if wanted.requisite.is_empty() {
        return Ok(None);
    }
    named.dedup();
    Err(format!(
        "none of the nodes the requisite topology names ({}) is ready: each is down, cordoned or unknown",
        named.join(", ")
    ))
}

fn volume_context(v: &stowage_core::Volume) -> HashMap<String, String> {
    HashMap::from([("driver".to_string(), v.driver.clone())])
}

fn csi_snapshot(s: &stowage_core::Snapshot) -> super::proto::Snapshot {
    super::proto::Snapshot {
        size_bytes: bytes_i64(s.size_bytes.unwrap_or(0)),
        snapshot_id: s.name.clone(),
        source_volume_id: s.volume.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_at.unix_timestamp(),
            nanos: 0,
        }),
        ready_to_use: s.status == stowage_core::VolumeState::Ready,
        group_snapshot_id: String::new(),
    }
}

/// Drivers whose volumes are block devices: formatted with the fs_type a
/// capability asks for, and usable with raw block access.
fn has_device(driver: &str) -> bool {
    driver == "block"
}

/// The one filesystem the capabilities ask for, if any.
fn requested_fs(access: &[Access]) -> Result<Option<String>, Status> {
    let mut fs: Option<&String> = None;
    for a in access {
        match (&fs, &a.fs_type) {
            (Some(f), Some(g)) if *f != g => {
                return Err(Status::invalid_argument(format!(
                    "capabilities ask for two filesystems, {f} and {g}"
                )))
            }
            (None, Some(g)) => fs = Some(g),
            _ => {}
        }
    }
    Ok(fs.cloned())
}

/// CreateVolume parameters, sorted out.
struct Parameters {
    driver: String,
    options: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

/// Splits parameters into the driver, its options, and labels.
fn split_parameters(params: &HashMap<String, String>) -> Result<Parameters, Status> {
    let mut driver = DEFAULT_CSI_DRIVER.to_string();
    let mut options = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for (k, v) in params {
        if k == "driver" {
            driver = v.clone();
        } else if let Some(label) = k.strip_prefix(K8S_METADATA_PREFIX) {
            labels.insert(format!("{K8S_METADATA_PREFIX}{label}"), v.clone());
        } else if k == "size" {
            return Err(Status::invalid_argument(
                "size comes from the capacity range, not a parameter",
            ));
        } else {
            options.insert(k.clone(), v.clone());
        }
    }
    Ok(Parameters {
        driver,
        options,
        labels,
    })
}

/// Refuses a capability the volume's access mode cannot serve.
pub(super) fn check_mode(
    s: &stowage_core::VolumeService,
    id: &str,
    access: &capability::Access,
) -> stowage_core::Result<()> {
    match capability::refusal(s.access_mode(id)?, access) {
        Some(why) => Err(stowage_core::Error::Precondition {
            name: id.to_string(),
            reason: why,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: stowage_core::NodeState) -> stowage_core::Node {
        stowage_core::Node {
            id: id.into(),
            state,
            cordoned: state == stowage_core::NodeState::Cordoned,
            address: None,
            version: String::new(),
            labels: Default::default(),
            last_heartbeat: time::OffsetDateTime::UNIX_EPOCH,
            capacity_bytes: None,
            free_bytes: None,
            volumes: 0,
        }
    }

    #[test]
    fn topology_places_on_the_first_ready_node_preferred_then_required() {
        use stowage_core::NodeState::{Cordoned, Down, Ready};
        let nodes = [
            node("h0", Ready),
            node("h1", Down),
            node("h2", Cordoned),
            node("h3", Ready),
        ];
        let wanted = |preferred: &[&str], requisite: &[&str]| TopologyRequirement {
            preferred: preferred.iter().map(|n| node_topology(n)).collect(),
            requisite: requisite.iter().map(|n| node_topology(n)).collect(),
        };
        let place = |w: &TopologyRequirement| place(w, &nodes, "h0");
        assert_eq!(
            place(&wanted(&["h3"], &["h0", "h3"])),
            Ok(Some("h3".into()))
        );
        assert_eq!(
            place(&wanted(&["h1", "h0"], &["h1", "h0"])),
            Ok(None),
            "here"
        );
        assert_eq!(
            place(&wanted(&[], &["h1", "h2", "h3"])),
            Ok(Some("h3".into()))
        );
        let refused = place(&wanted(&[], &["h1", "h2", "h9"])).unwrap_err();
        assert!(refused.contains("h1, h2, h9"), "{refused}");
        // A preference alone falls back to the node called.
        assert_eq!(place(&wanted(&["h1"], &[])), Ok(None));
        // A segment without the node key is met by any node.
        let any = TopologyRequirement {
            requisite: vec![Topology::default()],
            preferred: vec![],
        };
        assert_eq!(place(&any), Ok(None));
        // Alone on its host, the node called is the one ready node.
        assert_eq!(super::place(&wanted(&[], &["h0"]), &[], "h0"), Ok(None));
    }

    #[test]
    fn parameters_split_into_driver_options_and_labels() {
        let params = HashMap::from([
            ("driver".to_string(), "local".to_string()),
            ("owner".to_string(), "184:998".to_string()),
            (
                "csi.storage.k8s.io/pvc/name".to_string(),
                "data".to_string(),
            ),
        ]);
        let p = split_parameters(&params).unwrap();
        assert_eq!(p.driver, "local");
        assert_eq!(p.options.get("owner").map(String::as_str), Some("184:998"));
        assert_eq!(
            p.labels
                .get("csi.storage.k8s.io/pvc/name")
                .map(String::as_str),
            Some("data")
        );
        let p = split_parameters(&HashMap::new()).unwrap();
        assert_eq!(p.driver, DEFAULT_CSI_DRIVER);
        let size = HashMap::from([("size".to_string(), "1G".to_string())]);
        assert!(split_parameters(&size).is_err());
    }
}
