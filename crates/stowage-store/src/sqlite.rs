//! The embedded store: one SQLite database in WAL mode with
//! `synchronous=FULL`, so every commit is fsync'd before it returns. A
//! batch of writes that only ask [`Durability::Process`] commits with
//! `synchronous=NORMAL` instead: into the WAL without an fsync, so it
//! survives a crash of the daemon (the kernel holds the pages) but
//! perhaps not of the host. The WAL is sequential, so the next fsync'd
//! commit or checkpoint makes it durable along with its own.
//!
//! Writes are group-committed by whichever caller finds no commit in
//! flight: it becomes the leader and commits everything queued in one
//! transaction, while writes arriving meanwhile wait and go in the next
//! batch. Concurrent operations share one fsync; a lone caller commits on
//! its own thread with no hand-off. Reads use their own connections, which
//! WAL lets run beside the writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use stowage_core::store::{
    prefix_end, Action, Change, ChangeLog, Collection, Durability, LeaseId, LeaseTable, Listed, Op,
    Revision, Store, StoreError, Versioned, Watcher,
};
use tracing::debug;

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 256;
/// WAL pages after which a commit checkpoints.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 32;

/// Schema migrations; entry `i` takes the database from version `i` to
/// `i + 1`. Only ever append.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('revision', 0);
    CREATE TABLE entries (
        collection TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        revision   INTEGER NOT NULL,
        value      BLOB    NOT NULL,
        PRIMARY KEY (collection, key)
    ) WITHOUT ROWID;
",
    "
    -- Keys and revisions without the values: list_revisions scans this
    -- instead of every record.
    CREATE INDEX entries_revisions ON entries (collection, key, revision);
",
    "
    -- The lease a key is bound to: it is deleted when the lease ends.
    ALTER TABLE entries ADD COLUMN lease INTEGER;
    CREATE INDEX entries_leases ON entries (lease) WHERE lease IS NOT NULL;
",
];

/// One transaction, as callers queue it.
struct Write {
    ops: Vec<Op>,
    durability: Durability,
}

/// Writes waiting for a commit, and the outcomes of committed ones.
#[derive(Default)]
struct Queue {
    next_ticket: u64,
    waiting: Vec<(u64, Write)>,
    done: HashMap<u64, Result<Revision, StoreError>>,
    /// A leader is committing right now.
    committing: bool,
}

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<Queue>,
    committed: Condvar,
    /// Only the current leader uses it.
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    /// Leases live in memory: none outlives the process holding it.
    leases: Mutex<LeaseTable>,
    log: Arc<ChangeLog>,
}

/// The write connection, and the durability its `synchronous` setting
/// gives now.
struct Writer {
    conn: Connection,
    durability: Durability,
}

impl Writer {
    /// Sets `synchronous` for the next commit; a no-op when it is set.
    fn commit_as(&mut self, durability: Durability) -> rusqlite::Result<()> {
        if self.durability != durability {
            let level = match durability {
                Durability::Host => "FULL",
                Durability::Process => "NORMAL",
            };
            self.conn.pragma_update(None, "synchronous", level)?;
            self.durability = durability;
        }
        Ok(())
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    backend_ref(&e)
}

/// A SQLite failure as the store reports it: a full disk is its own kind,
/// which callers can act on (it is the host's space, not Stowage, that
/// failed).
fn backend_ref(e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}
/// Makes the database and its WAL files readable and writable by their
/// owner only, creating the database so if it is missing: the records
/// are the whole state of every volume. SQLite gives the WAL files the
/// database's mode.
fn restrict_to_owner(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |what: &Path, e: std::io::Error| {
        StoreError::Backend(format!(
            "cannot restrict {} to its owner: {e}",
            what.display()
        ))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&file, e)),
            _ => {}
        }
    }
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    Ok(conn)
}

/// Brings the schema to the newest version, refusing a database written by
/// a newer Stowage.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this stowage understands ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        debug!(version = i + 1, "migrated store schema");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        restrict_to_owner(path)?;
        let mut conn = open_connection(path)?;
        // Checkpoint often, so the WAL stays small and is overwritten in
        // place: appending to a growing WAL makes every commit's fsync
        // flush a size change too. Measured here: the median commit drops
        // from 0.34 ms to 0.18 ms.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(backend)?;
        migrate(&mut conn)?;
        let revision = end_earlier_leases(&mut conn)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                queue: Mutex::default(),
                committed: Condvar::new(),
                writer: Mutex::new(Writer {
                    conn,
                    durability: Durability::Host,
                }),
                readers: Mutex::new(Vec::new()),
                path: path.to_path_buf(),
                leases: Mutex::default(),
                log: ChangeLog::new(revision),
            }),
        })
    }
}

