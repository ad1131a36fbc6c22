//! What the embedded stores share to have etcd's shape: a log of recent
//! changes that watches read from, and a table of leases that end by
//! time. etcd has both built in.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Change, Collection, LeaseId, Revision, StoreError, Watcher};

/// How many changes the log keeps for watches that fall behind; older
/// ones are compacted, as etcd compacts its history.
const LOG_CAPACITY: usize = 16_384;

/// The recent changes of a store, in revision order. A watch that falls
/// further behind than the log reaches gets `Compacted`.
pub struct ChangeLog {
    state: Mutex<LogState>,
    appended: Condvar,
}

struct LogState {
    changes: VecDeque<(Collection, Change)>,
    /// Every change after this revision is in `changes`.
    from: Revision,
    capacity: usize,
}

/// Ends the leases that are due and says when the next one is.
pub type Sweep = Box<dyn Fn() -> Option<Instant> + Send>;

impl ChangeLog {
    /// A log holding every change after `from`, the store's revision now.
    pub fn new(from: Revision) -> Arc<Self> {
        Self::with_capacity(from, LOG_CAPACITY)
    }

    pub fn with_capacity(from: Revision, capacity: usize) -> Arc<Self> {
        Arc::new(ChangeLog {
            state: Mutex::new(LogState {
                changes: VecDeque::new(),
                from,
                capacity: capacity.max(1),
            }),
            appended: Condvar::new(),
        })
    }

    /// Appends the changes of committed writes, in revision order.
    pub fn append(&self, changes: Vec<(Collection, Change)>) {
        if changes.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.changes.extend(changes);
        while state.changes.len() > state.capacity {
            // A transaction's changes share a revision: they go together.
            let Some((_, first)) = state.changes.pop_front() else {
                break;
            };
            state.from = first.revision();
            while state
                .changes
                .front()
                .is_some_and(|(_, c)| c.revision() == state.from)
            {
                state.changes.pop_front();
            }
        }
        drop(state);
        self.appended.notify_all();
    }

    /// Forgets the changes before `revision`, as etcd's compaction does.
    pub fn compact(&self, revision: Revision) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state
            .changes
            .front()
            .is_some_and(|(_, c)| c.revision() < revision)
        {
            state.changes.pop_front();
        }
        state.from = state.from.max(revision.saturating_sub(1));
    }

    /// A watcher of `collection` after revision `after`. `sweep` is called
    /// while it waits, so that leases end on time with no other caller.
    pub fn watch(
        self: &Arc<Self>,
        collection: Collection,
        after: Revision,
        sweep: Sweep,
    ) -> Result<Box<dyn Watcher>, StoreError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        compacted(&state, after)?;
        drop(state);
        Ok(Box::new(LogWatcher {
            log: self.clone(),
            collection,
            after,
            sweep,
        }))
    }
}

fn compacted(state: &LogState, after: Revision) -> Result<(), StoreError> {
    if after < state.from {
        // Named as etcd names it: the oldest revision a watch can start at.
        return Err(StoreError::Compacted {
            requested: after,
            compacted: state.from + 1,
        });
    }
    Ok(())
}

struct LogWatcher {
    log: Arc<ChangeLog>,
    collection: Collection,
    /// Every change up to this revision has been seen.
    after: Revision,
    sweep: Sweep,
}

impl Watcher for LogWatcher {
    fn next(&mut self, timeout: Duration) -> Result<Vec<Change>, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let next_due = (self.sweep)();
            let state = self.log.state.lock().unwrap_or_else(|e| e.into_inner());
            compacted(&state, self.after)?;
            let start = state
                .changes
                .partition_point(|(_, c)| c.revision() <= self.after);
            if start < state.changes.len() {
                let found: Vec<Change> = (state.changes.range(start..))
                    .filter(|(c, _)| *c == self.collection)
                    .map(|(_, change)| change.clone())
                    .collect();
                self.after = state
                    .changes
                    .back()
                    .map_or(self.after, |(_, c)| c.revision());
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            let wait = until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            drop(self.log.appended.wait_timeout(state, wait));
        }
    }
}

