use std::collections::BTreeMap;
use std::path::Path;

use stowage_sys::{Call, RecordingSys};

use super::*;
use crate::options::{check_known, Options};
use crate::store::MemoryStore;
use crate::volume::Attachment;

/// A driver that keeps each volume in `/data/<id>` and bind-mounts it.
struct DirDriver {
    sys: Arc<RecordingSys>,
}

impl Driver for DirDriver {
    fn name(&self) -> &'static str {
        "dir"
    }
    fn validate(&self, options: &Options) -> Result<()> {
        check_known("dir", options, &["colour", "reach"])
    }
    /// `reach=cluster`: the test stands for storage every node reaches.
    fn capabilities(&self, options: &Options) -> crate::Capabilities {
        match options.get("reach").map(String::as_str) {
            Some("cluster") => crate::Capabilities::SHARED,
            _ => crate::Capabilities::NODE_LOCAL,
        }
    }
    fn provisions_storage(&self) -> bool {
        true
    }
    fn create(&self, v: &VolumeRecord) -> Result<()> {
        let dir = Path::new("/data").join(&v.id);
        stowage_sys::exists_ok(self.sys.create_dir(&dir, 0o755)).map_err(Error::io("mkdir", dir))
    }
    fn remove(&self, v: &VolumeRecord) -> Result<()> {
        let dir = Path::new("/data").join(&v.id);
        stowage_sys::missing_ok(self.sys.remove_tree(&dir)).map_err(Error::io("rm", dir))
    }
    fn mount(&self, v: &VolumeRecord, target: &Path, spec: crate::MountSpec<'_>) -> Result<()> {
        let dir = Path::new("/data").join(&v.id);
        self.sys
            .bind_mount(&dir, target, false, spec.idmap)
            .map_err(Error::io("bind", target))
    }
    fn attach_device(&self, v: &VolumeRecord, _read_only: bool) -> Result<PathBuf> {
        let device = fake_device(v);
        stowage_sys::exists_ok(self.sys.create_file(&device, 0o600))
            .map_err(Error::io("attach", &device))?;
        Ok(device)
    }
    fn attached_device(&self, v: &VolumeRecord) -> Result<Option<PathBuf>> {
        let device = fake_device(v);
        Ok(self.sys.file_size(&device).map(|_| device))
    }
    fn detach_device(&self, v: &VolumeRecord) -> Result<()> {
        let device = fake_device(v);
        stowage_sys::missing_ok(self.sys.remove_file(&device)).map_err(Error::io("detach", device))
    }
    fn network_image(&self, v: &VolumeRecord) -> Option<PathBuf> {
        Some(Path::new("/data").join(format!("{}.img", v.id)))
    }
    fn exports_images(&self) -> bool {
        true
    }
    fn root_owner(&self, v: &VolumeRecord) -> Result<(u32, u32)> {
        let info = self
            .sys
            .inspect_nofollow(&Path::new("/data").join(&v.id))
            .map_err(Error::io("inspect", "/data"))?;
        Ok((info.uid, info.gid))
    }
}

/// The device node `DirDriver` attaches for a volume: a file.
fn fake_device(v: &VolumeRecord) -> PathBuf {
    Path::new("/dev").join(&v.id)
}

struct Fixture {
    sys: Arc<RecordingSys>,
    store: Arc<MemoryStore>,
    svc: VolumeService,
}

fn fixture() -> Fixture {
    let sys = Arc::new(RecordingSys::new());
    let store = Arc::new(MemoryStore::new());
    let svc = service(&sys, &store);
    svc.reconcile().unwrap();
    sys.clear_calls();
    Fixture { sys, store, svc }
}

/// A fresh service over the same kernel and store: a daemon restart.
fn service(sys: &Arc<RecordingSys>, store: &Arc<MemoryStore>) -> VolumeService {
    let drivers = DriverSet::new().with(Arc::new(DirDriver { sys: sys.clone() }));
    VolumeService::new(
        store.clone(),
        drivers,
        sys.clone(),
        Layout::new("/data", "/run/s"),
    )
}

fn req(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        driver: Some("dir".into()),
        ..Default::default()
    }
}

fn mounts(sys: &RecordingSys) -> Vec<PathBuf> {
    sys.mount_table()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}

fn record(store: &MemoryStore, name: &str) -> Option<VolumeRecord> {
    let facts = store.get(Collection::NodeVolumes, name).unwrap();
    store
        .get(Collection::Volumes, name)
        .unwrap()
        .map(|v| VolumeRecord::from_parts(&v.value, facts.as_ref().map(|f| &f.value[..])).unwrap())
}

#[test]
fn create_is_idempotent_and_conflicts_on_other_options() {
    let f = fixture();
    let a = f.svc.create(req("v")).unwrap();
    let b = f.svc.create(req("v")).unwrap();
    assert_eq!(a, b);
    let mut other = req("v");
    other.options = BTreeMap::from([("colour".into(), "red".into())]);
    let err = f.svc.create(other).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Conflict);
    assert_eq!(
        err.to_string(),
        "volume v already exists with different options"
    );
}

#[test]
fn bad_input_changes_nothing() {
    let f = fixture();
    let mut unknown = req("v");
    unknown.options = BTreeMap::from([("size".into(), "1".into())]);
    for (request, needle) in [
        (req("../etc"), "invalid volume name"),
        (req(""), "must not be empty"),
        (unknown, "valid options: colour"),
        (
            CreateRequest {
                driver: Some("nfs".into()),
                ..req("v")
            },
            "known drivers: dir",
        ),
    ] {
        let err = f.svc.create(request).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(f.sys.calls().is_empty());
    assert!(f.store.list(Collection::Volumes).unwrap().items.is_empty());
}

#[test]
fn mounts_are_reference_counted_by_consumer() {
    let f = fixture();
    let v = f.svc.create(req("v")).unwrap();
    f.sys.clear_calls();
    let p1 = f.svc.mount("v", "c1").unwrap();
    let p2 = f.svc.mount("v", "c1").unwrap();
    let p3 = f.svc.mount("v", "c2").unwrap();
    assert_eq!(
        (&p1, &p2, &p3),
        (&v.mountpoint, &v.mountpoint, &v.mountpoint)
    );
    let binds = f
        .sys
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::BindMount { .. }))
        .count();
    assert_eq!(binds, 1);
    assert_eq!(mounts(&f.sys), vec![v.mountpoint.clone()]);
    assert_eq!(f.svc.inspect("v").unwrap().consumers, vec!["c1", "c2"]);

    f.svc.unmount("v", "c1").unwrap();
    assert_eq!(mounts(&f.sys), vec![v.mountpoint.clone()]);
    f.svc.unmount("v", "c1").unwrap(); // idempotent
    f.svc.unmount("v", "c2").unwrap();
    assert!(mounts(&f.sys).is_empty());
    assert!(!f.sys.dir_exists(&v.mountpoint));
    assert!(record(&f.store, "v").unwrap().consumers.is_empty());
}

