//! Access modes across the cluster, enforced through the cluster store.
//!
//! Every node publishes what it uses of each volume (its consumers, a raw
//! device staging) under `uses/<volume>/<node>`, bound to its lease. A
//! volume of an exclusive mode (`rwo`, `rwop`) is also claimed by the one
//! node that uses it or that it is attached to (CSI ControllerPublish),
//! under `claims/<volume>`, bound to that node's lease: the first use
//! takes the claim with compare-and-swap, the last use releases it, and a
//! node declared down loses it with its lease. Each change of a use is one
//! transaction with the claim and a check of the volume's spec, so two
//! nodes racing for a volume, or a use racing a detach, cannot both win.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::{logged, Loaded, VolumeService};
use crate::access::{AccessMode, Claim, NodeUse};
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::node::Liveness;
use crate::store::{
    Action, Collection, Durability, LeaseId, Op, Precondition, Revision, Versioned,
};
use crate::volume::{Attachment, VolumeRecord};

/// Who uses a volume, by node.
type UsersByNode = BTreeMap<String, Vec<String>>;

/// The key of `node`'s use of volume `name`.
fn use_key(name: &str, node: &str) -> String {
    format!("{name}/{node}")
}

/// The node a use key is of.
fn use_node(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, node)| node)
}

/// This node's use of a volume, as its record says; `None` when unused.
fn own_use(record: &VolumeRecord) -> Option<NodeUse> {
    record.in_use().then(|| NodeUse {
        id: record.id.clone(),
        consumers: record.consumers.clone(),
        device: record.device.is_some(),
    })
}

/// What the cluster store held of a volume's use when its record was
/// read: every node's published use, and the claim.
#[derive(Default)]
pub(super) struct ClusterUse {
    pub(super) claim: Option<Versioned>,
    pub(super) uses: Vec<Versioned>,
}

impl ClusterUse {
    /// Follows the uses and claim that `ops`, committed at `revision`,
    /// wrote.
    pub(super) fn apply(&mut self, ops: &[Op], revision: Revision) {
        for op in ops {
            let now = match &op.action {
                Action::Put { value, .. } => Some(Versioned {
                    key: op.key.clone(),
                    value: value.clone(),
                    revision,
                }),
                Action::Delete => None,
                Action::Check => continue,
            };
            match op.collection {
                Collection::Claims => self.claim = now,
                Collection::Uses => {
                    self.uses.retain(|v| v.key != op.key);
                    self.uses.extend(now);
                }
                _ => {}
            }
        }
    }
}

/// The claim stored for a volume, if it is of this volume (not of one
/// removed earlier under its name) and can be read.
fn claim_of(record: &VolumeRecord, stored: &Versioned) -> Option<Claim> {
    serde_json::from_slice::<Claim>(&stored.value)
        .ok()
        .filter(|c| c.id == record.id)
}

impl VolumeService {
    /// The node this service runs on.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The volume's stored claim: as read with its record, else read now.
    fn stored_claim(&self, loaded: &Loaded) -> Result<Option<Versioned>> {
        Ok(match &loaded.cluster_use {
            Some(u) => u.claim.clone(),
            None => self
                .store
                .get(Collection::Claims, loaded.record.name.as_str())?,
        })
    }

    /// Every node's published use of the volume: as read with its record,
    /// else read now.
    fn stored_uses(&self, loaded: &Loaded) -> Result<Vec<Versioned>> {
        Ok(match &loaded.cluster_use {
            Some(u) => u.uses.clone(),
            None => {
                let prefix = format!("{}/", loaded.record.name);
                self.store.list_prefix(Collection::Uses, &prefix)?.items
            }
        })
    }

    /// `node`'s published use of the volume.
    fn stored_use(&self, loaded: &Loaded, node: &str) -> Result<Option<Versioned>> {
        let key = use_key(loaded.record.name.as_str(), node);
        Ok(match &loaded.cluster_use {
            Some(u) => u.uses.iter().find(|v| v.key == key).cloned(),
            None => self.store.get(Collection::Uses, &key)?,
        })
    }

    /// The volume's access mode.
    pub fn access_mode(&self, name: &str) -> Result<AccessMode> {
        let name = VolumeName::parse(name)?;
        let loaded = self.load(&name)?.ok_or_else(|| super::not_found(&name))?;
        Ok(loaded.record.access)
    }

    /// Attaches the volume to `node` (CSI ControllerPublish). Attaching
    /// again the same way succeeds; the same node with other access is a
    /// conflict. A volume of an exclusive mode is attached to one node at
    /// a time, bound to that node's lease: an attachment of a node since
    /// declared down no longer counts, and is dropped.
    pub fn attach(&self, name: &str, node: &str, how: Attachment) -> Result<()> {
        logged("attach", name, || self.attach_inner(name, node, how))
    }

