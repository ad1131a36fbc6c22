//! The state store. A key-value map per collection, where every write is a
//! compare-and-swap on a revision: the shape an etcd transaction has, and
//! what SQLite gives inside one transaction. No SQL leaks through the trait.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A store revision. Revisions grow with every write across the whole
/// store, so a deleted and re-created key never repeats one.
pub type Revision = u64;

/// A namespace of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    Volumes,
    Snapshots,
}

impl Collection {
    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Volumes => "volumes",
            Collection::Snapshots => "snapshots",
        }
    }
}

/// What a write must survive before `put` returns.
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
    /// whose durable intent already makes reconcile finish it.
    Process,
}

/// A value with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this revision.
    Revision(Revision),
}

impl Precondition {
    /// Whether a key currently at `current` (`None`: absent) satisfies it.
    pub fn holds(self, current: Option<Revision>) -> bool {
        match (current, self) {
            (None, Precondition::Absent) => true,
            (Some(c), Precondition::Revision(r)) => c == r,
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store conflict on {key}: it changed concurrently")]
    Conflict { key: String },
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store backend failed: {0}")]
    Backend(String),
    #[error("the store's disk is full: {0}")]
    Full(String),
}

/// A durable store. `put` and `delete` return only once the change is
/// durable (fsync'd, or committed by a quorum); `put_with` and
/// `delete_with` may ask for less.
pub trait Store: Send + Sync + 'static {
    /// The revision of the last write: 0 for a store never written to.
    fn revision(&self) -> Result<Revision, StoreError>;
    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every entry of a collection, in byte order of the keys.
    fn list(&self, collection: Collection) -> Result<Vec<Versioned>, StoreError>;
    /// Every key of a collection with its revision, without the values, in
    /// byte order of the keys: what a cache of parsed records checks
    /// itself against.
    fn list_revisions(
        &self,
        collection: Collection,
    ) -> Result<Vec<(String, Revision)>, StoreError> {
        Ok(self
            .list(collection)?
            .into_iter()
            .map(|v| (v.key, v.revision))
            .collect())
    }
    /// Writes `value` if `expect` holds, durable as `durability` asks;
    /// returns the new revision. Writes become durable in order: one that
    /// survives a crash brings every earlier one with it.
    fn put_with(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Precondition,
        durability: Durability,
    ) -> Result<Revision, StoreError>;
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
    /// `durability` asks, in order with every other write.
    fn delete_with(
        &self,
        collection: Collection,
        key: &str,
        expect: Revision,
        durability: Durability,
    ) -> Result<(), StoreError>;
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

/// An in-memory store: the test double beside the trait.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryState>,
}

/// The last revision handed out, and the entries.
type MemoryState = (Revision, BTreeMap<(Collection, String), Versioned>);

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn check(found: Option<&Versioned>, expect: Precondition, key: &str) -> Result<(), StoreError> {
    if expect.holds(found.map(|v| v.revision)) {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.to_string(),
        })
    }
}

impl Store for MemoryStore {
    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.lock().unwrap_or_else(|e| e.into_inner()).0)
    }

    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner.1.get(&(collection, key.to_string())).cloned())
    }

    fn list(&self, collection: Collection) -> Result<Vec<Versioned>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner
            .1
            .iter()
            .filter(|((c, _), _)| *c == collection)
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// Memory survives nothing: every durability is the same here.
    fn put_with(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Precondition,
        _: Durability,
    ) -> Result<Revision, StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (collection, key.to_string());
        check(inner.1.get(&k), expect, key)?;
        inner.0 += 1;
        let revision = inner.0;
        inner.1.insert(
            k,
            Versioned {
                key: key.to_string(),
                value: value.to_vec(),
                revision,
            },
        );
        Ok(revision)
    }

    fn delete_with(
        &self,
        collection: Collection,
        key: &str,
        expect: Revision,
        _: Durability,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (collection, key.to_string());
        check(inner.1.get(&k), Precondition::Revision(expect), key)?;
        inner.1.remove(&k);
        // A delete is a write: it uses up a revision, as on every store.
        inner.0 += 1;
        Ok(())
    }
}