#[test]
fn remove_refuses_a_volume_in_use_unless_forced() {
    let f = fixture();
    f.svc.create(req("v")).unwrap();
    f.svc.mount("v", "c1").unwrap();
    let err = f.svc.remove("v", false).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
    assert!(record(&f.store, "v").is_some());
    f.svc.remove("v", true).unwrap();
    assert!(record(&f.store, "v").is_none());
    assert!(mounts(&f.sys).is_empty());
    assert_eq!(
        f.svc.remove("v", false).unwrap_err().kind(),
        crate::ErrorKind::NotFound
    );
}

#[test]
fn failed_kernel_mount_leaves_the_volume_as_it_was() {
    let f = fixture();
    f.svc.create(req("v")).unwrap();
    f.sys.fail_next("BindMount", 1);
    assert!(f.svc.mount("v", "c1").is_err());
    let r = record(&f.store, "v").unwrap();
    assert!(r.consumers.is_empty());
    assert!(mounts(&f.sys).is_empty());
    f.svc.mount("v", "c1").unwrap();
}

#[test]
fn a_device_stage_that_fails_leaves_nothing_attached_or_recorded() {
    let f = fixture();
    f.svc.create(req("v")).unwrap();
    let staging = Path::new("/staging");
    f.sys.add_dir(staging);
    f.sys.fail_next("BindWith", 5); // EIO
    assert!(f.svc.stage_device("v", staging, false).is_err());
    let r = record(&f.store, "v").unwrap();
    assert_eq!(r.device, None);
    assert_eq!(f.sys.file_size(&fake_device(&r)), None, "left attached");

    f.svc.stage_device("v", staging, false).unwrap();
    f.svc.stage_device("v", staging, false).unwrap();
    let r = record(&f.store, "v").unwrap();
    let stagings = &r.device.as_ref().unwrap().stagings;
    assert_eq!(stagings.iter().collect::<Vec<_>>(), [staging]);
    assert_eq!(mounts(&f.sys), [staging.join("device")]);
    // Its filesystem is not mounted meanwhile, nor the volume removed.
    let refused = f.svc.mount("v", "c1").unwrap_err();
    assert_eq!(refused.kind(), crate::ErrorKind::FailedPrecondition);
    assert!(f.svc.remove("v", true).is_err());

    f.svc.unstage("v", staging).unwrap();
    let r = record(&f.store, "v").unwrap();
    assert_eq!(r.device, None);
    assert_eq!(f.sys.file_size(&fake_device(&r)), None, "left attached");
    assert!(mounts(&f.sys).is_empty());
}

#[test]
fn failed_create_leaves_nothing() {
    let f = fixture();
    f.sys.fail_next("CreateDir(\"/data/", 28);
    assert!(f.svc.create(req("v")).is_err());
    assert!(record(&f.store, "v").is_none());
}

#[test]
fn prune_removes_only_unused_volumes() {
    let f = fixture();
    for n in ["a", "b", "c"] {
        f.svc.create(req(n)).unwrap();
    }
    f.svc.mount("b", "c1").unwrap();
    assert_eq!(f.svc.prune().unwrap(), vec!["a", "c"]);
    assert_eq!(f.svc.list(&VolumeFilter::default()).unwrap().len(), 1);
}

/// Rewrites a stored record as a crash would have left it.
fn crash_state(store: &MemoryStore, name: &str, edit: impl FnOnce(&mut VolumeRecord)) {
    let v = store.get(Collection::Volumes, name).unwrap().unwrap();
    let facts = store.get(Collection::NodeVolumes, name).unwrap();
    let mut r = VolumeRecord::from_parts(&v.value, facts.as_ref().map(|f| &f.value[..])).unwrap();
    edit(&mut r);
    let mut ops = vec![Op::put(
        Collection::Volumes,
        name,
        r.spec_json(),
        Precondition::Revision(v.revision),
    )];
    let expect = facts.map_or(Precondition::Absent, |f| Precondition::Revision(f.revision));
    match r.facts_json() {
        Some(new) => ops.push(Op::put(Collection::NodeVolumes, name, new, expect)),
        None => {
            if let Precondition::Revision(rev) = expect {
                ops.push(Op::delete(Collection::NodeVolumes, name, rev));
            }
        }
    }
    store.commit(ops, Durability::Host).unwrap();
}

