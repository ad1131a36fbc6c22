//! Per-key mutual exclusion: operations on one volume run one at a time,
//! operations on different volumes run in parallel.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

/// The set of keys currently held, and a condition to wait on. Waiters of
/// all keys share one condvar: contention is a handful of threads, so the
/// spurious wake-ups cost less than a map of per-key mutexes.
#[derive(Default)]
pub struct KeyedLocks {
    held: Mutex<HashSet<String>>,
    released: Condvar,
}

/// Holds the lock of one key until dropped.
pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
}

impl KeyedLocks {
    /// Takes the lock of `key`, or returns `None` at once if it is held
    /// (for callers that answer "busy" rather than wait).
    pub fn try_lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !held.insert(key.to_string()) {
            return None;
        }
        Some(KeyGuard {
            locks: self,
            key: key.to_string(),
        })
    }

    pub(crate) fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.contains(key) {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        held.insert(key.to_string());
        KeyGuard {
            locks: self,
            key: key.to_string(),
        }
    }

    /// Locks several keys, always in sorted order, so that two callers
    /// asking for the same keys in different orders cannot deadlock.
    pub(crate) fn lock_all(&self, mut keys: Vec<String>) -> Vec<KeyGuard<'_>> {
        keys.sort();
        keys.dedup();
        keys.iter().map(|k| self.lock(k)).collect()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn one_holder_per_key() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = locks.lock("k");
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Different keys do not block each other.
        let _a = locks.lock("a");
        let _b = locks.lock("b");
    }
}
