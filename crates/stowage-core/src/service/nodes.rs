//! Membership: this node's lease and records, and every node as the
//! cluster store knows it. A node holds a lease and renews it; a key
//! bound to the lease says it is alive, and vanishes with the lease when
//! the node stops renewing it. Its durable record stays, so a node that
//! is down is still listed, with when it was last heard from.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{now_seconds, VolumeService};
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::node::{Liveness, Node, NodeInfo, NodeRecord, NodeState};
use crate::store::{Collection, Durability, LeaseId, Op, Precondition, StoreError};

/// How often a write of a node's records that lost a race is retried.
const RETRIES: usize = 8;

/// This node's place in the cluster while it runs.
pub(super) struct Membership {
    lease: LeaseId,
    info: NodeInfo,
    ttl: Duration,
    /// When the lease was last known to hold: granted or renewed.
    renewed: Instant,
    /// Whether its uses are published under this lease.
    uses_published: bool,
}

/// A node id follows the rules of volume names (a hostname does).
fn node_id(id: &str) -> Result<String> {
    VolumeName::parse(id)
        .map(|n| n.to_string())
        .map_err(|e| Error::InvalidRequest(e.to_string().replace("volume name", "node id")))
}

impl VolumeService {
    /// Joins the cluster: takes a lease of `ttl` and publishes this node's
    /// records under it.
    pub fn join(&self, info: NodeInfo, ttl: Duration) -> Result<()> {
        node_id(&self.node_id)?;
        let renewed = Instant::now();
        let lease = self.store.grant_lease(ttl)?;
        self.publish_node(lease, &info)?;
        info!(node = %self.node_id, lease = format!("{lease:x}"), ?ttl, "joined the cluster");
        *self.membership.lock().unwrap_or_else(|e| e.into_inner()) = Some(Membership {
            lease,
            info,
            ttl,
            renewed,
            uses_published: false,
        });
        self.publish_uses()?;
        self.uses_published(true);
        Ok(())
    }

    fn uses_published(&self, done: bool) {
        let mut m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = m.as_mut() {
            m.uses_published = done;
        }
    }

    /// Renews this node's lease and its heartbeat. A lease that ended
    /// meanwhile (the node was cut off for longer than its TTL, and the
    /// others took it for down) is replaced by a new one.
    pub fn heartbeat(&self) -> Result<()> {
        let (mut lease, info, ttl, published) = {
            let m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
            let Some(m) = m.as_ref() else { return Ok(()) };
            (m.lease, m.info.clone(), m.ttl, m.uses_published)
        };
        let asked = Instant::now();
        let rejoined = match self.store.keep_alive(lease) {
            Ok(_) => false,
            Err(StoreError::LeaseExpired(_)) => {
                warn!(node = %self.node_id, "this node's lease ended: the cluster took it for down; rejoining");
                self.fence_attachments();
                lease = self.store.grant_lease(ttl)?;
                true
            }
            Err(e) => {
                if self.refuse_lapsed_lease().is_err() {
                    self.fence_attachments();
                }
                return Err(e.into());
            }
        };
        {
            let mut m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = m.as_mut() {
                m.lease = lease;
                m.renewed = asked;
                // Its uses and claims ended with the old lease.
                m.uses_published &= !rejoined;
            }
        }
        self.publish_node(lease, &info)?;
        if rejoined || !published {
            self.publish_uses()?;
            self.uses_published(true);
        }
        Ok(())
    }

    /// Leaves the cluster at a clean stop: the node shows as down at once
    /// rather than when its lease would have ended.
    pub fn leave(&self) -> Result<()> {
        let taken = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(m) = taken {
            self.store.revoke_lease(m.lease)?;
        }
        Ok(())
    }

    /// Refuses a change to cluster state while this node's lease may have
    /// ended: past its TTL since last renewed, the others may take the
    /// node for down and act on what it holds, so it must not act too.
    pub(super) fn refuse_lapsed_lease(&self) -> Result<()> {
        let m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        match m.as_ref() {
            Some(m) if m.renewed.elapsed() >= m.ttl => {
                Err(Error::Store(StoreError::Unavailable(format!(
                    "node {} has not renewed its cluster lease for {:.1} s (its TTL is {} s): \
                     it changes nothing in the cluster until it has",
                    self.node_id,
                    m.renewed.elapsed().as_secs_f64(),
                    m.ttl.as_secs()
                ))))
            }
            _ => Ok(()),
        }
    }

    /// The lease this node holds now, if it has joined.
    pub fn lease(&self) -> Option<LeaseId> {
        let m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        m.as_ref().map(|m| m.lease)
    }

    /// Writes this node's durable record and its liveness, bound to
    /// `lease`, in one transaction; keeps what an operator set (cordon).
    fn publish_node(&self, lease: LeaseId, info: &NodeInfo) -> Result<()> {
        let usage = self
            .sys
            .fs_usage(&self.layout.data_root)
            .map_err(Error::io("read free space of", &self.layout.data_root))?;
        let liveness = Liveness {
            lease,
            capacity_bytes: usage.capacity_bytes,
            free_bytes: usage.available_bytes,
        };
        let liveness = serde_json::to_vec(&liveness).expect("liveness serializes");
        self.update_node_record(
            &self.node_id,
            true,
            |old| {
                let now = now_seconds();
                Some(NodeRecord {
                    id: self.node_id.clone(),
                    address: info.address.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    labels: info.labels.clone(),
                    cordoned: old.is_some_and(|o| o.cordoned),
                    joined_at: old.map_or(now, |o| o.joined_at),
                    last_heartbeat: now,
                })
            },
            |ops| {
                ops.push(
                    Op::put(
                        Collection::Liveness,
                        &self.node_id,
                        liveness.clone(),
                        Precondition::Any,
                    )
                    .with_lease(lease),
                )
            },
        )
        .map(drop)
    }

