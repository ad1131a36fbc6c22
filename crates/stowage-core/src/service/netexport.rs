//! The home node's half of network attachments: it serves an export for
//! each request made of a block volume homed here, and stops it when the
//! request ends (withdrawn, or its node's lease ended).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::VolumeService;
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::netattach::{self, AttachRequest, ExportAnswer};
use crate::secret::SealingKey;
use crate::store::{Change, Collection, Op, Precondition, Versioned};
use crate::transport::{ExportSpec, Transport};
use crate::volume::VolumeState;

/// How often the agent looks at its stop flag while it waits for changes.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// What a node needs to take part in network attachments.
#[derive(Clone)]
pub struct NetworkAttach {
    pub transport: Arc<dyn Transport>,
    /// Opens the keys in requests; every node has the same key file.
    pub sealing: Arc<SealingKey>,
    /// The cluster address exports listen on.
    pub listen: IpAddr,
}

impl VolumeService {
    /// Serves the network attachments asked of volumes homed here: those
    /// asked before it started, then each as it is asked, until `stop`.
    pub fn run_export_agent(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.watch_attach_requests(stop) {
                warn!(error = %e, "watching for attachments to serve failed; listing again");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    fn watch_attach_requests(&self, stop: &AtomicBool) -> Result<()> {
        let revision = self.settle_exports()?;
        let mut changes = self.store.watch(Collection::NetAttach, revision)?;
        while !stop.load(Ordering::Relaxed) {
            for change in changes.next(STOP_CHECK)? {
                match change {
                    Change::Put(v) => self.serve_request(&v),
                    Change::Delete { key, .. } => self.end_export(&key),
                }
            }
        }
        Ok(())
    }

    /// Serves every request for a volume homed here and stops every export
    /// whose request is gone; returns the revision it read the requests
    /// at.
    pub(super) fn settle_exports(&self) -> Result<u64> {
        let Some(net) = &self.network else {
            return Ok(self.store.revision()?);
        };
        let requests = self.store.list(Collection::NetAttach)?;
        for v in &requests.items {
            self.serve_request(v);
        }
        let answers = self.store.list(Collection::NetExport)?;
        let asked: Vec<&str> = requests.items.iter().map(|v| v.key.as_str()).collect();
        for answer in answers
            .items
            .iter()
            .filter(|a| !asked.contains(&a.key.as_str()))
        {
            self.end_export(&answer.key);
        }
        // Exports that run with no answer left (the daemon died between
        // the two): nothing can reach them, and their keys go too.
        let answered: Vec<String> = (self.store.list(Collection::NetExport)?.items.iter())
            .filter_map(|a| serde_json::from_slice::<ExportAnswer>(&a.value).ok())
            .map(|a| a.id)
            .collect();
        for id in net.transport.running()?.exports {
            if !answered.contains(&id) {
                warn!(attachment = %id, "stopping an export no request asks for");
                net.transport.unexport(&id)?;
            }
        }
        Ok(requests.revision)
    }

    /// Serves one request if its volume is homed here, and answers it.
    fn serve_request(&self, v: &Versioned) {
        let Some(net) = &self.network else {
            return;
        };
        let Ok(request) = serde_json::from_slice::<AttachRequest>(&v.value) else {
            warn!(key = %v.key, "an attachment request that cannot be read; ignored");
            return;
        };
        let outcome = match self.export_for(net, &v.key, &request) {
            Ok(None) => return,
            Ok(Some(endpoint)) => {
                info!(key = %v.key, epoch = request.epoch, address = %endpoint.address, "serving an attachment");
                ExportAnswer {
                    id: request.id.clone(),
                    epoch: request.epoch,
                    address: Some(endpoint.address),
                    name: Some(endpoint.name),
                    error: None,
                }
            }
            Err(e) => {
                warn!(key = %v.key, error = %e, "cannot serve an attachment");
                ExportAnswer {
                    id: request.id.clone(),
                    epoch: request.epoch,
                    address: None,
                    name: None,
                    error: Some(e.to_string()),
                }
            }
        };
        let value = serde_json::to_vec(&outcome).expect("an answer serializes");
        let op = Op::put(Collection::NetExport, &v.key, value, Precondition::Any)
            .with_lease_if(self.lease());
        if let Err(e) = self.store.commit(vec![op], crate::store::Durability::Host) {
            warn!(key = %v.key, error = %e, "cannot answer an attachment request");
        }
    }

    /// The export for `request`, started if it is not running; `None`
    /// when the volume is not homed here (another node answers).
    fn export_for(
        &self,
        net: &NetworkAttach,
        key: &str,
        request: &AttachRequest,
    ) -> Result<Option<crate::transport::Endpoint>> {
        let (volume, node) = netattach::parse_key(key)
            .ok_or_else(|| Error::InvalidRequest(format!("{key:?} names no attachment")))?;
        let name = VolumeName::parse(volume)?;
        let Some(loaded) = self.load(&name)? else {
            return Ok(None);
        };
        let record = &loaded.record;
        if !record.is_home(&self.node_id) || record.node.is_none() {
            return Ok(None);
        }
        if record.id != request.volume_id {
            return Err(Error::NotFound {
                name: name.to_string(),
            });
        }
        if record.state != VolumeState::Ready {
            return Err(Error::Busy {
                name: name.to_string(),
                state: "not ready",
            });
        }
        if node == self.node_id {
            return Err(Error::InvalidRequest(
                "the home node uses its volumes locally, not over the network".into(),
            ));
        }
        let driver = self.drivers.get(&record.driver)?;
        let image = driver.network_image(record).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "a {} volume cannot be attached over the network",
                record.driver
            ))
        })?;
        let psk = request.psk(&net.sealing, key)?;
        if record.access.exclusive() && !request.read_only {
            self.cut_older_exports(net, volume, key, request.epoch)?;
        }
        let spec = ExportSpec {
            id: &request.id,
            image: &image,
            listen: net.listen,
            psk: &psk,
            read_only: request.read_only || record.access.read_only(),
        };
        net.transport.export(&spec).map(Some)
    }

    /// Fencing at the target: before a volume of an exclusive mode is
    /// served to a new holder, every export of it of an older epoch stops
    /// here and its key goes, so a node that still believes it holds the
    /// volume fails its next I/O before the new holder writes a block. A
    /// newer one still serving refuses the request.
    fn cut_older_exports(
        &self,
        net: &NetworkAttach,
        volume: &str,
        key: &str,
        epoch: u64,
    ) -> Result<()> {
        let answers = self
            .store
            .list_prefix(Collection::NetExport, &format!("{volume}/"))?;
        let running = net.transport.running()?.exports;
        for v in answers.items.iter().filter(|v| v.key != key) {
            let Ok(old) = serde_json::from_slice::<ExportAnswer>(&v.value) else {
                continue;
            };
            if !running.contains(&old.id) {
                continue;
            }
            if old.epoch > epoch {
                return Err(Error::Precondition {
                    name: volume.to_string(),
                    reason: format!("is served to {} under a newer attachment", v.key),
                });
            }
            net.transport.unexport(&old.id)?;
            warn!(volume, fenced = %v.key, epoch = old.epoch, "cut the export of an older holder");
            let op = Op::delete(Collection::NetExport, &v.key, v.revision);
            self.store
                .commit(vec![op], crate::store::Durability::Host)?;
        }
        Ok(())
    }

    /// Stops the export answering the request at `key`, which ended, and
    /// withdraws the answer.
    fn end_export(&self, key: &str) {
        let Some(net) = &self.network else {
            return;
        };
        let answer = match self.store.get(Collection::NetExport, key) {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => {
                warn!(key, error = %e, "cannot read the answer of an ended attachment");
                return;
            }
        };
        let Ok(a) = serde_json::from_slice::<ExportAnswer>(&answer.value) else {
            return;
        };
        // The answer is the home node's to withdraw, and the export is
        // stopped by the node that runs it.
        let running = match net.transport.running() {
            Ok(r) => r.exports.contains(&a.id),
            Err(e) => {
                warn!(key, error = %e, "cannot list this node's exports");
                return;
            }
        };
        if !running && !self.homes_volume_of(key) {
            return;
        }
        // An export that died (its nbdkit killed) still has its key on
        // disk: stopping it destroys that too.
        if let Err(e) = net.transport.unexport(&a.id) {
            warn!(key, error = %e, "cannot stop the export of an ended attachment");
            return;
        }
        if running {
            info!(
                key,
                epoch = a.epoch,
                "stopped the export of an ended attachment"
            );
        }
        let op = Op::delete(Collection::NetExport, key, answer.revision);
        if let Err(e) = self.store.commit(vec![op], crate::store::Durability::Host) {
            warn!(key, error = %e, "cannot withdraw the answer of an ended attachment");
        }
    }

    /// Whether the volume an attachment key names is homed here.
    fn homes_volume_of(&self, key: &str) -> bool {
        let name = netattach::parse_key(key).and_then(|(v, _)| VolumeName::parse(v).ok());
        name.is_some_and(|n| {
            matches!(self.load(&n), Ok(Some(l)) if l.record.node.as_deref() == Some(&self.node_id))
        })
    }
}

impl std::fmt::Debug for NetworkAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkAttach")
            .field("transport", &self.transport.name())
            .field("listen", &self.listen)
            .finish()
    }
}