/// Deletes the keys bound to the leases of an earlier process, which
/// ended with it; returns the store's revision after.
fn end_earlier_leases(conn: &mut Connection) -> Result<Revision, StoreError> {
    let tx = conn.transaction().map_err(backend)?;
    let mut revision = current_revision(&tx).map_err(backend)?;
    let bound: i64 = tx
        .query_row(
            "SELECT count(*) FROM entries WHERE lease IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if bound > 0 {
        revision += 1;
        tx.execute("DELETE FROM entries WHERE lease IS NOT NULL", [])
            .map_err(backend)?;
        set_revision(&tx, revision).map_err(backend)?;
        debug!(
            keys = bound,
            "deleted keys bound to an earlier process's leases"
        );
    }
    tx.commit().map_err(backend)?;
    Ok(revision)
}

fn current_revision(c: &Connection) -> rusqlite::Result<Revision> {
    c.prepare_cached("SELECT value FROM meta WHERE key = 'revision'")?
        .query_row([], |r| r.get(0))
}

fn set_revision(c: &Connection, revision: Revision) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'revision'",
        params![revision],
    )
    .map(drop)
}

impl Inner {
    /// Queues `write` and returns once it is committed, leading the commit
    /// of everything queued if no one else is.
    fn write(&self, write: Write) -> Result<Revision, StoreError> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.waiting.push((ticket, write));
        loop {
            if let Some(result) = q.done.remove(&ticket) {
                return result;
            }
            if q.committing {
                q = self.committed.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            q.committing = true;
            let n = q.waiting.len().min(MAX_BATCH);
            let batch: Vec<(u64, Write)> = q.waiting.drain(..n).collect();
            drop(q);
            let results = {
                let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                let ended = (self.leases.lock().unwrap_or_else(|e| e.into_inner()))
                    .take_ended(Instant::now());
                let committed = commit_batch(&mut writer, &ended, &batch, &self.leases);
                if committed.is_err() {
                    // Their keys are still there: the next commit tries again.
                    (self.leases.lock().unwrap_or_else(|e| e.into_inner())).end_again(ended);
                }
                // Appended under the writer's lock: the log stays in
                // revision order.
                committed.map(|(results, changes)| {
                    self.log.append(changes);
                    results
                })
            };
            q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.committing = false;
            match results {
                Ok(results) => {
                    for ((t, _), r) in batch.into_iter().zip(results) {
                        q.done.insert(t, r);
                    }
                }
                Err(e) => {
                    for (t, _) in batch {
                        q.done.insert(t, Err(backend_ref(&e)));
                    }
                }
            }
            self.committed.notify_all();
        }
    }

    /// Deletes the keys of ended leases now, if there are any.
    fn sweep(&self) -> Result<(), StoreError> {
        let ended =
            (self.leases.lock().unwrap_or_else(|e| e.into_inner())).has_ended(Instant::now());
        if ended {
            self.write(Write {
                ops: Vec::new(),
                durability: Durability::Process,
            })?;
        }
        Ok(())
    }

    /// Runs `f` on a pooled read connection, once the keys of ended
    /// leases are gone.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.sweep()?;
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn).map_err(backend);
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        result
    }

    /// [`Self::read`] inside one read transaction: every statement sees
    /// the same revision.
    fn read_at_one_revision<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<(T, Revision), StoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let revision = current_revision(&tx)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok((out, revision))
        })
    }
}

type Committed = (Vec<Result<Revision, StoreError>>, Vec<(Collection, Change)>);

