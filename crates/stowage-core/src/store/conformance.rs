//! The behaviour every [`Store`] must have. Each backend's tests call
//! [`run`] on a fresh, empty store.

use std::time::{Duration, Instant};

use super::*;

pub fn run(store: &dyn Store) {
    compare_and_swap(store);
    transactions(store);
    lists_and_pages(store);
    watches(store);
    compaction(store);
    leases(store);
}

fn conflict(r: Result<Revision, StoreError>) -> String {
    match r {
        Err(StoreError::Conflict { key }) => key,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn compare_and_swap(store: &dyn Store) {
    let c = Collection::Volumes;
    let start = store.revision().unwrap();
    assert!(store.get(c, "a").unwrap().is_none());
    assert!(store.list(c).unwrap().items.is_empty(), "a fresh store");

    // Create only if absent.
    let r1 = store.put(c, "a", b"one", Precondition::Absent).unwrap();
    assert!(r1 > start);
    conflict(store.put(c, "a", b"again", Precondition::Absent));
    let got = store.get(c, "a").unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.revision), (&b"one"[..], r1));

    // Compare-and-swap on the revision.
    let r2 = store
        .put(c, "a", b"two", Precondition::Revision(r1))
        .unwrap();
    assert!(r2 > r1);
    assert_eq!(store.revision().unwrap(), r2);
    conflict(store.put(c, "a", b"stale", Precondition::Revision(r1)));
    conflict(store.put(c, "missing", b"x", Precondition::Revision(r2)));
    assert_eq!(store.get(c, "a").unwrap().unwrap().value, b"two");

    // Delete is a compare-and-swap too, and uses up a revision.
    conflict(
        store
            .commit(vec![Op::delete(c, "a", r1)], Durability::Host)
            .map(|_| 0),
    );
    store.delete(c, "a", r2).unwrap();
    assert!(store.revision().unwrap() > r2);
    assert!(store.get(c, "a").unwrap().is_none());
    assert!(store.delete(c, "a", r2).is_err());

    // A re-created key never reuses a revision.
    let r3 = store.put(c, "a", b"three", Precondition::Absent).unwrap();
    assert!(r3 > r2 + 1);

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

    // Anything goes with `Any`.
    let ra = store.put(c, "any", b"1", Precondition::Any).unwrap();
    store.put(c, "any", b"2", Precondition::Any).unwrap();
    assert!(store.get(c, "any").unwrap().unwrap().revision > ra);

    // Binary values survive.
    let bytes: Vec<u8> = (0..=255).collect();
    store.put(c, "bin", &bytes, Precondition::Any).unwrap();
    assert_eq!(store.get(c, "bin").unwrap().unwrap().value, bytes);
    clear(store);
}

/// Deletes every key the suite wrote.
fn clear(store: &dyn Store) {
    for c in Collection::ALL {
        for v in store.list(c).unwrap().items {
            store.delete(c, &v.key, v.revision).unwrap();
        }
    }
}

fn transactions(store: &dyn Store) {
    let (v, s) = (Collection::Volumes, Collection::Snapshots);
    // Every key of a transaction is written at one revision.
    let r = store
        .commit(
            vec![
                Op::put(v, "t1", "a", Precondition::Absent),
                Op::put(s, "t1", "b", Precondition::Absent),
            ],
            Durability::Host,
        )
        .unwrap();
    assert_eq!(store.get(v, "t1").unwrap().unwrap().revision, r);
    assert_eq!(store.get(s, "t1").unwrap().unwrap().revision, r);

    // One failed precondition writes nothing, and is named.
    let key = conflict(store.commit(
        vec![
            Op::put(v, "t1", "changed", Precondition::Revision(r)),
            Op::put(v, "t2", "new", Precondition::Absent),
            Op::put(s, "t1", "again", Precondition::Absent),
        ],
        Durability::Host,
    ));
    assert_eq!(key, "t1");
    assert_eq!(store.get(v, "t1").unwrap().unwrap().value, b"a");
    assert!(store.get(v, "t2").unwrap().is_none());
    assert_eq!(
        store.revision().unwrap(),
        r,
        "a failed commit writes nothing"
    );

    // A check guards a write to another key.
    conflict(store.commit(
        vec![
            Op::check(s, "t1", Precondition::Absent),
            Op::put(v, "t2", "new", Precondition::Absent),
        ],
        Durability::Host,
    ));
    let r2 = store
        .commit(
            vec![
                Op::check(s, "t1", Precondition::Revision(r)),
                Op::delete(v, "t1", r),
                Op::put(v, "t2", "new", Precondition::Absent),
            ],
            Durability::Host,
        )
        .unwrap();
    assert!(r2 > r);
    assert!(store.get(v, "t1").unwrap().is_none());
    assert_eq!(store.get(v, "t2").unwrap().unwrap().revision, r2);
    assert_eq!(
        store.get(s, "t1").unwrap().unwrap().revision,
        r,
        "checked only"
    );
    clear(store);
}