#[test]
fn reconcile_finishes_or_rolls_back_each_half_done_operation() {
    let f = fixture();
    for n in [
        "creating", "removing", "removed", "pmount", "punmount", "lost", "stacked", "idle",
    ] {
        f.svc.create(req(n)).unwrap();
    }
    let id = |n: &str| record(&f.store, n).unwrap().id;
    // Crash after the intent of a create: the directory may exist.
    crash_state(&f.store, "creating", |r| r.state = VolumeState::Creating);
    // Crash in the middle of a forced remove of a mounted volume.
    f.svc.mount("removing", "c").unwrap();
    crash_state(&f.store, "removing", |r| r.state = VolumeState::Removing);
    // Power lost after a whole remove: its last write, the delete of the
    // record, needs no fsync, so the record may come back as Removing.
    crash_state(&f.store, "removed", |r| r.state = VolumeState::Removing);
    f.sys
        .remove_tree(&Path::new("/data").join(id("removed")))
        .unwrap();
    // Crash after the intent of a first mount, before the kernel mount.
    // Crash after the kernel mount of a first consumer, before the record.
    f.svc.mount("pmount", "c").unwrap();
    crash_state(&f.store, "pmount", |r| {
        r.consumers.clear();
    });
    // Crash after recording a last unmount, before the kernel unmount.
    f.svc.mount("punmount", "c").unwrap();
    crash_state(&f.store, "punmount", |r| {
        r.consumers.clear();
    });
    // A mount that vanished (a reboot) and one stacked twice.
    f.svc.mount("lost", "c").unwrap();
    f.sys
        .unmount(&f.svc.layout.mountpoint(&id("lost")))
        .unwrap();
    f.svc.mount("stacked", "c").unwrap();
    let stacked = f.svc.layout.mountpoint(&id("stacked"));
    f.sys
        .bind_mount(
            &Path::new("/data").join(id("stacked")),
            &stacked,
            false,
            None,
        )
        .unwrap();
    // An orphan mount with no volume at all.
    let orphan = f.svc.layout.mountpoint("deadbeef");
    f.sys.create_dir(&orphan, 0o700).unwrap();
    f.sys.add_dir("/data/deadbeef");
    f.sys
        .bind_mount(Path::new("/data/deadbeef"), &orphan, false, None)
        .unwrap();

    let restarted = service(&f.sys, &f.store);
    let report = restarted.reconcile().unwrap();
    assert_eq!(
        report,
        ReconcileReport {
            volumes: 8,
            creates_rolled_back: 1,
            removes_finished: 2,
            mounts_restored: 1,
            stale_mounts_removed: 4,
            device_stagings_dropped: 0,
            records_upgraded: 0,
            snapshots_finished: 0,
            failures: vec![],
            orphans: vec![],
        }
    );
    let names: Vec<String> = restarted
        .list(&VolumeFilter::default())
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["idle", "lost", "pmount", "punmount", "stacked"]);
    let mut expected = vec![restarted.layout.mountpoint(&id("lost")), stacked.clone()];
    expected.sort();
    let mut got = mounts(&f.sys);
    got.sort();
    assert_eq!(got, expected);
    for n in ["pmount", "punmount"] {
        let r = record(&f.store, n).unwrap();
        assert!(r.consumers.is_empty(), "{n}");
    }
    // A second reconcile has nothing left to do.
    let again = restarted.reconcile().unwrap();
    assert_eq!(again.volumes, 5);
    assert_eq!((again.mounts_restored, again.stale_mounts_removed), (0, 0));
}

#[test]
fn a_volume_that_cannot_be_presented_at_start_says_it_is_not_mounted() {
    let f = fixture();
    let v = f.svc.create(req("v")).unwrap();
    f.svc.mount("v", "c").unwrap();
    assert!(f.svc.inspect("v").unwrap().mounted);
    // A reboot loses the mount, and the data directory is gone too.
    f.sys.unmount(&v.mountpoint).unwrap();
    let id = record(&f.store, "v").unwrap().id;
    f.sys.remove_tree(&Path::new("/data").join(id)).unwrap();
    let restarted = service(&f.sys, &f.store);
    let report = restarted.reconcile().unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    let after = restarted.inspect("v").unwrap();
    assert_eq!(after.consumers, vec!["c"]);
    assert!(
        !after.mounted,
        "the view follows the kernel, not the record"
    );
}