/// Leases that end by time: what the embedded stores keep in memory. A
/// lease never outlives the process that granted it, so a store reopened
/// after a restart deletes every key bound to an earlier one.
#[derive(Default)]
pub struct LeaseTable {
    last: LeaseId,
    leases: HashMap<LeaseId, Lease>,
    /// Ended leases whose keys are still to be deleted.
    ended: Vec<LeaseId>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

impl LeaseTable {
    pub fn grant(&mut self, ttl: Duration, now: Instant) -> LeaseId {
        self.last += 1;
        self.leases.insert(
            self.last,
            Lease {
                ttl,
                deadline: now + ttl,
            },
        );
        self.last
    }

    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration, StoreError> {
        self.end_due(now);
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(StoreError::LeaseExpired(id))?;
        lease.deadline = now + lease.ttl;
        Ok(lease.ttl)
    }

    pub fn revoke(&mut self, id: LeaseId) {
        if self.leases.remove(&id).is_some() {
            self.ended.push(id);
        }
    }

    /// Whether a key may be bound to `id` now.
    pub fn alive(&mut self, id: LeaseId, now: Instant) -> bool {
        self.end_due(now);
        self.leases.contains_key(&id)
    }

    /// The leases that ended since the last call, for their keys to go.
    pub fn take_ended(&mut self, now: Instant) -> Vec<LeaseId> {
        self.end_due(now);
        std::mem::take(&mut self.ended)
    }

    /// Leases taken by [`Self::take_ended`] whose keys could not be
    /// deleted: the next call returns them again.
    pub fn end_again(&mut self, ids: Vec<LeaseId>) {
        self.ended.extend(ids);
    }

    /// Whether some lease has ended and its keys are still there.
    pub fn has_ended(&self, now: Instant) -> bool {
        !self.ended.is_empty() || self.leases.values().any(|l| l.deadline <= now)
    }

    /// When the next lease is due to end.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }

    fn end_due(&mut self, now: Instant) {
        let due: Vec<LeaseId> = (self.leases.iter())
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.leases.remove(&id);
            self.ended.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Versioned;

    fn put(key: &str, revision: Revision) -> (Collection, Change) {
        let v = Versioned {
            key: key.into(),
            value: vec![],
            revision,
        };
        (Collection::Volumes, Change::Put(v))
    }

    #[test]
    fn a_full_log_compacts_whole_transactions() {
        let log = ChangeLog::with_capacity(0, 2);
        log.append(vec![put("a", 1), put("b", 1)]);
        log.append(vec![put("c", 2)]);
        let none: fn() -> Option<Instant> = || None;
        assert!(matches!(
            log.watch(Collection::Volumes, 0, Box::new(none)),
            Err(StoreError::Compacted { compacted: 2, .. })
        ));
        let mut w = log.watch(Collection::Volumes, 1, Box::new(none)).unwrap();
        let got = w.next(Duration::ZERO).unwrap();
        assert_eq!(got.iter().map(Change::key).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn leases_end_at_their_deadline_and_when_revoked() {
        let mut t = LeaseTable::default();
        let now = Instant::now();
        let a = t.grant(Duration::from_secs(1), now);
        let b = t.grant(Duration::from_secs(10), now);
        assert!(t.alive(a, now));
        assert_eq!(
            t.keep_alive(a, now + Duration::from_millis(900)).unwrap(),
            Duration::from_secs(1)
        );
        assert!(t.alive(a, now + Duration::from_millis(1800)));
        assert_eq!(t.take_ended(now + Duration::from_secs(2)), vec![a]);
        assert!(matches!(
            t.keep_alive(a, now),
            Err(StoreError::LeaseExpired(_))
        ));
        t.revoke(b);
        assert_eq!(t.take_ended(now), vec![b]);
        assert!(t.next_deadline().is_none());
    }
}
