//! The nodes of a cluster: what each says of itself, and how the others
//! see it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::LeaseId;

/// A node's durable record in the cluster store: it outlives the node's
/// lease, so that a node that is down is still known, with when it was
/// last heard from and whether it was cordoned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    #[serde(default)]
    pub address: Option<String>,
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// No new volume is placed on a cordoned node.
    #[serde(default)]
    pub cordoned: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_heartbeat: OffsetDateTime,
}

/// A node's proof of life, bound to its lease: it vanishes when the node
/// stops renewing the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub lease: LeaseId,
    /// Bytes of the data root, and bytes free there, at the last heartbeat.
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// Where a node is, as `node ls` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    /// Up, but no new volume is placed on it.
    Cordoned,
    /// Its lease has ended: it is stopped, cut off, or gone.
    Down,
}

/// A node as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub state: NodeState,
    pub cordoned: bool,
    pub address: Option<String>,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub last_heartbeat: OffsetDateTime,
    /// Bytes of its data root and free there, while it is up.
    pub capacity_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Volumes whose data it holds.
    pub volumes: usize,
}

/// What a node says of itself when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub address: Option<String>,
    pub labels: BTreeMap<String, String>,
}