#[test]
fn concurrent_clients_on_one_name_keep_store_and_mounts_in_agreement() {
    let f = Arc::new(fixture());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let consumer = format!("c{t}");
                    let _ = match (t + i) % 4 {
                        0 => f.svc.create(req("shared")).map(|_| ()),
                        1 => f.svc.mount("shared", &consumer).map(|_| ()),
                        2 => f.svc.unmount("shared", &consumer),
                        _ => f.svc.remove("shared", false),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mounted = !mounts(&f.sys).is_empty();
    match record(&f.store, "shared") {
        Some(r) => {
            assert_eq!(r.state, VolumeState::Ready);
            assert_eq!(mounted, !r.consumers.is_empty());
        }
        None => assert!(!mounted),
    }
}

/// Model-based test: random operation sequences, with injected syscall
/// failures and restarts, against a reference model of names and
/// consumers. After every step the service must agree with the model, and
/// the simulated mount table with the service.
mod model {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 3] = ["a", "b", "c"];
    const CONSUMERS: [&str; 2] = ["x", "y"];
    const FAILURES: [&str; 5] = [
        "BindMount",
        "Unmount",
        "CreateDir",
        "RemoveTree",
        "RemoveDir",
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Create(usize, bool),
        Mount(usize, usize),
        Unmount(usize, usize),
        Remove(usize, bool),
        Prune,
        /// Arms a failure of the next matching syscall.
        Fail(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize, any::<bool>()).prop_map(|(n, o)| Op::Create(n, o)),
            3 => (0..3usize, 0..2usize).prop_map(|(n, c)| Op::Mount(n, c)),
            3 => (0..3usize, 0..2usize).prop_map(|(n, c)| Op::Unmount(n, c)),
            2 => (0..3usize, any::<bool>()).prop_map(|(n, f)| Op::Remove(n, f)),
            1 => Just(Op::Prune),
            2 => (0..5usize).prop_map(Op::Fail),
            1 => Just(Op::Restart),
        ]
    }

    /// Per name: whether it has the option, and its consumers.
    type Model = BTreeMap<&'static str, (bool, BTreeSet<&'static str>)>;

    fn request(name: &str, coloured: bool) -> CreateRequest {
        let mut r = req(name);
        if coloured {
            r.options = BTreeMap::from([("colour".into(), "red".into())]);
        }
        r
    }

    /// Applies `op` to the model if it succeeds; returns whether it should.
    fn expect(model: &mut Model, op: &Op) -> bool {
        match *op {
            Op::Create(n, o) => match model.get(NAMES[n]) {
                Some((existing, _)) => *existing == o,
                None => {
                    model.insert(NAMES[n], (o, BTreeSet::new()));
                    true
                }
            },
            Op::Mount(n, c) => match model.get_mut(NAMES[n]) {
                Some((_, cs)) => {
                    cs.insert(CONSUMERS[c]);
                    true
                }
                None => false,
            },
            Op::Unmount(n, c) => match model.get_mut(NAMES[n]) {
                Some((_, cs)) => {
                    cs.remove(CONSUMERS[c]);
                    true
                }
                None => false,
            },
            Op::Remove(n, force) => match model.get(NAMES[n]) {
                Some((_, cs)) if cs.is_empty() || force => {
                    model.remove(NAMES[n]);
                    true
                }
                _ => false,
            },
            Op::Prune => {
                model.retain(|_, (_, cs)| !cs.is_empty());
                true
            }
            Op::Fail(_) | Op::Restart => true,
        }
    }

    fn run(svc: &VolumeService, op: &Op) -> Result<()> {
        match *op {
            Op::Create(n, o) => svc.create(request(NAMES[n], o)).map(drop),
            Op::Mount(n, c) => svc.mount(NAMES[n], CONSUMERS[c]).map(drop),
            Op::Unmount(n, c) => svc.unmount(NAMES[n], CONSUMERS[c]),
            Op::Remove(n, force) => svc.remove(NAMES[n], force),
            Op::Prune => svc.prune().map(drop),
            Op::Fail(_) | Op::Restart => Ok(()),
        }
    }

    fn check(f: &Fixture, svc: &VolumeService, model: &Model) {
        let listed = svc.list(&VolumeFilter::default()).unwrap();
        let actual: BTreeMap<String, (bool, Vec<String>)> = listed
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    (v.options.contains_key("colour"), v.consumers.clone()),
                )
            })
            .collect();
        let expected: BTreeMap<String, (bool, Vec<String>)> = model
            .iter()
            .map(|(n, (o, cs))| {
                (
                    n.to_string(),
                    (*o, cs.iter().map(|c| c.to_string()).collect()),
                )
            })
            .collect();
        assert_eq!(actual, expected);
        let mut want: Vec<PathBuf> = listed
            .iter()
            .filter(|v| !v.consumers.is_empty())
            .map(|v| v.mountpoint.clone())
            .collect();
        want.sort();
        let mut got = mounts(&f.sys);
        got.sort();
        assert_eq!(got, want, "mount table disagrees with the store");
        for name in NAMES {
            if let Some(r) = record(&f.store, name) {
                assert_eq!(r.state, VolumeState::Ready, "{name}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn service_follows_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            let f = fixture();
            let mut svc = service(&f.sys, &f.store);
            let mut model = Model::new();
            for op in &ops {
                match op {
                    Op::Fail(i) => f.sys.fail_next(FAILURES[*i], 5),
                    Op::Restart => {
                        f.sys.disarm();
                        svc = service(&f.sys, &f.store);
                        let report = svc.reconcile().unwrap();
                        prop_assert!(report.failures.is_empty(), "{:?}", report);
                        prop_assert_eq!(report.mounts_restored + report.stale_mounts_removed, 0);
                    }
                    _ => {}
                }
                let armed = f.sys.armed_failures();
                let mut next = model.clone();
                let should = expect(&mut next, op);
                let result = run(&svc, op);
                let fired = f.sys.armed_failures() < armed;
                match (&result, should) {
                    (Ok(()), true) => model = next,
                    (Err(_), false) => {}
                    // An injected failure may fail an operation that
                    // should succeed; it must then change nothing...
                    (Err(e), true) if fired => {
                        // ...except a remove, which stays pending until
                        // it is retried.
                        f.sys.disarm();
                        if let Op::Remove(n, _) = op {
                            svc.remove(NAMES[*n], true).unwrap();
                            model = next;
                        } else if let Op::Prune = op {
                            // Prune stops at the first failure; retry it.
                            svc.prune().unwrap_or_else(|e2| panic!("{e}; then {e2}"));
                            model = next;
                        }
                    }
                    (r, s) => prop_assert!(false, "{:?}: got {:?}, model expected success={}", op, r, s),
                }
                if !matches!(op, Op::Fail(_)) {
                    f.sys.disarm();
                }
                check(&f, &svc, &model);
            }
        }
    }
}

/// Summaries say what full listings say, however the volumes changed
/// between two lists, whether the cache reads changed records one by one
/// or lists them all again.
#[test]
fn summaries_follow_every_change() {
    let f = fixture();
    let agree = |svc: &VolumeService| {
        let filter = VolumeFilter::default();
        let full = svc.list(&filter).unwrap();
        let summaries = svc.list_summaries(&filter).unwrap();
        let from_full: Vec<(String, usize, bool, VolumeState)> = full
            .iter()
            .map(|v| (v.name.clone(), v.consumers.len(), v.mounted, v.status))
            .collect();
        let from_summaries: Vec<(String, usize, bool, VolumeState)> = summaries
            .iter()
            .map(|v| (v.name.to_string(), v.consumers, v.mounted, v.status))
            .collect();
        assert_eq!(from_full, from_summaries);
    };
    agree(&f.svc);
    for i in 0..300 {
        f.svc.create(req(&format!("v{i:03}"))).unwrap();
    }
    agree(&f.svc);
    f.svc.mount("v001", "c").unwrap();
    f.svc.remove("v002", false).unwrap();
    f.svc.create(req("new")).unwrap();
    agree(&f.svc);
    let dangling = VolumeFilter::parse(["dangling=false"]).unwrap();
    let used = f.svc.list_summaries(&dangling).unwrap();
    assert_eq!(used.iter().map(|v| &*v.name).collect::<Vec<_>>(), ["v001"]);
    for i in 3..300 {
        f.svc.remove(&format!("v{i:03}"), false).unwrap();
    }
    agree(&f.svc);
}

