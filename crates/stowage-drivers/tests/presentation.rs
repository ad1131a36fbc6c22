//! The built-in drivers under the volume service, on the recording syscall
//! layer: which calls ownership and label options lead to, and how a
//! `local` volume with a size is made and unmade on a (simulated) btrfs.

use std::sync::Arc;

use stowage_core::{CreateRequest, Layout, MemoryStore, Volume, VolumeService};
use stowage_sys::{Call, IdMapping, IdRange, RecordingSys};

fn service() -> (Arc<RecordingSys>, VolumeService) {
    let sys = Arc::new(RecordingSys::new());
    let layout = Layout::new("/data", "/run/s");
    let drivers = stowage_drivers::builtin(sys.clone(), &layout);
    let svc = VolumeService::new(Arc::new(MemoryStore::new()), drivers, sys.clone(), layout);
    svc.reconcile().unwrap();
    sys.add_dir("/data");
    sys.add_dir("/run/s");
    (sys, svc)
}

fn create(svc: &VolumeService, name: &str, driver: &str, opts: &[(&str, &str)]) -> Volume {
    svc.create(CreateRequest {
        name: name.into(),
        driver: Some(driver.into()),
        options: stowage_core::options::from_pairs(opts),
        ..Default::default()
    })
    .unwrap()
}

fn one(disk: u32, uid: u32, gid: u32) -> IdMapping {
    IdMapping {
        uids: vec![IdRange {
            disk,
            container: uid,
            count: 1,
        }],
        gids: vec![IdRange {
            disk,
            container: gid,
            count: 1,
        }],
    }
}

fn count(sys: &RecordingSys, f: impl Fn(&Call) -> bool) -> usize {
    sys.calls().iter().filter(|c| f(c)).count()
}

#[test]
fn owner_mounts_through_one_cached_user_namespace() {
    let (sys, svc) = service();
    create(&svc, "a", "local", &[("owner", "184:998")]);
    create(&svc, "b", "local", &[("owner", "184:998")]);
    sys.clear_calls();
    svc.mount("a", "c").unwrap();
    svc.mount("b", "c").unwrap();
    // The local driver's root belongs to 0:0 by default.
    let mapping = one(0, 184, 998);
    assert_eq!(
        count(
            &sys,
            |c| matches!(c, Call::UserNamespace(m) if *m == mapping)
        ),
        1
    );
    assert_eq!(
        count(
            &sys,
            |c| matches!(c, Call::BindMount { idmap: Some(m), .. } if *m == mapping)
        ),
        2
    );
    let p = svc.inspect("a").unwrap().presentation;
    assert_eq!(p.ownership.unwrap().method, "idmap");
    assert!(p.label.is_none());
}

#[test]
fn a_filesystem_refusing_idmap_falls_back_to_chown() {
    let (sys, svc) = service();
    create(&svc, "a", "local", &[("owner", "184:998")]);
    sys.clear_calls();
    sys.fail_next("BindMount", 22);
    svc.mount("a", "c").unwrap();
    let calls = sys.calls();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, Call::BindMount { idmap: None, .. })),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, Call::ChownTree(_, m) if *m == one(0, 184, 998))),
        "{calls:?}"
    );
    let own = svc.inspect("a").unwrap().presentation.ownership.unwrap();
    assert_eq!(own.method, "chown");
    assert!(
        own.reason.contains("refuses idmapped mounts"),
        "{}",
        own.reason
    );

    // Mounted again later, the root already matches: nothing to walk.
    svc.unmount("a", "c").unwrap();
    sys.clear_calls();
    sys.fail_next("BindMount", 22);
    svc.mount("a", "c").unwrap();
    assert_eq!(count(&sys, |c| matches!(c, Call::ChownTree(..))), 0);
    let own = svc.inspect("a").unwrap().presentation.ownership.unwrap();
    assert!(own.reason.contains("already matched"), "{}", own.reason);
}

#[test]
fn ownership_idmap_does_not_fall_back_and_changes_nothing() {
    let (sys, svc) = service();
    create(
        &svc,
        "a",
        "local",
        &[("owner", "184:998"), ("ownership", "idmap")],
    );
    sys.clear_calls();
    sys.fail_next("BindMount", 22);
    let err = svc.mount("a", "c").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(22));
    assert_eq!(count(&sys, |c| matches!(c, Call::ChownTree(..))), 0);
    let v = svc.inspect("a").unwrap();
    assert!(v.consumers.is_empty() && !v.mounted);
}

