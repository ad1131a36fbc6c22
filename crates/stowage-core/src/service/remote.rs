//! The consuming node's half of network attachments: a block volume homed
//! on another node is asked of its home, which exports it, and attached
//! here through the transport before its filesystem is mounted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::VolumeService;
use crate::error::{Error, Result};
use crate::netattach::{self, AttachRequest, ExportAnswer};
use crate::store::{Collection, Durability, Op, Precondition};
use crate::transport::AttachSpec;
use crate::volume::{NetworkUse, VolumeRecord};

/// How long the home node may take to answer a request (it watches for
/// them, and starts an export).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

impl VolumeService {
    /// Whether this node reaches the volume's storage over the network: it
    /// is homed on another node, it is an image, and this node is set up
    /// for network attachments.
    pub(super) fn reaches_remotely(&self, record: &VolumeRecord) -> bool {
        record
            .node
            .as_deref()
            .is_some_and(|home| home != self.node_id)
            && self.attaches_over_network(&record.driver)
    }

    /// Whether volumes of `driver` are attached over the network on nodes
    /// other than their home, here.
    pub fn attaches_over_network(&self, driver: &str) -> bool {
        self.network.is_some() && (self.drivers.get(driver)).is_ok_and(|d| d.exports_images())
    }

    /// Whether every node reaches the volume: storage that has no home,
    /// or an image that its home exports to the others.
    pub fn reached_from_every_node(&self, volume: &crate::Volume) -> bool {
        volume.node.is_none() || self.attaches_over_network(&volume.driver)
    }

    /// Asks the volume's home node to export it to this node, and attaches
    /// the export here, where the driver finds it; on failure, nothing is
    /// left asked or attached.
    pub(super) fn attach_remote(&self, record: &VolumeRecord) -> Result<()> {
        let net = self.network.as_ref().expect("checked by reaches_remotely");
        let key = netattach::key(record.name.as_str(), &self.node_id);
        // The store's revision grows across the cluster: a later
        // attachment always has a larger epoch.
        let epoch = self.store.revision()? + 1;
        let read_only = record.access.read_only();
        let (request, psk) = AttachRequest::new(&net.sealing, &key, &record.id, epoch, read_only)?;
        let value = serde_json::to_vec(&request).expect("a request serializes");
        let op = Op::put(Collection::NetAttach, &key, value, Precondition::Any)
            .with_lease_if(self.lease());
        self.refuse_lapsed_lease()?;
        // A write whose outcome is unknown may have committed: withdrawn
        // too, as a failed attach leaves nothing asked.
        let asked = (self.store.commit(vec![op], Durability::Host))
            .inspect_err(|_| self.withdraw_request(&key))?;
        let attached = self
            .wait_answer(record, &key, &request, asked)
            .and_then(|endpoint| {
                let spec = AttachSpec {
                    id: &record.id,
                    endpoint: &endpoint,
                    psk: &psk,
                    read_only,
                };
                net.transport.attach(&spec)
            });
        match attached {
            Ok(file) => {
                info!(volume = %record.name, epoch, file = %file.display(), "attached over the network");
                Ok(())
            }
            Err(e) => {
                self.withdraw_request(&key);
                Err(e)
            }
        }
    }