    /// Rewrites the record of node `id` as `change` makes it from the
    /// current one, with compare-and-swap, retrying a lost race. `extra`
    /// adds ops to the same transaction.
    fn update_node_record(
        &self,
        id: &str,
        create: bool,
        change: impl Fn(Option<&NodeRecord>) -> Option<NodeRecord>,
        extra: impl Fn(&mut Vec<Op>),
    ) -> Result<NodeRecord> {
        for _ in 0..RETRIES {
            let current = self.store.get(Collection::Nodes, id)?;
            let old = match &current {
                Some(v) => Some(parse_node(&v.value)?),
                None if create => None,
                None => {
                    return Err(Error::UnknownNode {
                        node: id.to_string(),
                    })
                }
            };
            let Some(new) = change(old.as_ref()) else {
                return old.ok_or_else(|| Error::UnknownNode {
                    node: id.to_string(),
                });
            };
            let expect = current
                .as_ref()
                .map_or(Precondition::Absent, |v| Precondition::Revision(v.revision));
            let bytes = serde_json::to_vec(&new).expect("a node record serializes");
            let mut ops = vec![Op::put(Collection::Nodes, id, bytes, expect)];
            extra(&mut ops);
            match self.store.commit(ops, Durability::Host) {
                Ok(_) => return Ok(new),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Store(StoreError::Conflict {
            key: id.to_string(),
        }))
    }

    /// Every node the cluster knows, by id.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        let alive: HashMap<String, Liveness> = (self.store.list(Collection::Liveness)?.items)
            .into_iter()
            .filter_map(|v| Some((v.key, serde_json::from_slice(&v.value).ok()?)))
            .collect();
        let homed = self.volumes_by_home()?;
        let mut out = Vec::new();
        for v in self.store.list(Collection::Nodes)?.items {
            let r = parse_node(&v.value)?;
            let live = alive.get(&r.id);
            out.push(Node {
                state: match (live, r.cordoned) {
                    (None, _) => NodeState::Down,
                    (Some(_), true) => NodeState::Cordoned,
                    (Some(_), false) => NodeState::Ready,
                },
                capacity_bytes: live.map(|l| l.capacity_bytes),
                free_bytes: live.map(|l| l.free_bytes),
                volumes: homed.get(&r.id).map_or(0, Vec::len),
                cordoned: r.cordoned,
                address: r.address,
                version: r.version,
                labels: r.labels,
                last_heartbeat: r.last_heartbeat,
                id: r.id,
            });
        }
        Ok(out)
    }

    /// One node, as [`Self::nodes`] shows it.
    pub fn node(&self, id: &str) -> Result<Node> {
        let id = node_id(id)?;
        self.nodes()?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or(Error::UnknownNode { node: id })
    }

    /// Stops (or, with `false`, resumes) placing new volumes on a node.
    pub fn cordon(&self, id: &str, cordoned: bool) -> Result<Node> {
        let id = node_id(id)?;
        self.update_node_record(
            &id,
            false,
            |old| {
                let old = old?;
                (old.cordoned != cordoned).then(|| NodeRecord {
                    cordoned,
                    ..old.clone()
                })
            },
            |_| {},
        )?;
        info!(node = %id, cordoned, "cordon changed");
        self.node(&id)
    }

    /// Forgets a node that is down. One that still holds volumes' data is
    /// kept unless `force`, which forgets those volumes with it (their
    /// data stays on that node's disk); returns their names.
    pub fn remove_node(&self, id: &str, force: bool) -> Result<Vec<String>> {
        let id = node_id(id)?;
        let node = self.node(&id)?;
        if node.state != NodeState::Down {
            return Err(Error::Precondition {
                name: format!("node {id}"),
                reason: "is up; stop it (or wait until its lease ends) before removing it".into(),
            });
        }
        let homed = self.volumes_by_home()?.remove(&id).unwrap_or_default();
        if !homed.is_empty() && !force {
            return Err(Error::Precondition {
                name: format!("node {id}"),
                reason: format!(
                    "holds the data of {} volume(s) ({}); --force forgets them",
                    homed.len(),
                    homed.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        for name in &homed {
            let _guard = self.locks.lock(name);
            if let Some(loaded) = self.load(&VolumeName::parse(name)?)? {
                self.erase(&loaded)?;
                warn!(volume = %name, node = %id, "forgotten with its node; its data stays on that node");
            }
        }
        if let Some(v) = self.store.get(Collection::Nodes, &id)? {
            self.store.delete(Collection::Nodes, &id, v.revision)?;
        }
        info!(node = %id, forgotten = homed.len(), "node removed");
        Ok(homed)
    }
}

fn parse_node(bytes: &[u8]) -> Result<NodeRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Store(StoreError::Corrupt(format!("node record: {e}"))))
}