#[test]
fn a_version_1_record_is_rewritten_as_spec_and_facts_and_keeps_its_mount() {
    let f = fixture();
    f.svc.create(req("old")).unwrap();
    let path = f.svc.mount("old", "c1").unwrap();
    // As version 1 stored it: the consumers in the record, no facts apart.
    let spec = f.store.get(Collection::Volumes, "old").unwrap().unwrap();
    let facts = f
        .store
        .get(Collection::NodeVolumes, "old")
        .unwrap()
        .unwrap();
    let mut v1: serde_json::Value = serde_json::from_slice(&spec.value).unwrap();
    v1.as_object_mut().unwrap().remove("schema");
    v1["consumers"] = serde_json::json!(["c1"]);
    f.store
        .commit(
            vec![
                Op::put(
                    Collection::Volumes,
                    "old",
                    serde_json::to_vec(&v1).unwrap(),
                    Precondition::Revision(spec.revision),
                ),
                Op::delete(Collection::NodeVolumes, "old", facts.revision),
            ],
            Durability::Host,
        )
        .unwrap();

    let svc = service(&f.sys, &f.store);
    let report = svc.reconcile().unwrap();
    assert_eq!(report.records_upgraded, 1);
    assert_eq!(report.stale_mounts_removed, 0, "{report:?}");
    assert!(mounts(&f.sys).contains(&path));
    let spec = f.store.get(Collection::Volumes, "old").unwrap().unwrap();
    let spec = String::from_utf8(spec.value).unwrap();
    assert!(
        spec.contains("\"schema\":3") && !spec.contains("\"consumers\""),
        "{spec}"
    );
    assert!(f
        .store
        .get(Collection::NodeVolumes, "old")
        .unwrap()
        .is_some());
    assert_eq!(svc.inspect("old").unwrap().consumers, ["c1"]);
}

#[test]
fn a_nodes_facts_live_in_its_own_store() {
    let sys = Arc::new(RecordingSys::new());
    let (cluster, local) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let svc = service(&sys, &cluster).with_local_store(local.clone());
    svc.reconcile().unwrap();
    svc.create(req("v")).unwrap();
    svc.mount("v", "c1").unwrap();
    let spec = cluster.get(Collection::Volumes, "v").unwrap().unwrap();
    assert!(!String::from_utf8(spec.value)
        .unwrap()
        .contains("\"consumers\""));
    assert!(cluster.get(Collection::NodeVolumes, "v").unwrap().is_none());
    assert!(local.get(Collection::NodeVolumes, "v").unwrap().is_some());
    assert!(local.get(Collection::Volumes, "v").unwrap().is_none());
    assert_eq!(svc.inspect("v").unwrap().consumers, ["c1"]);
    let listed = svc.list_summaries(&VolumeFilter::default()).unwrap();
    assert_eq!(listed[0].consumers, 1);

    // A restart finds its consumers in its own store, and keeps the mount.
    let again = service(&sys, &cluster).with_local_store(local.clone());
    assert_eq!(again.reconcile().unwrap().stale_mounts_removed, 0);
    again.unmount("v", "c1").unwrap();
    again.remove("v", false).unwrap();
    assert!(cluster.list(Collection::Volumes).unwrap().items.is_empty());
    assert!(local
        .list(Collection::NodeVolumes)
        .unwrap()
        .items
        .is_empty());
}

#[test]
fn nodes_join_with_a_lease_and_are_listed_cordoned_down_and_removed() {
    use crate::node::{NodeInfo, NodeState};
    let sys = Arc::new(RecordingSys::new());
    let cluster = Arc::new(MemoryStore::new());
    let node = |id: &str| {
        let svc = service(&sys, &cluster)
            .with_node_id(id)
            .with_local_store(Arc::new(MemoryStore::new()));
        svc.join(NodeInfo::default(), std::time::Duration::from_secs(60))
            .unwrap();
        svc
    };
    let (a, b) = (node("a"), node("b"));
    b.create(req("on-b")).unwrap();
    let states = |svc: &VolumeService| -> Vec<(String, NodeState, usize)> {
        (svc.nodes().unwrap().into_iter())
            .map(|n| (n.id, n.state, n.volumes))
            .collect()
    };
    assert_eq!(
        states(&a),
        [
            ("a".into(), NodeState::Ready, 0),
            ("b".into(), NodeState::Ready, 1)
        ]
    );
    assert_eq!(a.cordon("b", true).unwrap().state, NodeState::Cordoned);
    // A heartbeat keeps what the operator set.
    b.heartbeat().unwrap();
    assert_eq!(a.node("b").unwrap().state, NodeState::Cordoned);
    assert!(matches!(
        a.cordon("nobody", true),
        Err(Error::UnknownNode { .. })
    ));

    // An up node cannot be removed; a down one that holds data only with
    // force, which says what it forgets.
    assert!(a.remove_node("b", false).is_err());
    b.leave().unwrap();
    assert_eq!(a.node("b").unwrap().state, NodeState::Down);
    let refused = a.remove_node("b", false).unwrap_err().to_string();
    assert!(refused.contains("on-b"), "{refused}");
    assert_eq!(a.remove_node("b", true).unwrap(), ["on-b"]);
    assert_eq!(states(&a), [("a".into(), NodeState::Ready, 0)]);
    assert!(a.list(&VolumeFilter::default()).unwrap().is_empty());

    // A node whose lease ended while it was cut off takes a new one.
    let old = a.lease().unwrap();
    cluster.revoke_lease(old).unwrap();
    assert_eq!(a.node("a").unwrap().state, NodeState::Down);
    a.heartbeat().unwrap();
    assert_ne!(a.lease().unwrap(), old);
    assert_eq!(a.node("a").unwrap().state, NodeState::Ready);
}

/// A node of a cluster over `cluster`, with its own kernel and store,
/// joined with a lease of `ttl`.
fn cluster_node(
    cluster: &Arc<MemoryStore>,
    id: &str,
    ttl: std::time::Duration,
) -> (VolumeService, Arc<RecordingSys>) {
    let sys = Arc::new(RecordingSys::new());
    let svc = service(&sys, cluster)
        .with_node_id(id)
        .with_local_store(Arc::new(MemoryStore::new()));
    svc.reconcile().unwrap();
    svc.join(crate::node::NodeInfo::default(), ttl).unwrap();
    (svc, sys)
}

type Node = (VolumeService, Arc<RecordingSys>);