    fn attach_inner(&self, name: &str, node: &str, how: Attachment) -> Result<()> {
        let name = VolumeName::parse(name)?;
        let _guard = self.locks.lock(name.as_str());
        let mut loaded = self.load_ready(&name)?;
        let lease = self.lease_of(node)?;
        if !self.attaches_over_network(&loaded.record.driver) {
            loaded.record.refuse_away_from_home(node)?;
        }
        let access = loaded.record.access;
        if access.read_only() && !how.read_only {
            return Err(refused_write(&name, access));
        }
        let how = Attachment {
            exclusive: access.exclusive(),
            ..how
        };
        match loaded.record.attachments.get(node) {
            Some(existing) if *existing == how => return Ok(()),
            Some(_) => {
                return Err(Error::AttachmentConflict {
                    name: name.to_string(),
                    node: node.to_string(),
                })
            }
            None => {}
        }
        let mut ops = Vec::new();
        if access.exclusive() {
            ops.extend(self.claim_op(&loaded, node, None, lease)?);
            let stale: Vec<String> = (loaded.record.attachments.keys())
                .filter(|n| *n != node)
                .cloned()
                .collect();
            for other in stale {
                // The claim was free: that node's lease ended.
                warn!(volume = %name, node = %other, "dropping the attachment of a node that no longer holds the volume");
                loaded.record.attachments.remove(&other);
            }
        }
        loaded.record.attachments.insert(node.to_string(), how);
        self.save_with(&mut loaded, Durability::Host, ops)
    }

    /// Detaches the volume from `node`, or from every node; detaching
    /// what is not attached succeeds. A node that no longer uses the
    /// volume either releases its claim.
    pub fn detach(&self, name: &str, node: Option<&str>) -> Result<()> {
        logged("detach", name, || {
            let name = VolumeName::parse(name)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_ready(&name)?;
            let detached: Vec<String> = (loaded.record.attachments.keys())
                .filter(|n| node.is_none_or(|node| node == *n))
                .cloned()
                .collect();
            if detached.is_empty() {
                return Ok(());
            }
            let mut ops = Vec::new();
            for n in &detached {
                loaded.record.attachments.remove(n);
                if !loaded.record.access.exclusive() {
                    continue;
                }
                if self.stored_use(&loaded, n)?.is_none() {
                    // Released only while that node still does not use it.
                    let key = use_key(name.as_str(), n);
                    ops.push(Op::check(Collection::Uses, key, Precondition::Absent));
                    ops.extend(self.release_op(&loaded, n)?);
                }
            }
            self.save_with(&mut loaded, Durability::Host, ops)
        })
    }

    /// The lease that binds `node`'s claims: this node's own (`None`
    /// before it joins, on a single host), or a live peer's.
    fn lease_of(&self, node: &str) -> Result<Option<LeaseId>> {
        if node == self.node_id {
            return Ok(self.lease());
        }
        let unknown = || Error::UnknownNode {
            node: node.to_string(),
        };
        if self.lease().is_none() || self.store.get(Collection::Nodes, node)?.is_none() {
            return Err(unknown());
        }
        let alive = self.store.get(Collection::Liveness, node)?.ok_or_else(|| {
            Error::InvalidRequest(format!(
                "node {node} is down: nothing can be attached to it"
            ))
        })?;
        let liveness: Liveness = serde_json::from_slice(&alive.value)
            .map_err(|e| Error::Store(crate::store::StoreError::Corrupt(e.to_string())))?;
        Ok(Some(liveness.lease))
    }

