//! Reads that may be stale. A store that has lost its quorum (etcd
//! without a leader) cannot answer a read that is sure to be current; a
//! request that only reads may allow it to answer from its own copy
//! instead, and learns whether it did, to tell its caller. Writes never
//! allow it: what they decide must be current.
//!
//! The [`Store`](super::Store) trait is synchronous and a request runs on
//! one thread, so the permission and the answer live in that thread.

use std::cell::Cell;

thread_local! {
    /// Whether the running request allows stale reads, and whether the
    /// store served one.
    static STATE: Cell<(bool, bool)> = const { Cell::new((false, false)) };
}

/// Runs `f` allowing stale reads; returns what it returned and whether
/// any of its reads was answered from a copy that may be stale.
pub fn allowing<T>(f: impl FnOnce() -> T) -> (T, bool) {
    let before = STATE.replace((true, false));
    let out = f();
    let (_, served) = STATE.replace(before);
    (out, served)
}

/// Whether the running request allows stale reads.
pub fn allowed() -> bool {
    STATE.get().0
}

/// Whether the running request has already been answered stale: its
/// later reads need not wait for the quorum again.
pub fn was_served() -> bool {
    STATE.get().1
}

/// Notes that a read was answered from a copy that may be stale.
pub fn served() {
    STATE.set((true, true));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_read_is_noted_only_where_allowed() {
        assert!(!allowed());
        let ((), stale) = allowing(|| {
            assert!(allowed());
            assert!(!was_served());
            served();
            assert!(was_served());
        });
        assert!(stale);
        let ((), stale) = allowing(|| ());
        assert!(!stale);
        assert!(!allowed(), "the permission ends with the request");
    }
}
