//! The state store: a key-value map per collection with the shape of
//! etcd's API, which SQLite and memory give too. Every write is a
//! transaction of compare-and-swaps on revisions; a list says the
//! revision it read at, and a watch from that revision misses nothing;
//! keys may be bound to a lease, and vanish when it ends. No SQL and no
//! gRPC leak through the trait.

mod changes;
pub mod conformance;
mod memory;
pub mod stale;

use std::time::Duration;

pub use changes::{ChangeLog, LeaseTable};
pub use memory::MemoryStore;

/// A store revision. Revisions grow with every write across the whole
/// store, so a deleted and re-created key never repeats one.
pub type Revision = u64;

/// A lease: keys bound to it vanish when it expires or is revoked.
pub type LeaseId = i64;

/// A namespace of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    /// Volume specs, shared by every node.
    Volumes,
    Snapshots,
    /// One node's facts about its use of volumes, by volume name: kept in
    /// that node's own store.
    NodeVolumes,
    /// What a node's own store says of the node itself.
    Node,
    /// Every node's durable record, by node id.
    Nodes,
    /// Every live node's proof of life, bound to its lease.
    Liveness,
    /// Why a node could not make a volume another node asked of it, by
    /// volume name, for the asking node to report.
    Failures,
    /// What each node uses of each volume, by `volume/node`, bound to
    /// that node's lease.
    Uses,
    /// The node that holds a volume of an exclusive access mode, by
    /// volume name, bound to that node's lease.
    Claims,
    /// A node's request to attach a volume homed elsewhere over the
    /// network, by `volume/node`, bound to the requesting node's lease.
    NetAttach,
    /// The home node's answer to such a request (the export), by
    /// `volume/node`, bound to the home node's lease.
    NetExport,
}

impl Collection {
    pub const ALL: [Collection; 11] = [
        Collection::Volumes,
        Collection::Snapshots,
        Collection::NodeVolumes,
        Collection::Node,
        Collection::Nodes,
        Collection::Liveness,
        Collection::Failures,
        Collection::Uses,
        Collection::Claims,
        Collection::NetAttach,
        Collection::NetExport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Volumes => "volumes",
            Collection::Snapshots => "snapshots",
            Collection::NodeVolumes => "node-volumes",
            Collection::Node => "node",
            Collection::Nodes => "nodes",
            Collection::Liveness => "alive",
            Collection::Failures => "failures",
            Collection::Uses => "uses",
            Collection::Claims => "claims",
            Collection::NetAttach => "netattach",
            Collection::NetExport => "netexport",
        }
    }

    pub fn from_name(name: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// What a write must survive before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A crash of the host, power loss included: fsync'd, or committed by
    /// a quorum.
    Host,
    /// A crash of the daemon, not necessarily of the host. For records
    /// that only mirror kernel state (mounts, attached loop devices),
    /// which a reboot drops too: after a power loss the store may hold an
    /// earlier consistent state of them, and reconcile brings the kernel
    /// in line with whichever it holds. Also for the last write of a job
    /// whose durable intent already makes reconcile finish it. A store
    /// whose every write is durable (etcd) treats it as `Host`.
    Process,
}

/// A value with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// What a list read, and the revision it read at: a watch from that
/// revision sees every change after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub revision: Revision,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this revision.
    Revision(Revision),
    /// Anything, the key's absence included.
    Any,
}

impl Precondition {
    /// Whether a key currently at `current` (`None`: absent) satisfies it.
    pub fn holds(self, current: Option<Revision>) -> bool {
        match (current, self) {
            (_, Precondition::Any) | (None, Precondition::Absent) => true,
            (Some(c), Precondition::Revision(r)) => c == r,
            _ => false,
        }
    }
}