/// Nodes `a` and `b` of a cluster over the store returned, with leases
/// that outlive the test.
fn two_nodes() -> (Arc<MemoryStore>, Node, Node) {
    let cluster = Arc::new(MemoryStore::new());
    let ttl = std::time::Duration::from_secs(60);
    let a = cluster_node(&cluster, "a", ttl);
    let b = cluster_node(&cluster, "b", ttl);
    (cluster, a, b)
}

/// Creates on `maker` a volume of storage every node reaches, in `mode`,
/// and makes its data appear on each of `others` too.
fn shared_volume(
    maker: &VolumeService,
    others: &[&RecordingSys],
    name: &str,
    mode: crate::AccessMode,
) {
    let mut r = req(name);
    r.options.insert("reach".into(), "cluster".into());
    r.access = Some(mode);
    maker.create(r).unwrap();
    let id = maker
        .load(&VolumeName::parse(name).unwrap())
        .unwrap()
        .unwrap()
        .record
        .id;
    for sys in others {
        let _ = sys.create_dir(Path::new("/data"), 0o755);
        sys.create_dir(&Path::new("/data").join(id.as_str()), 0o755)
            .unwrap();
    }
}

fn held_elsewhere(r: Result<PathBuf>) -> String {
    match r {
        Err(e @ Error::HeldElsewhere { .. }) => e.to_string(),
        other => panic!("expected the volume held elsewhere, got {other:?}"),
    }
}

#[test]
fn access_modes_hold_across_nodes() {
    use crate::AccessMode::{Rox, Rwo, Rwop, Rwx};
    let (_, (a, sys_a), (b, sys_b)) = two_nodes();

    // rwo: one node at a time, any number of consumers there.
    shared_volume(&a, &[&sys_b], "one-node", Rwo);
    a.mount("one-node", "c1").unwrap();
    a.mount("one-node", "c2").unwrap();
    let refused = held_elsewhere(b.mount("one-node", "c3"));
    assert!(
        refused.contains("node a") && refused.contains("rwo"),
        "{refused}"
    );
    let seen = b.inspect("one-node").unwrap();
    assert_eq!(seen.consumers_by_node["a"], ["c1", "c2"]);
    assert_eq!(seen.held_by.as_deref(), Some("a"));
    assert!(seen.consumers.is_empty(), "b's own consumers");
    a.unmount("one-node", "c1").unwrap();
    a.unmount("one-node", "c2").unwrap();
    assert_eq!(a.inspect("one-node").unwrap().held_by, None);
    b.mount("one-node", "c3").unwrap();
    let refused = a.remove("one-node", true).unwrap_err().to_string();
    assert!(refused.contains("c3 on node b"), "{refused}");

    // rwop: one consumer in the cluster.
    shared_volume(&a, &[&sys_b], "one-consumer", Rwop);
    a.mount("one-consumer", "c1").unwrap();
    a.mount("one-consumer", "c1").unwrap();
    held_elsewhere(a.mount("one-consumer", "c2"));
    held_elsewhere(b.mount("one-consumer", "c2"));
    assert_eq!(a.inspect("one-consumer").unwrap().consumers, ["c1"]);

    // rox: every node, read-only.
    shared_volume(&a, &[&sys_b], "readers", Rox);
    let pa = a.mount("readers", "r1").unwrap();
    b.mount("readers", "r2").unwrap();
    assert!(sys_a.calls().contains(&Call::MakeReadOnly(pa)));
    let write = Attachment {
        read_only: false,
        exclusive: false,
    };
    assert!(a.attach("readers", "b", write).is_err());
    assert_eq!(b.inspect("readers").unwrap().consumers_by_node.len(), 2);

    // rwx: every node, read-write, no claim.
    shared_volume(&a, &[&sys_b], "everyone", Rwx);
    a.mount("everyone", "w1").unwrap();
    b.mount("everyone", "w2").unwrap();
    assert_eq!(a.inspect("everyone").unwrap().held_by, None);

    // A CSI attachment claims the volume for its node: no other node
    // mounts it until it is detached.
    shared_volume(&a, &[&sys_b], "attached", Rwo);
    a.attach("attached", "a", write).unwrap();
    held_elsewhere(b.mount("attached", "c"));
    assert!(matches!(
        b.attach("attached", "b", write),
        Err(Error::HeldElsewhere { .. })
    ));
    a.detach("attached", Some("a")).unwrap();
    b.mount("attached", "c").unwrap();
    b.unmount("attached", "c").unwrap();

    // Node-local storage takes no mode its storage cannot give.
    let mut r = req("local-many");
    r.access = Some(Rwx);
    let refused = a.create(r).unwrap_err().to_string();
    assert!(refused.contains("rwo, rwop, rox"), "{refused}");
    assert_eq!(a.create(req("local-default")).unwrap().access, Rwo);
}

