//! Placement: which node's storage holds a new volume, and how a node
//! makes a volume that another node was asked to place on it. The node
//! that receives a create writes the volume's spec as `pending` on its
//! home node; that node, watching the store, makes the storage and marks
//! it ready (or says why not); the receiving node waits for either.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::VolumeService;
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::node::NodeState;
use crate::ownership;
use crate::store::{Change, Collection, Durability, Op, Precondition, StoreError};
use crate::volume::{RecordHead, Volume, VolumeRecord, VolumeState};

/// How often the agent looks whether it is asked to stop: a daemon's stop
/// waits for it.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// How long a create waits for the home node to make the volume.
const MADE_WITHIN: Duration = Duration::from_secs(60);

/// Why a home node could not make a volume it was asked to, kept for the
/// node that asked.
#[derive(Serialize, Deserialize)]
struct Failure {
    id: String,
    node: String,
    reason: String,
}

impl VolumeService {
    /// The node a create puts the volume on: the one named, or with
    /// `any` (or a selector alone) the ready node with the most free
    /// space among those whose labels match; without either, this one.
    pub(super) fn place(
        &self,
        node: Option<&str>,
        selector: &BTreeMap<String, String>,
    ) -> Result<String> {
        let matches = |labels: &BTreeMap<String, String>| {
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        match node {
            None if selector.is_empty() => Ok(self.node_id.clone()),
            None | Some("any") => {
                let nodes = self.nodes()?;
                nodes
                    .into_iter()
                    .filter(|n| n.state == NodeState::Ready && matches(&n.labels))
                    .max_by(|a, b| a.free_bytes.cmp(&b.free_bytes).then(b.id.cmp(&a.id)))
                    .map(|n| n.id)
                    .ok_or_else(|| Error::Precondition {
                        name: "placement".into(),
                        reason: format!("no ready node has the labels {selector:?}"),
                    })
            }
            Some(id) => {
                let n = self.node(id)?;
                let refuse = |why: &str| {
                    Err(Error::Precondition {
                        name: format!("node {}", n.id),
                        reason: why.to_string(),
                    })
                };
                match n.state {
                    NodeState::Down => refuse("is down: no volume can be created there now"),
                    NodeState::Cordoned => refuse("is cordoned: no new volume is placed there"),
                    NodeState::Ready if !matches(&n.labels) => {
                        refuse(&format!("does not have the labels {selector:?}"))
                    }
                    NodeState::Ready => Ok(n.id),
                }
            }
        }
    }

    /// Asks `record`'s home node to make it, and waits until it has.
    pub(super) fn request_remote(&self, record: VolumeRecord) -> Result<Volume> {
        let home = record.node.clone().unwrap_or_default();
        let loaded = self.insert(record)?;
        info!(volume = %loaded.record.name, node = %home, "asked its home node to make it");
        self.wait_made(&loaded.record.name, &loaded.record.id, loaded.revision)
    }

    /// Waits until the volume `name` of `id`, pending since `revision`,
    /// is ready, or its home node said why it could not make it.
    pub(super) fn wait_made(&self, name: &VolumeName, id: &str, revision: u64) -> Result<Volume> {
        let deadline = Instant::now() + MADE_WITHIN;
        let mut changes = self.store.watch(Collection::Volumes, revision)?;
        loop {
            match self.load(name)? {
                Some(l) if l.record.id == id && l.record.state == VolumeState::Ready => {
                    return self.view(&l.record)
                }
                Some(l) if l.record.id == id => {}
                _ => return Err(self.failure_of(name, id)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Busy {
                    name: name.to_string(),
                    state: "still being made on its home node; it goes on there",
                });
            }
            changes.next(left.min(Duration::from_secs(1)))?;
        }
    }

    /// Why the home node did not make volume `id`, taking the word it left.
    fn failure_of(&self, name: &VolumeName, id: &str) -> Error {
        let left = self.store.get(Collection::Failures, name.as_str());
        if let Ok(Some(v)) = left {
            if let Ok(f) = serde_json::from_slice::<Failure>(&v.value) {
                if f.id == id {
                    let _ = self
                        .store
                        .delete(Collection::Failures, name.as_str(), v.revision);
                    return Error::Precondition {
                        name: name.to_string(),
                        reason: format!("could not be made on node {}: {}", f.node, f.reason),
                    };
                }
            }
        }
        Error::NotFound {
            name: name.to_string(),
        }
    }

    /// Makes the pending volumes homed here: those asked before it
    /// started, then each as it is asked, until `stop`.
    pub fn run_agent(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.watch_requests(stop) {
                warn!(error = %e, "watching for volumes to make here failed; listing again");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    fn watch_requests(&self, stop: &AtomicBool) -> Result<()> {
        let listed = self.store.list(Collection::Volumes)?;
        for v in &listed.items {
            self.make_if_requested(&v.key, &v.value);
        }
        let mut changes = self.store.watch(Collection::Volumes, listed.revision)?;
        while !stop.load(Ordering::Relaxed) {
            for change in changes.next(STOP_CHECK)? {
                if let Change::Put(v) = change {
                    self.make_if_requested(&v.key, &v.value);
                }
            }
        }
        Ok(())
    }

    fn make_if_requested(&self, key: &str, spec: &[u8]) {
        let Ok(head) = RecordHead::from_json(spec) else {
            return;
        };
        if head.state != VolumeState::Pending || head.node.as_deref() != Some(&self.node_id) {
            return;
        }
        if let Err(e) = self.make_requested(key) {
            warn!(volume = key, error = %e, "could not make a volume asked of this node");
        }
    }

    /// Makes the pending volume `name` homed here, or says why not.
    fn make_requested(&self, name: &str) -> Result<()> {
        let name = VolumeName::parse(name)?;
        let _guard = self.locks.lock(name.as_str());
        let Some(mut loaded) = self.load(&name)? else {
            return Ok(());
        };
        let r = &loaded.record;
        if r.state != VolumeState::Pending || !r.is_home(&self.node_id) {
            return Ok(());
        }
        let made = (|| {
            let driver = self.drivers.get(&loaded.record.driver)?.clone();
            let (_, own) = ownership::split(&loaded.record.options);
            driver.validate(&own)?;
            if let Some(size) = loaded.record.size_bytes {
                let now = driver.preallocated_bytes(&own, size)?;
                self.check_space(driver.as_ref(), size, now)?;
            }
            self.make_storage(&mut loaded, driver.as_ref(), None)
        })();
        match made {
            Ok(()) => {
                info!(volume = %name, "made as asked");
                Ok(())
            }
            Err(e) => {
                let failure = Failure {
                    id: loaded.record.id.clone(),
                    node: self.node_id.clone(),
                    reason: e.to_string(),
                };
                let failure = serde_json::to_vec(&failure).expect("a failure serializes");
                let mut ops = vec![Op::put(
                    Collection::Failures,
                    name.as_str(),
                    failure,
                    Precondition::Any,
                )];
                // Still pending if it failed before any storage was made;
                // otherwise the failed make already deleted it.
                if loaded.record.state == VolumeState::Pending {
                    ops.push(Op::delete(
                        Collection::Volumes,
                        name.as_str(),
                        loaded.revision,
                    ));
                }
                match self.store.commit(ops, Durability::Host) {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(store) => {
                        warn!(volume = %name, error = %store, "cannot record the failure")
                    }
                }
                Err(e)
            }
        }
    }
}