    /// Waits until the home node answers `request`, with its export or why
    /// it could not.
    fn wait_answer(
        &self,
        record: &VolumeRecord,
        key: &str,
        request: &AttachRequest,
        asked: u64,
    ) -> Result<crate::transport::Endpoint> {
        let home = record.node.clone().unwrap_or_default();
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut changes = self.store.watch(Collection::NetExport, asked)?;
        loop {
            if let Some(v) = self.store.get(Collection::NetExport, key)? {
                let answer: Option<ExportAnswer> = serde_json::from_slice(&v.value).ok();
                if let Some(a) = answer.filter(|a| a.id == request.id) {
                    if let Some(endpoint) = a.endpoint() {
                        return Ok(endpoint);
                    }
                    return Err(Error::Precondition {
                        name: record.name.to_string(),
                        reason: format!(
                            "its home node {home} cannot export it: {}",
                            a.error.unwrap_or_default()
                        ),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Precondition {
                    name: record.name.to_string(),
                    reason: format!(
                        "its home node {home} did not export it within {ANSWER_WITHIN:?}; \
                         is it up and set up for network attachments?"
                    ),
                });
            }
            changes.next(left.min(Duration::from_secs(1)))?;
        }
    }

    /// Ends the attachments running here for no volume that stays
    /// presented (`presented`, by id): their mounts are gone.
    pub(super) fn detach_stray_attachments(&self, presented: &HashSet<String>) -> Result<()> {
        let Some(net) = &self.network else {
            return Ok(());
        };
        for id in net.transport.running()?.attachments {
            if !presented.contains(&id) {
                warn!(attachment = %id, "ending an attachment no mount here uses");
                net.transport.detach(&id)?;
            }
        }
        Ok(())
    }

    /// Self-fencing: once this node's lease has lapsed, the cluster takes
    /// it for down and its home nodes stop serving it, so every attachment
    /// here is cut off its export at once: its I/O fails now rather than
    /// later, and never lands after another node took the volume over.
    /// What was cut stays cut until it is unmounted and mounted again.
    pub(super) fn fence_attachments(&self) {
        let Some(net) = &self.network else {
            return;
        };
        let running = match net.transport.running() {
            Ok(r) => r.attachments,
            Err(e) => {
                warn!(error = %e, "cannot list this node's attachments to cut them off");
                return;
            }
        };
        let mut fenced = self.fenced.lock().unwrap_or_else(|e| e.into_inner());
        for id in running {
            if fenced.contains(&id) {
                continue;
            }
            match net.transport.sever(&id) {
                Ok(()) => {
                    warn!(volume_id = %id, "this node's lease lapsed: cut its network attachment off; \
                          its I/O fails until it is unmounted and mounted again");
                    fenced.insert(id);
                }
                Err(e) => warn!(volume_id = %id, error = %e, "cannot cut a network attachment off"),
            }
        }
    }

    /// How this node reaches the volume over the network, for inspect.
    pub(super) fn network_use(&self, record: &VolumeRecord) -> Result<Option<NetworkUse>> {
        // While mounted here, even once its helpers have ended (fenced).
        let used = !record.consumers.is_empty() || record.device.is_some();
        if !self.reaches_remotely(record) || !(used || self.attached_remotely(record)?) {
            return Ok(None);
        }
        let net = self.network.as_ref().expect("checked by reaches_remotely");
        let key = netattach::key(record.name.as_str(), &self.node_id);
        let request = (self.store.get(Collection::NetAttach, &key)?)
            .and_then(|v| serde_json::from_slice::<AttachRequest>(&v.value).ok());
        let fenced = (self.fenced.lock().unwrap_or_else(|e| e.into_inner())).contains(&record.id);
        Ok(Some(NetworkUse {
            home: record.node.clone().unwrap_or_default(),
            transport: net.transport.name().to_string(),
            epoch: request.as_ref().map(|r| r.epoch),
            fenced,
        }))
    }

    /// Whether the transport runs an attachment of the volume here.
    pub(super) fn attached_remotely(&self, record: &VolumeRecord) -> Result<bool> {
        let net = self.network.as_ref().expect("checked by reaches_remotely");
        Ok(net.transport.running()?.attachments.contains(&record.id))
    }

    /// Detaches a volume attached over the network, after its last
    /// unmount, and withdraws the request: its home node stops the export.
    pub(super) fn detach_remote(&self, record: &VolumeRecord) -> Result<()> {
        let net = self.network.as_ref().expect("checked by reaches_remotely");
        net.transport.detach(&record.id)?;
        (self.fenced.lock().unwrap_or_else(|e| e.into_inner())).remove(&record.id);
        self.withdraw_request(&netattach::key(record.name.as_str(), &self.node_id));
        info!(volume = %record.name, "detached from over the network");
        Ok(())
    }

    /// Binds this node's attachment requests that are still in the store
    /// to its lease of now, when it joins again: the home nodes keep
    /// serving them. A request whose old lease ended meanwhile is gone,
    /// and its export with it.
    pub(super) fn republish_requests(&self) -> Result<()> {
        let lease = self.lease();
        let suffix = format!("/{}", self.node_id);
        for v in self.store.list(Collection::NetAttach)?.items {
            if !v.key.ends_with(&suffix) {
                continue;
            }
            let op = Op::put(
                Collection::NetAttach,
                &v.key,
                v.value.clone(),
                Precondition::Revision(v.revision),
            );
            self.store
                .commit(vec![op.with_lease_if(lease)], Durability::Host)?;
        }
        Ok(())
    }

    /// Deletes this node's request at `key`; one left behind ends with
    /// this node's lease.
    fn withdraw_request(&self, key: &str) {
        let withdrawn = self
            .store
            .get(Collection::NetAttach, key)
            .and_then(|v| match v {
                Some(v) => {
                    let op = Op::delete(Collection::NetAttach, key, v.revision);
                    self.store.commit(vec![op], Durability::Host).map(|_| ())
                }
                None => Ok(()),
            });
        if let Err(e) = withdrawn {
            warn!(key, error = %e, "cannot withdraw an attachment request; it ends with this node's lease");
        }
    }
}