/// One read of [`Store::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read<'a> {
    /// The entry at a key.
    Key(Collection, &'a str),
    /// Every entry whose key starts with a prefix, in byte order.
    Prefix(Collection, &'a str),
}

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub collection: Collection,
    pub key: String,
    pub expect: Precondition,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Writes the value, bound to the lease if one is given.
    Put {
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete,
    /// Writes nothing: the transaction commits only if the key is as
    /// expected.
    Check,
}

impl Op {
    pub fn put(
        collection: Collection,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        expect: Precondition,
    ) -> Op {
        Op {
            collection,
            key: key.into(),
            expect,
            action: Action::Put {
                value: value.into(),
                lease: None,
            },
        }
    }

    /// Deletes the key if it is at revision `expect`.
    pub fn delete(collection: Collection, key: impl Into<String>, expect: Revision) -> Op {
        Op {
            collection,
            key: key.into(),
            expect: Precondition::Revision(expect),
            action: Action::Delete,
        }
    }

    pub fn check(collection: Collection, key: impl Into<String>, expect: Precondition) -> Op {
        Op {
            collection,
            key: key.into(),
            expect,
            action: Action::Check,
        }
    }

    /// Binds a put to `lease` if there is one (a node outside a cluster
    /// holds none).
    pub fn with_lease_if(self, lease: Option<LeaseId>) -> Op {
        match lease {
            Some(l) => self.with_lease(l),
            None => self,
        }
    }

    /// Binds a put to `lease`: the key vanishes when the lease ends.
    pub fn with_lease(mut self, lease: LeaseId) -> Op {
        if let Action::Put { lease: l, .. } = &mut self.action {
            *l = Some(lease);
        }
        self
    }
}

/// A change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Versioned),
    /// The key was deleted, by a write or by the end of its lease.
    Delete {
        key: String,
        revision: Revision,
    },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put(v) => &v.key,
            Change::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(v) => v.revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

/// The changes of one collection, in revision order, with no gap.
pub trait Watcher: Send {
    /// The next changes, waiting at most `timeout` for one; empty when
    /// none came. After `Compacted` the watcher is done: list again and
    /// watch from the list's revision.
    fn next(&mut self, timeout: Duration) -> Result<Vec<Change>, StoreError>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store conflict on {key}: it changed concurrently; retry")]
    Conflict { key: String },
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store backend failed: {0}")]
    Backend(String),
    #[error("the store's disk is full: {0}")]
    Full(String),
    /// The store cannot be reached, or has no quorum: nothing was written.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A write whose outcome is unknown (it timed out after it was sent):
    /// it may have committed. Read again before deciding anything.
    #[error("the store is unavailable, and did not say whether a write committed: {0}")]
    Indeterminate(String),
    /// A watch asked for changes the store no longer keeps: the oldest a
    /// watch can start at is `compacted`.
    #[error("the store has compacted its history before revision {compacted}; the changes after {requested} are gone")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("lease {0:x} has expired or was revoked")]
    LeaseExpired(LeaseId),
}

/// A durable store. Writes return only once they are as durable as they
/// asked, and become durable in order: one that survives a crash brings
/// every earlier one with it.
pub trait Store: Send + Sync + 'static {
    /// The revision of the last write. It only grows; a new embedded
    /// store starts at 0.
    fn revision(&self) -> Result<Revision, StoreError>;
    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every entry of a collection, in byte order of the keys, read at
    /// one revision (however many requests the backend needs for it).
    fn list(&self, collection: Collection) -> Result<Listed<Versioned>, StoreError> {
        self.list_prefix(collection, "")
    }
    /// [`Self::list`] of the keys that start with `prefix`.
    fn list_prefix(
        &self,
        collection: Collection,
        prefix: &str,
    ) -> Result<Listed<Versioned>, StoreError>;
    /// Several reads in one request where the backend can (etcd: one
    /// read-only transaction, at one revision); elsewhere one after the
    /// other, which the preconditions of the writes made from them keep
    /// safe. One answer per read, in order; a key gives at most one entry.
    fn read(&self, reads: &[Read<'_>]) -> Result<Vec<Vec<Versioned>>, StoreError> {
        (reads.iter())
            .map(|r| match *r {
                Read::Key(c, key) => Ok(self.get(c, key)?.into_iter().collect()),
                Read::Prefix(c, prefix) => Ok(self.list_prefix(c, prefix)?.items),
            })
            .collect()
    }
    /// Every key of a collection with its revision, without the values, in
    /// byte order of the keys: what a cache of parsed records checks
    /// itself against.
    fn list_revisions(
        &self,
        collection: Collection,
    ) -> Result<Listed<(String, Revision)>, StoreError> {
        let listed = self.list(collection)?;
        Ok(Listed {
            items: listed
                .items
                .into_iter()
                .map(|v| (v.key, v.revision))
                .collect(),
            revision: listed.revision,
        })
    }
    /// Applies every op or none: if any op's precondition fails, nothing
    /// is written and the error names the first such key. Returns the
    /// revision of the transaction, which every key it wrote now has.
    fn commit(&self, ops: Vec<Op>, durability: Durability) -> Result<Revision, StoreError>;
    /// Streams the changes to `collection` made after revision `after`.
    fn watch(
        &self,
        collection: Collection,
        after: Revision,
    ) -> Result<Box<dyn Watcher>, StoreError>;
    /// Forgets the history before `revision`: a watch of the changes
    /// after an earlier revision than `revision - 1` gets `Compacted`.
    fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// A new lease that ends `ttl` from now unless kept alive.
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews the lease for its whole TTL; returns that TTL.
    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;
    /// Ends the lease now, deleting every key bound to it. Revoking a
    /// lease that has ended succeeds.
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Writes `value` if `expect` holds, durable as `durability` asks;
    /// returns the new revision.
    fn put_with(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Precondition,
        durability: Durability,
    ) -> Result<Revision, StoreError> {
        self.commit(vec![Op::put(collection, key, value, expect)], durability)
    }
    /// [`Self::put_with`] that survives a crash of the host.
    fn put(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Precondition,
    ) -> Result<Revision, StoreError> {
        self.put_with(collection, key, value, expect, Durability::Host)
    }
    /// Deletes `key` if it is at revision `expect`, durable as
    /// `durability` asks.
    fn delete_with(
        &self,
        collection: Collection,
        key: &str,
        expect: Revision,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.commit(vec![Op::delete(collection, key, expect)], durability)
            .map(drop)
    }
    /// [`Self::delete_with`] that survives a crash of the host.
    fn delete(
        &self,
        collection: Collection,
        key: &str,
        expect: Revision,
    ) -> Result<(), StoreError> {
        self.delete_with(collection, key, expect, Durability::Host)
    }
}

/// The least string above every string that starts with `prefix`, for a
/// range query; `None` for the empty prefix, which bounds nothing. Byte
/// order and code point order agree on UTF-8, so one serves both.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next code point, skipping the surrogates no char can be.
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