/// The behaviour every [`Store`] must have. Each backend's tests call
/// [`conformance::run`] on a fresh, empty store.
pub mod conformance {
    use super::*;

    pub fn run(store: &dyn Store) {
        let c = Collection::Volumes;
        assert_eq!(
            store.revision().unwrap(),
            0,
            "a new store was never written"
        );
        assert!(store.get(c, "a").unwrap().is_none());
        assert!(store.list(c).unwrap().is_empty());

        // Create only if absent.
        let r1 = store.put(c, "a", b"one", Precondition::Absent).unwrap();
        assert!(matches!(
            store.put(c, "a", b"again", Precondition::Absent),
            Err(StoreError::Conflict { .. })
        ));
        let got = store.get(c, "a").unwrap().unwrap();
        assert_eq!((got.value.as_slice(), got.revision), (&b"one"[..], r1));

        // Compare-and-swap on the revision.
        let r2 = store
            .put(c, "a", b"two", Precondition::Revision(r1))
            .unwrap();
        assert!(r2 > r1);
        assert_eq!(store.revision().unwrap(), r2);
        assert!(matches!(
            store.put(c, "a", b"stale", Precondition::Revision(r1)),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.put(c, "missing", b"x", Precondition::Revision(r2)),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.get(c, "a").unwrap().unwrap().value, b"two");

        // List returns every key with its revision, in byte order of the
        // keys whatever the order of writing; so does list_revisions.
        let rc = store.put(c, "c", b"sea", Precondition::Absent).unwrap();
        let rb = store.put(c, "b", b"bee", Precondition::Absent).unwrap();
        let all = store.list(c).unwrap();
        let keys: Vec<&str> = all.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!((all[1].revision, all[2].revision), (rb, rc));
        let revisions = store.list_revisions(c).unwrap();
        let expected: Vec<(String, Revision)> =
            all.iter().map(|v| (v.key.clone(), v.revision)).collect();
        assert_eq!(revisions, expected);
        // Collections are apart.
        assert!(store.list(Collection::Snapshots).unwrap().is_empty());

        // A delete uses up a revision, and the key leaves every list.
        let before = store.revision().unwrap();
        store.delete(c, "c", rc).unwrap();
        assert!(store.revision().unwrap() > before);
        assert!(store
            .list_revisions(c)
            .unwrap()
            .iter()
            .all(|(k, _)| k != "c"));

        // Delete is a compare-and-swap too.
        assert!(matches!(
            store.delete(c, "a", r1),
            Err(StoreError::Conflict { .. })
        ));
        store.delete(c, "a", r2).unwrap();
        assert!(store.get(c, "a").unwrap().is_none());
        assert!(matches!(
            store.delete(c, "a", r2),
            Err(StoreError::Conflict { .. })
        ));

        // A re-created key never reuses a revision.
        let r3 = store.put(c, "a", b"three", Precondition::Absent).unwrap();
        assert!(r3 > rb);

        // A write asking less durability is the same write.
        let rp = store
            .put_with(
                c,
                "a",
                b"four",
                Precondition::Revision(r3),
                Durability::Process,
            )
            .unwrap();
        assert!(rp > r3);
        assert_eq!(store.get(c, "a").unwrap().unwrap().value, b"four");
        store.delete_with(c, "a", rp, Durability::Process).unwrap();
        assert!(store.get(c, "a").unwrap().is_none());

        // Binary values survive.
        let bytes: Vec<u8> = (0..=255).collect();
        let rc = store.put(c, "bin", &bytes, Precondition::Absent).unwrap();
        assert_eq!(store.get(c, "bin").unwrap().unwrap().value, bytes);
        store.delete(c, "bin", rc).unwrap();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_conforms() {
        super::conformance::run(&super::MemoryStore::new());
    }
}