    /// The op that makes `node` the holder of the volume's claim, bound to
    /// `lease`: refused if another node holds it.
    fn claim_op(
        &self,
        loaded: &Loaded,
        node: &str,
        consumer: Option<&str>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Op>> {
        let record = &loaded.record;
        let current = self.stored_claim(loaded)?;
        if let Some(c) = (current.as_ref())
            .and_then(|v| claim_of(record, v))
            .filter(|c| c.node != node)
        {
            return Err(Error::HeldElsewhere {
                name: record.name.to_string(),
                node: c.node,
                mode: record.access,
                consumer: c.consumer,
            });
        }
        let consumer = consumer.map(str::to_string);
        Ok(Some(claim_put(
            record,
            node,
            consumer,
            current.as_ref(),
            lease,
        )))
    }

    /// The op that releases `node`'s claim on the volume, if it holds it.
    fn release_op(&self, loaded: &Loaded, node: &str) -> Result<Option<Op>> {
        let record = &loaded.record;
        Ok((self.stored_claim(loaded)?)
            .filter(|v| claim_of(record, v).is_some_and(|c| c.node == node))
            .map(|v| Op::delete(Collection::Claims, record.name.as_str(), v.revision)))
    }

    /// What a change of this node's use of the volume, to what `record`
    /// now says, writes to the cluster store with it: the published use,
    /// the claim of an exclusive volume (taken by the first use, released
    /// by the last), and a check that the spec is still as loaded. Refuses
    /// a use the volume's access mode forbids.
    pub(super) fn use_ops(&self, loaded: &Loaded) -> Result<Vec<Op>> {
        let record = &loaded.record;
        let name = record.name.as_str();
        if record.access.single_consumer() {
            let users = record.users();
            if users.len() > 1 {
                return Err(Error::HeldElsewhere {
                    name: name.to_string(),
                    node: self.node_id.clone(),
                    mode: record.access,
                    consumer: Some(users.join(" and ")),
                });
            }
        }
        let key = use_key(name, &self.node_id);
        let published = self.stored_use(loaded, &self.node_id)?;
        let now = own_use(record).map(|u| u.to_json());
        let lease = self.lease();
        let mut ops = Vec::new();
        match (&now, &published) {
            (Some(n), Some(p)) if *n == p.value => {}
            (Some(n), p) => {
                let expect = p
                    .as_ref()
                    .map_or(Precondition::Absent, |p| Precondition::Revision(p.revision));
                let op = Op::put(Collection::Uses, &key, n.clone(), expect);
                ops.push(op.with_lease_if(lease));
            }
            (None, Some(p)) => ops.push(Op::delete(Collection::Uses, &key, p.revision)),
            (None, None) => {}
        }
        if record.access.exclusive() {
            let attached = record.attachments.contains_key(&self.node_id);
            let held_before = attached || published.is_some();
            let held_after = attached || now.is_some();
            if held_after && !held_before {
                let consumer = record.consumers.iter().next().map(String::as_str);
                let consumer = consumer.filter(|_| record.access.single_consumer());
                ops.extend(self.claim_op(loaded, &self.node_id, consumer, lease)?);
            } else if held_before && !held_after {
                ops.extend(self.release_op(loaded, &self.node_id)?);
            }
        }
        if !ops.is_empty() {
            ops.push(Op::check(
                Collection::Volumes,
                name,
                Precondition::Revision(loaded.revision),
            ));
        }
        Ok(ops)
    }

    /// Forgets this node's use of a volume just removed, and its claim.
    pub(super) fn forget_use(&self, loaded: &Loaded) {
        let record = &loaded.record;
        let key = use_key(record.name.as_str(), &self.node_id);
        let forget = || -> Result<()> {
            let mut ops: Vec<Op> = (self.stored_use(loaded, &self.node_id)?)
                .map(|v| Op::delete(Collection::Uses, &key, v.revision))
                .into_iter()
                .collect();
            let claim = self.stored_claim(loaded)?;
            ops.extend(
                claim
                    .filter(|v| claim_of(record, v).is_some())
                    .map(|v| Op::delete(Collection::Claims, record.name.as_str(), v.revision)),
            );
            if !ops.is_empty() {
                self.store.commit(ops, Durability::Process)?;
            }
            Ok(())
        };
        if let Err(e) = forget() {
            warn!(volume = %record.name, error = %e, "its use stays published until this node's lease ends");
        }
    }

    /// Who uses the volume on each node, and the node that holds its
    /// claim, as the cluster store says now.
    pub(super) fn cluster_use(&self, loaded: &Loaded) -> Result<(UsersByNode, Option<String>)> {
        let record = &loaded.record;
        let mut by_node = BTreeMap::new();
        for v in self.stored_uses(loaded)? {
            if let Ok(u) = serde_json::from_slice::<NodeUse>(&v.value) {
                if u.id == record.id {
                    let mut users: Vec<String> = u.consumers.into_iter().collect();
                    if u.device {
                        users.push("raw device".into());
                    }
                    by_node.insert(use_node(&v.key).to_string(), users);
                }
            }
        }
        let held_by = match record.access.exclusive() {
            true => (self.stored_claim(loaded)?)
                .and_then(|v| claim_of(record, &v))
                .map(|c| c.node),
            false => None,
        };
        Ok((by_node, held_by))
    }

    /// Refuses to remove a volume that another node uses.
    pub(super) fn refuse_use_elsewhere(&self, loaded: &Loaded) -> Result<()> {
        let record = &loaded.record;
        let (by_node, _) = self.cluster_use(loaded)?;
        let elsewhere: Vec<String> = by_node
            .into_iter()
            .filter(|(node, _)| *node != self.node_id)
            .flat_map(|(node, users)| {
                users
                    .into_iter()
                    .map(move |u| format!("{u} on node {node}"))
            })
            .collect();
        if elsewhere.is_empty() {
            return Ok(());
        }
        Err(Error::InUse {
            name: record.name.to_string(),
            consumers: elsewhere,
        })
    }

    /// Publishes again, under this node's current lease, every use it has
    /// and every claim it is owed (by a use, or by an attachment to it),
    /// and withdraws what it published before and no longer has: what a
    /// node does when it joins, and when it rejoins after its lease
    /// ended. A claim another node took meanwhile stays that node's; the
    /// volume's local users keep their mounts, and are named in the log.
    pub(super) fn publish_uses(&self) -> Result<usize> {
        self.recent.clear();
        let lease = self.lease();
        let mine: BTreeMap<String, Versioned> = (self.store.list(Collection::Uses)?.items)
            .into_iter()
            .filter(|v| use_node(&v.key) == self.node_id)
            .map(|v| (v.key.clone(), v))
            .collect();
        let claims: BTreeMap<String, Versioned> = (self.store.list(Collection::Claims)?.items)
            .into_iter()
            .map(|v| (v.key.clone(), v))
            .collect();
        let mut lost = 0;
        let mut kept = std::collections::BTreeSet::new();
        let owed = |r: &VolumeRecord| {
            r.in_use()
                || r.attachments.contains_key(&self.node_id)
                || (claims.get(r.name.as_str()))
                    .and_then(|c| claim_of(r, c))
                    .is_some_and(|c| c.node == self.node_id)
        };
        // Only the volumes this node uses, is attached, or holds: a node
        // of 10,000 volumes using none publishes nothing, in no time.
        for listed in (self.list_records()?.records)
            .into_iter()
            .filter(|l| owed(&l.record))
        {
            let name = listed.record.name.clone();
            let _guard = self.locks.lock(name.as_str());
            let Some(loaded) = self.load(&name)? else {
                continue;
            };
            let record = &loaded.record;
            let key = use_key(name.as_str(), &self.node_id);
            let mut ops = Vec::new();
            if let Some(u) = own_use(record) {
                kept.insert(key.clone());
                let expect = (mine.get(&key))
                    .map_or(Precondition::Absent, |v| Precondition::Revision(v.revision));
                let op = Op::put(Collection::Uses, &key, u.to_json(), expect);
                ops.push(op.with_lease_if(lease));
            }
            let held = record.in_use() || record.attachments.contains_key(&self.node_id);
            let claim = claims.get(name.as_str());
            let holder = claim.and_then(|c| claim_of(record, c)).map(|c| c.node);
            if record.access.exclusive() && held {
                match holder {
                    Some(other) if other != self.node_id => {
                        lost += 1;
                        warn!(volume = %name, holder = %other, users = ?record.users(),
                              "another node took this volume's claim while this node was out of the cluster");
                    }
                    _ => {
                        let consumer = record.consumers.iter().next().cloned();
                        let consumer = consumer.filter(|_| record.access.single_consumer());
                        let current = claims.get(name.as_str());
                        ops.push(claim_put(record, &self.node_id, consumer, current, lease));
                    }
                }
            } else if holder.as_deref() == Some(self.node_id.as_str()) {
                let c = &claims[name.as_str()];
                ops.push(Op::delete(Collection::Claims, name.as_str(), c.revision));
            }
            if !ops.is_empty() {
                self.store.commit(ops, Durability::Process)?;
            }
        }
        for (key, v) in mine.iter().filter(|(k, _)| !kept.contains(*k)) {
            self.store
                .delete_with(Collection::Uses, key, v.revision, Durability::Process)?;
        }
        self.republish_requests()?;
        info!(node = %self.node_id, lost, "published this node's use of its volumes");
        Ok(lost)
    }
}

/// The put that claims `record`'s volume for `node` (and `consumer`), if
/// the claim is still as read (`current`), bound to the node's lease.
fn claim_put(
    record: &VolumeRecord,
    node: &str,
    consumer: Option<String>,
    current: Option<&Versioned>,
    lease: Option<LeaseId>,
) -> Op {
    let claim = Claim {
        id: record.id.clone(),
        node: node.to_string(),
        consumer,
    };
    let (key, expect) = (record.name.as_str(), claim_expect(current));
    Op::put(Collection::Claims, key, claim.to_json(), expect).with_lease_if(lease)
}

fn claim_expect(current: Option<&Versioned>) -> Precondition {
    current.map_or(Precondition::Absent, |v| Precondition::Revision(v.revision))
}

/// The error for a write to a volume no one may write.
pub(super) fn refused_write(name: &VolumeName, access: AccessMode) -> Error {
    Error::Precondition {
        name: name.to_string(),
        reason: format!("has access mode {}; use it read-only", access.explained()),
    }
}
