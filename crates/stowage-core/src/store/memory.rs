//! An in-memory store: the test double beside the trait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    Action, Change, ChangeLog, Collection, Durability, LeaseId, LeaseTable, Listed, Op, Revision,
    Store, StoreError, Versioned, Watcher,
};

#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
    log: Arc<ChangeLog>,
}

#[derive(Default)]
struct MemoryState {
    revision: Revision,
    entries: BTreeMap<(Collection, String), (Versioned, Option<LeaseId>)>,
    leases: LeaseTable,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Default::default(),
            log: ChangeLog::new(0),
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        sweep(&mut state, &self.log);
        state
    }
}

/// Deletes the keys of ended leases, as one write.
fn sweep(state: &mut MemoryState, log: &ChangeLog) {
    let ended = state.leases.take_ended(Instant::now());
    if ended.is_empty() {
        return;
    }
    let gone: Vec<(Collection, String)> = (state.entries.iter())
        .filter(|(_, (_, lease))| lease.is_some_and(|l| ended.contains(&l)))
        .map(|(k, _)| k.clone())
        .collect();
    if gone.is_empty() {
        return;
    }
    state.revision += 1;
    let revision = state.revision;
    let mut changes = Vec::new();
    for k in gone {
        state.entries.remove(&k);
        changes.push((k.0, Change::Delete { key: k.1, revision }));
    }
    log.append(changes);
}

impl Store for MemoryStore {
    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.lock().revision)
    }

    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError> {
        let state = self.lock();
        Ok(state
            .entries
            .get(&(collection, key.to_string()))
            .map(|(v, _)| v.clone()))
    }

    fn list_prefix(
        &self,
        collection: Collection,
        prefix: &str,
    ) -> Result<Listed<Versioned>, StoreError> {
        let state = self.lock();
        Ok(Listed {
            items: (state.entries.iter())
                .filter(|((c, k), _)| *c == collection && k.starts_with(prefix))
                .map(|(_, (v, _))| v.clone())
                .collect(),
            revision: state.revision,
        })
    }

    /// Memory survives nothing: every durability is the same here.
    fn commit(&self, ops: Vec<Op>, _: Durability) -> Result<Revision, StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        for op in &ops {
            let current = state
                .entries
                .get(&(op.collection, op.key.clone()))
                .map(|(v, _)| v.revision);
            if !op.expect.holds(current) {
                return Err(StoreError::Conflict {
                    key: op.key.clone(),
                });
            }
            if let Action::Put {
                lease: Some(lease), ..
            } = op.action
            {
                if !state.leases.alive(lease, now) {
                    return Err(StoreError::LeaseExpired(lease));
                }
            }
        }
        if ops.iter().all(|op| op.action == Action::Check) {
            return Ok(state.revision);
        }
        state.revision += 1;
        let revision = state.revision;
        let mut changes = Vec::new();
        for op in ops {
            let k = (op.collection, op.key);
            match op.action {
                Action::Put { value, lease } => {
                    let v = Versioned {
                        key: k.1.clone(),
                        value,
                        revision,
                    };
                    changes.push((k.0, Change::Put(v.clone())));
                    state.entries.insert(k, (v, lease));
                }
                Action::Delete => {
                    state.entries.remove(&k);
                    changes.push((k.0, Change::Delete { key: k.1, revision }));
                }
                Action::Check => {}
            }
        }
        self.log.append(changes);
        Ok(revision)
    }

    fn watch(
        &self,
        collection: Collection,
        after: Revision,
    ) -> Result<Box<dyn Watcher>, StoreError> {
        let (state, log) = (Arc::downgrade(&self.state), self.log.clone());
        self.log.watch(
            collection,
            after,
            Box::new(move || {
                let state = state.upgrade()?;
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                sweep(&mut state, &log);
                state.leases.next_deadline()
            }),
        )
    }

    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.log.compact(revision);
        Ok(())
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        Ok(self.lock().leases.grant(ttl, Instant::now()))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.lock().leases.keep_alive(lease, Instant::now())
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.leases.revoke(lease);
        sweep(&mut state, &self.log);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_conforms() {
        super::super::conformance::run(&super::MemoryStore::new());
    }
}