fn lists_and_pages(store: &dyn Store) {
    let c = Collection::Volumes;
    // Keys come in byte order whatever the order of writing, read at one
    // revision; so do their revisions alone.
    let rc = store.put(c, "c", b"sea", Precondition::Absent).unwrap();
    let rb = store.put(c, "b", b"bee", Precondition::Absent).unwrap();
    store.put(c, "a", b"ay", Precondition::Absent).unwrap();
    let all = store.list(c).unwrap();
    let keys: Vec<&str> = all.items.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!((all.items[1].revision, all.items[2].revision), (rb, rc));
    assert_eq!(all.revision, store.revision().unwrap());
    let revisions = store.list_revisions(c).unwrap();
    let expected: Vec<(String, Revision)> = (all.items.iter())
        .map(|v| (v.key.clone(), v.revision))
        .collect();
    assert_eq!(revisions.items, expected);
    assert_eq!(revisions.revision, all.revision);
    // Collections are apart.
    assert!(store.list(Collection::Snapshots).unwrap().items.is_empty());
    clear(store);

    // A prefix lists its own keys only: not a key that merely sorts near
    // it, nor one of another collection.
    for key in ["v/a", "v/b", "v", "v0", "w/a", "u/z", "v/é"] {
        store.put(c, key, b"x", Precondition::Absent).unwrap();
    }
    store
        .put(Collection::Snapshots, "v/c", b"x", Precondition::Absent)
        .unwrap();
    let under = store.list_prefix(c, "v/").unwrap();
    let keys: Vec<&str> = under.items.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["v/a", "v/b", "v/é"]);
    assert_eq!(under.revision, store.revision().unwrap());
    assert!(store.list_prefix(c, "x").unwrap().items.is_empty());
    assert_eq!(store.list_prefix(c, "").unwrap().items.len(), 7);

    // Several reads at once answer each as alone, in the order asked.
    let s = Collection::Snapshots;
    let reads = [
        Read::Key(c, "v"),
        Read::Prefix(c, "v/"),
        Read::Key(c, "v/z"),
        Read::Key(s, "v/c"),
        Read::Prefix(s, "w"),
    ];
    let answers = store.read(&reads).unwrap();
    let keys: Vec<Vec<&str>> = (answers.iter())
        .map(|a| a.iter().map(|v| v.key.as_str()).collect())
        .collect();
    let expected: [&[&str]; 5] = [&["v"], &["v/a", "v/b", "v/é"], &[], &["v/c"], &[]];
    assert_eq!(keys, expected);
    assert_eq!(answers[0][0], store.get(c, "v").unwrap().unwrap());
    assert_eq!(answers[3][0], store.get(s, "v/c").unwrap().unwrap());
    assert!(store.read(&[]).unwrap().is_empty());
    clear(store);

    // More than one request can carry (etcd takes 1.5 MiB in a request,
    // and a gRPC client 4 MiB in an answer) comes back whole.
    let value = vec![b'x'; 64 * 1024];
    for i in 0..100 {
        let key = format!("page-{i:03}");
        (store.put_with(c, &key, &value, Precondition::Absent, Durability::Process)).unwrap();
    }
    let listed = store.list(c).unwrap();
    assert_eq!(listed.items.len(), 100);
    assert!(listed.items.iter().all(|v| v.value == value));
    assert!(listed.items.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(store.list_revisions(c).unwrap().items.len(), 100);
    clear(store);
}

/// Reads changes until `n` came, or fails after a few seconds.
fn changes(w: &mut dyn Watcher, n: usize) -> Vec<Change> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {got:?} of {n} changes came"
        );
        got.extend(w.next(Duration::from_millis(200)).unwrap());
    }
    got
}