#[test]
fn a_down_nodes_exclusive_attachment_is_released_with_its_lease() {
    let (cluster, (a, _), (b, sys_b)) = two_nodes();
    shared_volume(&a, &[&sys_b], "v", crate::AccessMode::Rwo);
    let how = Attachment {
        read_only: false,
        exclusive: true,
    };
    a.attach("v", "b", how).unwrap();
    b.mount("v", "c").unwrap();
    assert!(matches!(
        a.attach("v", "a", how),
        Err(Error::HeldElsewhere { .. })
    ));
    // b is cut off: its lease ends, and its claim with it.
    cluster.revoke_lease(b.lease().unwrap()).unwrap();
    a.attach("v", "a", how).unwrap();
    let v = a.inspect("v").unwrap();
    assert_eq!(v.attachments.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(v.held_by.as_deref(), Some("a"));
    assert!(
        v.consumers_by_node.is_empty(),
        "b's use ended with its lease"
    );
    // b comes back: it rejoins, finds the volume taken, and claims nothing.
    b.heartbeat().unwrap();
    let v = a.inspect("v").unwrap();
    assert_eq!(v.held_by.as_deref(), Some("a"));
    assert_eq!(v.consumers_by_node["b"], ["c"], "b still has its consumer");
}

#[test]
fn a_node_whose_lease_lapsed_changes_nothing_until_it_renews() {
    let cluster = Arc::new(MemoryStore::new());
    let short = std::time::Duration::from_secs(2);
    let (a, _) = cluster_node(&cluster, "a", short);
    a.create(req("v")).unwrap();
    a.mount("v", "c1").unwrap();
    std::thread::sleep(short + std::time::Duration::from_millis(200));
    let refused = a.mount("v", "c2").unwrap_err();
    assert_eq!(refused.kind(), crate::ErrorKind::Unavailable, "{refused}");
    assert!(refused.to_string().contains("lease"), "{refused}");
    assert_eq!(a.inspect("v").unwrap().consumers, ["c1"], "nothing changed");
    // The lease ended meanwhile: the node rejoins and publishes its use.
    a.heartbeat().unwrap();
    a.mount("v", "c2").unwrap();
    let v = a.inspect("v").unwrap();
    assert_eq!(v.consumers_by_node["a"], ["c1", "c2"]);
    assert_eq!(v.held_by.as_deref(), Some("a"));
}

#[test]
fn a_change_from_a_kept_copy_that_another_node_outdated_is_made_afresh() {
    let (_, (a, sys_a), (b, sys_b)) = two_nodes();
    // a keeps what it created; b claims the volume meanwhile, so a's copy
    // says it is free when it is not.
    shared_volume(&a, &[&sys_b], "claimed", crate::AccessMode::Rwo);
    b.mount("claimed", "c").unwrap();
    let refused = held_elsewhere(a.mount("claimed", "c1"));
    assert!(refused.contains("node b"), "{refused}");
    assert!(a.inspect("claimed").unwrap().consumers.is_empty());

    // b removes and makes again the volume a kept: a mounts the new one.
    shared_volume(&a, &[&sys_b], "remade", crate::AccessMode::Rwx);
    let id_on = |svc: &VolumeService| {
        let name = VolumeName::parse("remade").unwrap();
        svc.load(&name).unwrap().unwrap().record.id
    };
    let old = id_on(&a);
    b.remove("remade", false).unwrap();
    shared_volume(&b, &[&sys_a], "remade", crate::AccessMode::Rwx);
    let new = id_on(&b);
    assert_ne!(old, new);
    let path = a.mount("remade", "c1").unwrap();
    assert!(path.to_string_lossy().contains(new.as_str()), "{path:?}");
    a.unmount("remade", "c1").unwrap();
    // a's unmount from its kept copy released its use: b removes it.
    b.remove("remade", false).unwrap();
}

#[test]
fn a_create_on_the_cluster_that_finds_the_name_taken_answers_as_one_that_read_it() {
    let (_, (a, _), (b, _)) = two_nodes();
    let made = a.create(req("v")).unwrap();
    assert_eq!(a.create(req("v")).unwrap(), made, "the same volume again");
    let mut other = req("v");
    other.options = BTreeMap::from([("colour".into(), "red".into())]);
    let err = b.create(other).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Conflict, "{err}");
    // Homed on a: b answers with it, and changed nothing.
    assert_eq!(b.create(req("v")).unwrap().node.as_deref(), Some("a"));
    assert_eq!(a.inspect("v").unwrap(), made);
}

/// A transport that records what it serves.
#[derive(Default)]
struct FakeTransport {
    exports: Mutex<BTreeMap<String, (PathBuf, crate::transport::Psk)>>,
    /// Attachments it runs, and those it cut off.
    attachments: Mutex<Vec<String>>,
    severed: Mutex<Vec<String>>,
}