#[test]
fn ownership_chown_changes_owners_without_a_namespace() {
    let (sys, svc) = service();
    create(
        &svc,
        "a",
        "local",
        &[("owner", "184:998"), ("ownership", "chown")],
    );
    sys.clear_calls();
    svc.mount("a", "c").unwrap();
    assert_eq!(count(&sys, |c| matches!(c, Call::UserNamespace(_))), 0);
    assert_eq!(count(&sys, |c| matches!(c, Call::ChownTree(..))), 1);
    let own = svc.inspect("a").unwrap().presentation.ownership.unwrap();
    assert!(
        own.reason.contains("ownership=chown was asked for"),
        "{}",
        own.reason
    );
}

#[test]
fn labels_are_recorded_where_selinux_is_off() {
    let (sys, svc) = service();
    create(&svc, "a", "local", &[("label", "private")]);
    svc.mount("a", "c").unwrap();
    assert_eq!(count(&sys, |c| matches!(c, Call::RelabelTree(..))), 0);
    let label = svc.inspect("a").unwrap().presentation.label.unwrap();
    assert!(!label.applied);
    assert!(
        label.reason.contains("SELinux is not enabled"),
        "{}",
        label.reason
    );
}

#[test]
fn with_selinux_tmpfs_takes_a_context_option_and_directories_are_relabelled() {
    let (sys, svc) = service();
    sys.set_selinux(true);
    let ctx = "system_u:object_r:container_file_t:s0";
    create(&svc, "mem", "tmpfs", &[("label", "shared")]);
    create(&svc, "dir", "local", &[("label", "shared")]);
    sys.clear_calls();
    svc.mount("mem", "c").unwrap();
    svc.mount("dir", "c").unwrap();
    let calls = sys.calls();
    assert!(
        calls.iter().any(
            |c| matches!(c, Call::MountTmpfs { opts, .. } if opts.context.as_deref() == Some(ctx))
        ),
        "{calls:?}"
    );
    assert_eq!(
        count(&sys, |c| matches!(c, Call::RelabelTree(_, l) if l == ctx)),
        1
    );
    let mem = svc.inspect("mem").unwrap().presentation.label.unwrap();
    assert_eq!(
        (mem.applied, mem.reason.as_str()),
        (true, "context= mount option")
    );
    let dir = svc.inspect("dir").unwrap().presentation.label.unwrap();
    assert!(
        dir.applied && dir.reason.contains("relabelled"),
        "{}",
        dir.reason
    );
}

#[test]
fn unknown_options_list_the_common_ones_too() {
    let (_, svc) = service();
    let err = svc
        .create(CreateRequest {
            name: "x".into(),
            driver: Some("tmpfs".into()),
            options: [("colour".to_string(), "red".to_string())].into(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("valid options: size, mode, uid, gid, owner, uidmap, gidmap, ownership, allow-root, label"), "{err}");
}

#[test]
fn a_sized_local_volume_is_a_limited_subvolume_and_a_failed_limit_leaves_none() {
    let (sys, svc) = service();
    sys.set_subvolumes(true);
    let v = create(&svc, "q", "local", &[("size", "10M")]);
    let dir = std::path::PathBuf::from("/data/volumes").join(v.mountpoint.file_name().unwrap());
    assert_eq!(sys.subvolume_limit(&dir), Some(Some(10 << 20)));
    svc.resize("q", 20 << 20).unwrap();
    assert_eq!(sys.subvolume_limit(&dir), Some(Some(20 << 20)));

    sys.fail_next("LimitSubvolume", libc::EPERM);
    let err = svc
        .create(CreateRequest {
            name: "r".into(),
            options: [("size".to_string(), "10M".to_string())].into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("qgroup"), "{err}");
    assert_eq!(sys.armed_failures(), 0);
    let made: Vec<_> = sys
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::CreateSubvolume(p) if p != dir => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(made.len(), 1);
    assert_eq!(sys.subvolume_limit(&made[0]), None, "rolled back");
    assert!(!sys.dir_exists(&made[0]));
    assert_eq!(svc.list(&Default::default()).unwrap().len(), 1);
}