/// Applies a batch in one SQL transaction, as durable as its most
/// demanding write asks, after deleting the keys of the `ended` leases. A
/// failed precondition fails only its own write; a database error fails
/// the whole batch, which is rolled back.
fn commit_batch(
    writer: &mut Writer,
    ended: &[LeaseId],
    batch: &[(u64, Write)],
    leases: &Mutex<LeaseTable>,
) -> rusqlite::Result<Committed> {
    let durability = if batch.iter().any(|(_, w)| w.durability == Durability::Host) {
        Durability::Host
    } else {
        Durability::Process
    };
    writer.commit_as(durability)?;
    let tx = writer
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut revision = current_revision(&tx)?;
    let start = revision;
    let mut changes = Vec::new();
    let mut swept = false;
    for lease in ended {
        let mut stmt =
            tx.prepare_cached("DELETE FROM entries WHERE lease = ?1 RETURNING collection, key")?;
        let gone: Vec<(String, String)> = stmt
            .query_map(params![lease], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (collection, key) in gone {
            if !swept {
                revision += 1;
                swept = true;
            }
            if let Some(c) = Collection::from_name(&collection) {
                changes.push((c, Change::Delete { key, revision }));
            }
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    for (_, write) in batch {
        match apply(&tx, &write.ops, revision + 1, leases)? {
            Ok(mut applied) => {
                if !applied.is_empty() {
                    revision += 1;
                }
                changes.append(&mut applied);
                results.push(Ok(revision));
            }
            Err(refused) => results.push(Err(refused)),
        }
    }
    if revision != start {
        set_revision(&tx, revision)?;
    }
    tx.commit()?;
    Ok((results, changes))
}

/// Applies one transaction at `revision` if every precondition holds;
/// returns its changes (none for a transaction of checks alone).
fn apply(
    tx: &Connection,
    ops: &[Op],
    revision: Revision,
    leases: &Mutex<LeaseTable>,
) -> rusqlite::Result<Result<Vec<(Collection, Change)>, StoreError>> {
    for op in ops {
        let current: Option<Revision> = tx
            .prepare_cached("SELECT revision FROM entries WHERE collection = ?1 AND key = ?2")?
            .query_row(params![op.collection.as_str(), op.key], |r| r.get(0))
            .optional()?;
        if !op.expect.holds(current) {
            return Ok(Err(StoreError::Conflict {
                key: op.key.clone(),
            }));
        }
        if let Action::Put {
            lease: Some(lease), ..
        } = op.action
        {
            let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
            if !leases.alive(lease, Instant::now()) {
                return Ok(Err(StoreError::LeaseExpired(lease)));
            }
        }
    }
    let mut changes = Vec::new();
    for op in ops {
        let (collection, key) = (op.collection.as_str(), op.key.as_str());
        match &op.action {
            Action::Put { value, lease } => {
                tx.prepare_cached(
                    "INSERT INTO entries (collection, key, revision, value, lease)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (collection, key) DO UPDATE
                     SET revision = excluded.revision, value = excluded.value,
                         lease = excluded.lease",
                )?
                .execute(params![collection, key, revision, value, lease])?;
                let v = Versioned {
                    key: op.key.clone(),
                    value: value.clone(),
                    revision,
                };
                changes.push((op.collection, Change::Put(v)));
            }
            Action::Delete => {
                tx.prepare_cached("DELETE FROM entries WHERE collection = ?1 AND key = ?2")?
                    .execute(params![collection, key])?;
                let key = op.key.clone();
                changes.push((op.collection, Change::Delete { key, revision }));
            }
            Action::Check => {}
        }
    }
    Ok(Ok(changes))
}

impl Store for SqliteStore {
    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.read(|c| {
            c.prepare_cached(
                "SELECT revision, value FROM entries WHERE collection = ?1 AND key = ?2",
            )?
            .query_row(params![collection.as_str(), key], |r| {
                Ok(Versioned {
                    key: key.to_string(),
                    revision: r.get(0)?,
                    value: r.get(1)?,
                })
            })
            .optional()
        })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.read(current_revision)
    }

    fn list_revisions(
        &self,
        collection: Collection,
    ) -> Result<Listed<(String, Revision)>, StoreError> {
        let (items, revision) = self.inner.read_at_one_revision(|c| {
            c.prepare_cached(
                "SELECT key, revision FROM entries WHERE collection = ?1 ORDER BY key",
            )?
            .query_map(params![collection.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })?;
        Ok(Listed { items, revision })
    }

    fn list_prefix(
        &self,
        collection: Collection,
        prefix: &str,
    ) -> Result<Listed<Versioned>, StoreError> {
        // A range, not LIKE: the key index serves it, and no character of
        // the prefix is a pattern.
        let (items, revision) = self.inner.read_at_one_revision(|c| {
            c.prepare_cached(
                "SELECT key, revision, value FROM entries WHERE collection = ?1 \
                 AND key >= ?2 AND (?3 IS NULL OR key < ?3) ORDER BY key",
            )?
            .query_map(
                params![collection.as_str(), prefix, prefix_end(prefix)],
                |r| {
                    Ok(Versioned {
                        key: r.get(0)?,
                        revision: r.get(1)?,
                        value: r.get(2)?,
                    })
                },
            )?
            .collect()
        })?;
        Ok(Listed { items, revision })
    }

    fn commit(&self, ops: Vec<Op>, durability: Durability) -> Result<Revision, StoreError> {
        self.inner.write(Write { ops, durability })
    }

    fn watch(
        &self,
        collection: Collection,
        after: Revision,
    ) -> Result<Box<dyn Watcher>, StoreError> {
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        self.inner.log.watch(
            collection,
            after,
            Box::new(move || {
                let inner = inner.upgrade()?;
                if let Err(e) = inner.sweep() {
                    debug!(error = %e, "ending leases failed; the next write retries");
                }
                let leases = inner.leases.lock().unwrap_or_else(|e| e.into_inner());
                leases.next_deadline()
            }),
        )
    }

    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.log.compact(revision);
        Ok(())
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
        Ok(leases.grant(ttl, Instant::now()))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.keep_alive(lease, Instant::now())
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        (self.inner.leases.lock().unwrap_or_else(|e| e.into_inner())).revoke(lease);
        self.inner.sweep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_core::store::Precondition;

    #[test]
    fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        stowage_core::store::conformance::run(&store);
    }

    #[test]
    fn data_and_revisions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let r = {
            let store = SqliteStore::open(&path).unwrap();
            let r = store
                .put(Collection::Volumes, "a", b"x", Precondition::Absent)
                .unwrap();
            store.delete(Collection::Volumes, "a", r).unwrap();
            store
                .put(Collection::Volumes, "b", b"y", Precondition::Absent)
                .unwrap()
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store
                .get(Collection::Volumes, "b")
                .unwrap()
                .unwrap()
                .revision,
            r
        );
        let next = store
            .put(Collection::Volumes, "a", b"z", Precondition::Absent)
            .unwrap();
        assert!(next > r, "revisions never repeat across restarts");
    }

    #[test]
    fn process_durable_writes_outlive_a_writer_that_never_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let r = store
            .put(Collection::Volumes, "a", b"host", Precondition::Absent)
            .unwrap();
        store
            .put_with(
                Collection::Volumes,
                "a",
                b"process",
                Precondition::Revision(r),
                Durability::Process,
            )
            .unwrap();
        // As after kill -9: no close, no checkpoint; only the WAL has it.
        std::mem::forget(store);
        let reopened = SqliteStore::open(&path).unwrap();
        let got = reopened.get(Collection::Volumes, "a").unwrap().unwrap();
        assert_eq!(got.value, b"process");
    }

    #[test]
    fn each_commit_syncs_as_its_batch_asks() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let synchronous = || -> i64 {
            let writer = store.inner.writer.lock().unwrap();
            writer
                .conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        let (normal, full) = (1, 2);
        assert_eq!(synchronous(), full);
        let mut expect = Precondition::Absent;
        for (durability, level) in [
            (Durability::Process, normal),
            (Durability::Process, normal),
            (Durability::Host, full),
        ] {
            let r = store
                .put_with(Collection::Volumes, "a", b"v", expect, durability)
                .unwrap();
            expect = Precondition::Revision(r);
            assert_eq!(synchronous(), level, "after a {durability:?} write");
        }
        let Precondition::Revision(r) = expect else {
            unreachable!()
        };
        store
            .delete_with(Collection::Volumes, "a", r, Durability::Process)
            .unwrap();
        assert_eq!(synchronous(), normal, "after a Process delete");
    }

    #[test]
    fn keys_bound_to_a_lease_end_with_the_process_that_held_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let lease = store.grant_lease(Duration::from_secs(600)).unwrap();
        let bound = Op::put(Collection::Volumes, "bound", "x", Precondition::Absent);
        store
            .commit(vec![bound.with_lease(lease)], Durability::Host)
            .unwrap();
        let r = store
            .put(Collection::Volumes, "kept", b"y", Precondition::Absent)
            .unwrap();
        // As after kill -9: the lease's holder is gone.
        std::mem::forget(store);
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.get(Collection::Volumes, "bound").unwrap().is_none());
        assert!(store.get(Collection::Volumes, "kept").unwrap().is_some());
        assert!(store.revision().unwrap() > r, "the deletion is a write");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer than this stowage"), "{err}");
    }

    #[test]
    fn concurrent_writers_are_grouped_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let key = format!("k{t}-{i}");
                        store
                            .put(Collection::Volumes, &key, b"v", Precondition::Absent)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.list(Collection::Volumes).unwrap().items.len(), 400);
    }
}