impl crate::transport::Transport for FakeTransport {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn export(
        &self,
        spec: &crate::transport::ExportSpec<'_>,
    ) -> Result<crate::transport::Endpoint> {
        let mut exports = self.exports.lock().unwrap();
        exports.insert(spec.id.into(), (spec.image.into(), spec.psk.clone()));
        Ok(crate::transport::Endpoint {
            address: "10.0.0.1:10809".parse().unwrap(),
            name: format!("x-{}", spec.id),
        })
    }
    fn unexport(&self, id: &str) -> Result<()> {
        self.exports.lock().unwrap().remove(id);
        Ok(())
    }
    fn attach(&self, _: &crate::transport::AttachSpec<'_>) -> Result<PathBuf> {
        Err(Error::InvalidRequest(
            "the fake transport attaches nothing".into(),
        ))
    }
    fn sever(&self, id: &str) -> Result<()> {
        self.severed.lock().unwrap().push(id.to_string());
        Ok(())
    }
    fn detach(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn running(&self) -> Result<crate::transport::Running> {
        Ok(crate::transport::Running {
            exports: self.exports.lock().unwrap().keys().cloned().collect(),
            attachments: self.attachments.lock().unwrap().clone(),
        })
    }
}

fn sealing_key() -> crate::secret::SealingKey {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let text = crate::secret::SealingKey::generate_file_text().unwrap();
    std::fs::write(&path, text.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    crate::secret::SealingKey::from_file(&path).unwrap()
}

/// Two nodes, `a` exporting with a recording transport, and volume `v`
/// homed on `a`.
struct Exporting {
    cluster: Arc<MemoryStore>,
    a: VolumeService,
    b: VolumeService,
    sealing: Arc<crate::secret::SealingKey>,
    transport: Arc<FakeTransport>,
    /// `v`'s id.
    id: String,
}

fn exporting() -> Exporting {
    let (cluster, (a, _), (b, _)) = two_nodes();
    let sealing = Arc::new(sealing_key());
    let transport = Arc::new(FakeTransport::default());
    let a = a.with_network_attach(crate::NetworkAttach {
        transport: transport.clone(),
        sealing: sealing.clone(),
        listen: "10.0.0.1".parse().unwrap(),
    });
    a.create(req("v")).unwrap();
    let id = a
        .load(&VolumeName::parse("v").unwrap())
        .unwrap()
        .unwrap()
        .record
        .id;
    Exporting {
        cluster,
        a,
        b,
        sealing,
        transport,
        id,
    }
}

#[test]
fn a_home_node_serves_what_is_asked_of_its_volumes_until_the_request_ends() {
    use crate::netattach::{key, AttachRequest, ExportAnswer};
    let Exporting {
        cluster,
        a,
        b,
        sealing,
        transport,
        id,
    } = exporting();
    let ask = |k: &str, request: &AttachRequest| {
        let value = serde_json::to_vec(request).unwrap();
        let op =
            Op::put(Collection::NetAttach, k, value, Precondition::Any).with_lease_if(b.lease());
        cluster.commit(vec![op], Durability::Host).unwrap();
    };
    let answer = |k: &str| -> Option<ExportAnswer> {
        let v = cluster.get(Collection::NetExport, k).unwrap()?;
        Some(serde_json::from_slice(&v.value).unwrap())
    };

    // b asks for v: a serves the image to b's key.
    let (request, psk) = AttachRequest::new(&sealing, &key("v", "b"), &id, 1, false).unwrap();
    ask(&key("v", "b"), &request);
    a.settle_exports().unwrap();
    let served = answer(&key("v", "b")).expect("an answer");
    assert_eq!(
        (served.id.as_str(), served.epoch, served.error),
        (request.id.as_str(), 1, None)
    );
    assert_eq!(
        served.name.as_deref(),
        Some(format!("x-{}", request.id).as_str())
    );
    let exports = transport.exports.lock().unwrap().clone();
    let image = Path::new("/data").join(format!("{id}.img"));
    assert_eq!(exports[&request.id], (image, psk));

    // Asked of another volume of the name, or with a key sealed by another
    // key file: answered with why not, and nothing served.
    let (mut stale, _) =
        AttachRequest::new(&sealing, &key("v", "c"), "other-id", 1, false).unwrap();
    stale.id = "stale".into();
    ask(&key("v", "c"), &stale);
    let (forged, _) = AttachRequest::new(&sealing_key(), &key("v", "d"), &id, 1, false).unwrap();
    ask(&key("v", "d"), &forged);
    a.settle_exports().unwrap();
    assert!(answer(&key("v", "c")).unwrap().error.is_some());
    let refused = answer(&key("v", "d")).unwrap().error.unwrap();
    assert!(refused.contains("does not open"), "{refused}");
    assert_eq!(transport.exports.lock().unwrap().len(), 1);

    // A volume homed on b is b's to serve: a does not answer.
    b.create(req("w")).unwrap();
    let w = b
        .load(&VolumeName::parse("w").unwrap())
        .unwrap()
        .unwrap()
        .record
        .id;
    let (for_w, _) = AttachRequest::new(&sealing, &key("w", "c"), &w, 1, false).unwrap();
    ask(&key("w", "c"), &for_w);
    a.settle_exports().unwrap();
    assert_eq!(answer(&key("w", "c")), None);

    // b's lease ends, and its requests with it: a stops the export and
    // withdraws its answer.
    cluster.revoke_lease(b.lease().unwrap()).unwrap();
    a.settle_exports().unwrap();
    assert!(transport.exports.lock().unwrap().is_empty());
    for k in [key("v", "b"), key("v", "c"), key("v", "d")] {
        assert_eq!(answer(&k), None, "{k}");
    }
}

#[test]
fn a_new_holder_of_an_exclusive_volume_is_served_only_once_the_old_export_is_cut() {
    use crate::netattach::{key, AttachRequest, ExportAnswer};
    let Exporting {
        cluster,
        a,
        b,
        sealing,
        transport,
        id,
    } = exporting();
    let ask = |node: &str, epoch: u64| {
        let k = key("v", node);
        let (request, _) = AttachRequest::new(&sealing, &k, &id, epoch, false).unwrap();
        let value = serde_json::to_vec(&request).unwrap();
        let op =
            Op::put(Collection::NetAttach, &k, value, Precondition::Any).with_lease_if(b.lease());
        cluster.commit(vec![op], Durability::Host).unwrap();
        request.id
    };
    let answer = |node: &str| -> Option<ExportAnswer> {
        let v = cluster
            .get(Collection::NetExport, &key("v", node))
            .unwrap()?;
        Some(serde_json::from_slice(&v.value).unwrap())
    };
    let served = || -> Vec<String> { transport.exports.lock().unwrap().keys().cloned().collect() };

    let old = ask("b", 5);
    a.settle_exports().unwrap();
    assert_eq!(served(), std::slice::from_ref(&old));
    // c takes the volume over with a later epoch: b's export is cut, and
    // its answer withdrawn, before c's is served.
    let new = ask("c", 9);
    a.settle_exports().unwrap();
    assert_eq!(served(), std::slice::from_ref(&new));
    assert_eq!(answer("c").unwrap().id, new);
    assert_eq!(answer("b"), None, "b's answer withdrawn");
    // b's request, still there, is older: refused while c holds it.
    a.settle_exports().unwrap();
    let refused = answer("b").unwrap();
    assert_eq!(refused.id, old);
    assert!(refused.error.unwrap().contains("newer attachment"));
    assert_eq!(served(), [new]);
}

#[test]
fn a_node_whose_lease_lapsed_cuts_its_network_attachments_off() {
    let cluster = Arc::new(MemoryStore::new());
    let short = std::time::Duration::from_secs(2);
    let (b, _) = cluster_node(&cluster, "b", short);
    let transport = Arc::new(FakeTransport::default());
    let b = b.with_network_attach(crate::NetworkAttach {
        transport: transport.clone(),
        sealing: Arc::new(sealing_key()),
        listen: "10.0.0.2".parse().unwrap(),
    });
    transport.attachments.lock().unwrap().push("vid".into());
    b.heartbeat().unwrap();
    assert!(
        transport.severed.lock().unwrap().is_empty(),
        "renewed in time"
    );
    std::thread::sleep(short + std::time::Duration::from_millis(200));
    b.heartbeat().unwrap();
    assert_eq!(*transport.severed.lock().unwrap(), ["vid"]);
    // Cut once: the next lapse finds nothing new to cut.
    std::thread::sleep(short + std::time::Duration::from_millis(200));
    b.heartbeat().unwrap();
    assert_eq!(transport.severed.lock().unwrap().len(), 1);
}