fn watches(store: &dyn Store) {
    let (v, s) = (Collection::Volumes, Collection::Snapshots);
    let start = store.list(v).unwrap().revision;
    let mut early = store.watch(v, start).unwrap();
    assert!(early.next(Duration::from_millis(50)).unwrap().is_empty());

    let r1 = store.put(v, "w1", b"one", Precondition::Absent).unwrap();
    store
        .put(s, "w1", b"not watched", Precondition::Absent)
        .unwrap();
    let r2 = store
        .put(v, "w1", b"two", Precondition::Revision(r1))
        .unwrap();
    store.delete(v, "w1", r2).unwrap();
    let seen = changes(early.as_mut(), 3);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        matches!(&seen[0], Change::Put(x) if x.key == "w1" && x.value == b"one" && x.revision == r1)
    );
    assert!(matches!(&seen[1], Change::Put(x) if x.value == b"two" && x.revision == r2));
    assert!(matches!(&seen[2], Change::Delete { key, revision } if key == "w1" && *revision > r2));
    assert!(early.next(Duration::from_millis(50)).unwrap().is_empty());

    // A watch from a past revision replays what came after it.
    let mut late = store.watch(v, r1).unwrap();
    let replayed = changes(late.as_mut(), 2);
    assert_eq!(replayed[0].revision(), r2);
    assert_eq!(replayed[1], seen[2]);

    // The changes of a transaction come together, at its revision.
    let r = store
        .commit(
            vec![
                Op::put(v, "w2", "a", Precondition::Absent),
                Op::put(v, "w3", "b", Precondition::Absent),
            ],
            Durability::Host,
        )
        .unwrap();
    let both = changes(late.as_mut(), 2);
    assert!(both.iter().all(|c| c.revision() == r));
    clear(store);
}

fn compaction(store: &dyn Store) {
    let c = Collection::Volumes;
    let r1 = store.put(c, "k1", b"1", Precondition::Absent).unwrap();
    store.put(c, "k2", b"2", Precondition::Absent).unwrap();
    let r3 = store.put(c, "k3", b"3", Precondition::Absent).unwrap();
    store.compact(r3).unwrap();
    match store
        .watch(c, r1)
        .and_then(|mut w| w.next(Duration::from_secs(2)))
    {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!((requested, compacted), (r1, r3));
        }
        other => panic!("a watch from before the compacted revision: {other:?}"),
    }
    // From the compacted revision on, nothing is lost.
    let mut w = store.watch(c, r3 - 1).unwrap();
    assert_eq!(changes(w.as_mut(), 1)[0].revision(), r3);
    let r4 = store.put(c, "k4", b"4", Precondition::Absent).unwrap();
    assert_eq!(changes(w.as_mut(), 1)[0].revision(), r4);
    clear(store);
}

fn leases(store: &dyn Store) {
    let c = Collection::Volumes;
    let start = store.list(c).unwrap().revision;
    let mut w = store.watch(c, start).unwrap();

    // A revoked lease takes its keys with it, at once.
    let lease = store.grant_lease(Duration::from_secs(30)).unwrap();
    let put = Op::put(c, "bound", "x", Precondition::Absent).with_lease(lease);
    store.commit(vec![put.clone()], Durability::Host).unwrap();
    store.put(c, "free", b"y", Precondition::Absent).unwrap();
    assert_eq!(store.keep_alive(lease).unwrap(), Duration::from_secs(30));
    store.revoke_lease(lease).unwrap();
    assert!(store.get(c, "bound").unwrap().is_none());
    assert!(store.get(c, "free").unwrap().is_some());
    store.revoke_lease(lease).unwrap();
    assert!(matches!(
        store.keep_alive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
    assert!(matches!(
        store.commit(vec![put], Durability::Host),
        Err(StoreError::LeaseExpired(_))
    ));
    let seen = changes(w.as_mut(), 3);
    assert!(
        matches!(&seen[2], Change::Delete { key, .. } if key == "bound"),
        "{seen:?}"
    );

    // A lease not kept alive ends by itself (etcd rounds short TTLs up to
    // about two seconds), and a watch sees its keys go.
    let short = store.grant_lease(Duration::from_secs(2)).unwrap();
    let put = Op::put(c, "short", "z", Precondition::Absent).with_lease(short);
    let granted = Instant::now();
    store.commit(vec![put], Durability::Host).unwrap();
    let gone = changes(w.as_mut(), 2);
    assert!(
        matches!(&gone[1], Change::Delete { key, .. } if key == "short"),
        "{gone:?}"
    );
    assert!(
        granted.elapsed() >= Duration::from_millis(1500),
        "ended early"
    );
    assert!(store.get(c, "short").unwrap().is_none());
    clear(store);
}
