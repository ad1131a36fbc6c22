//! `local` volumes on a btrfs data root are subvolumes: sizes enforced as
//! qgroup limits and grown online, snapshots and clones as subvolume
//! snapshots. On other data roots a size or a snapshot is refused.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stowage_testkit::{Daemon, ScratchFs};

use crate::block::{fill, id_of, mount, sh, snapshot_and_clone};
use crate::BIN;

/// The inode number of every btrfs subvolume's root.
const SUBVOLUME_ROOT_INO: u64 = 256;

fn btrfs_root() -> ScratchFs {
    // Room for every size the tests promise: sizes are committed whole.
    ScratchFs::new("btrfs", "3G", &[], "")
}

fn volume_dir(d: &Daemon, name: &str) -> PathBuf {
    d.data.join("volumes").join(id_of(d, name))
}

fn is_subvolume(path: &Path) -> bool {
    std::fs::metadata(path).unwrap().ino() == SUBVOLUME_ROOT_INO
}

/// The volume's usage after a sync, since btrfs accounts qgroups at each
/// transaction commit.
fn usage(d: &Daemon, name: &str, mp: &Path) -> serde_json::Value {
    sh(&format!("sync -f {}", mp.display()));
    d.inspect(name)["usage"].clone()
}

#[test]
fn local_volumes_on_btrfs_are_subvolumes_with_enforced_sizes() {
    let root = btrfs_root();
    let d = Daemon::start_in(BIN, root.path(), &[]);
    d.ok(&["volume", "create", "q", "-o", "size=32M"]);
    d.ok(&["volume", "create", "other"]);
    assert!(is_subvolume(&volume_dir(&d, "q")));
    assert!(is_subvolume(&volume_dir(&d, "other")));
    assert_eq!(d.inspect("q")["size_bytes"], 32u64 << 20);
    assert!(d.inspect("other")["usage"].is_null(), "no size, no usage");

    let mp = mount(&d, "q", "c");
    let err = fill(&mp.join("fill"), 64).unwrap_err();
    assert!(err.contains("Disk quota exceeded"), "{err}");
    let u = usage(&d, "q", &mp);
    assert_eq!(u["capacity_bytes"], 32u64 << 20, "{u}");
    let used = u["used_bytes"].as_u64().unwrap();
    assert!(used > 24 << 20 && used <= 32 << 20, "{u}");
    assert!(u["available_bytes"].as_u64().unwrap() < 8 << 20, "{u}");

    // The limit is the volume's own: other volumes, the data root and the
    // daemon carry on.
    let o = mount(&d, "other", "c");
    fill(&o.join("big"), 64).unwrap();
    d.ok(&["volume", "create", "after"]);
    // A volume made without a size can be given one.
    d.ok(&["volume", "resize", "other", "--size", "128M"]);
    assert_eq!(usage(&d, "other", &o)["capacity_bytes"], 128u64 << 20);

    // Growing changes the limit online, while mounted.
    d.ok(&["volume", "resize", "q", "--size", "96M"]);
    std::fs::remove_file(mp.join("fill")).unwrap();
    fill(&mp.join("fill"), 64).unwrap();
    for i in 0..10 {
        std::fs::write(mp.join(format!("f{i}")), b"x").unwrap();
    }
    let u = usage(&d, "q", &mp);
    assert_eq!(u["capacity_bytes"], 96u64 << 20, "{u}");
    assert!(u["used_bytes"].as_u64().unwrap() >= 64 << 20, "{u}");
    // The root, fill and f0..f9.
    assert_eq!(u["inodes_used"], 12, "{u}");
    let err = d.fails(&["volume", "resize", "q", "--size", "64M"]);
    assert!(err.contains("shrinking"), "{err}");
    let err = d.fails(&["volume", "resize", "q", "--size", "10Q"]);
    assert!(err.contains("unknown unit"), "{err}");

    // A subvolume a consumer made inside does not stop the removal.
    sh(&format!("btrfs -q subvolume create {}/inner", mp.display()));
    std::fs::write(mp.join("inner/file"), b"nested").unwrap();
    let dir = volume_dir(&d, "q");
    d.ok(&["volume", "unmount", "q", "--consumer", "c"]);
    d.ok(&["volume", "rm", "q"]);
    assert!(!dir.exists());
    let listed = sh(&format!("btrfs subvolume list {}", root.path().display()));
    assert!(
        !listed.contains(dir.file_name().unwrap().to_str().unwrap()),
        "{listed}"
    );
}

#[test]
fn local_snapshots_on_btrfs_are_subvolume_snapshots() {
    let root = btrfs_root();
    // Consistency under writes, restore, clone independence: as for block.
    let d = snapshot_and_clone(
        root.path(),
        &["-o", "size=200M", "-o", "uid=1000"],
        "subvolume",
    );
    for (name, capacity) in [("restored", 200u64 << 20), ("twin", 500 << 20)] {
        assert!(is_subvolume(&volume_dir(&d, name)), "{name}");
        let dir = volume_dir(&d, name);
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), 1000, "{name}");
        assert_eq!(
            d.inspect(name)["usage"]["capacity_bytes"],
            capacity,
            "{name}"
        );
    }
    // A snapshot is a read-only subvolume.
    d.ok(&["snapshot", "create", "twin", "frozen"]);
    let snaps: Vec<_> = std::fs::read_dir(d.data.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snaps.len(), 1);
    assert!(is_subvolume(&snaps[0]));
    let err = std::fs::write(snaps[0].join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    d.ok(&["snapshot", "rm", "frozen"]);
    assert_eq!(
        std::fs::read_dir(d.data.join("snapshots")).unwrap().count(),
        0
    );
}

#[test]
fn local_sizes_and_snapshots_are_refused_off_btrfs() {
    let root = ScratchFs::new("ext4", "256M", &[], "");
    let d = Daemon::start_in(BIN, root.path(), &[]);
    let err = d.fails(&["volume", "create", "sized", "-o", "size=10M"]);
    assert!(err.contains("only on a btrfs data root"), "{err}");
    assert!(d.list().is_empty());
    d.ok(&["volume", "create", "plain"]);
    assert!(!is_subvolume(&volume_dir(&d, "plain")));
    let err = d.fails(&["snapshot", "create", "plain"]);
    assert!(err.contains("plain directory"), "{err}");
    assert_eq!(
        std::fs::read_dir(d.data.join("snapshots")).unwrap().count(),
        0
    );
    let err = d.fails(&["volume", "create", "copy", "--clone-of", "plain"]);
    assert!(err.contains("plain directory"), "{err}");
    assert_eq!(d.list().len(), 1);
}

/// kill -9 at random instants of sized creates, snapshots, restores and
/// removals: after each restart every volume and snapshot is ready and is a
/// subvolume (volumes with their limit), and no subvolume is left over.
#[test]
fn kill_9_around_subvolume_work_leaves_store_and_disk_agreeing() {
    let root = btrfs_root();
    let mut d = Daemon::start_in(BIN, root.path(), &[]);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut seen = (0, 0);
    for round in 0..16 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = round / 4 % 2;
        let (v, s, c) = (format!("v{n}"), format!("s{n}"), format!("c{n}"));
        let args: Vec<&str> = match round % 4 {
            0 => vec!["volume", "create", &v, "-o", "size=16M"],
            1 => vec!["snapshot", "create", &v, &s],
            2 => vec!["volume", "create", &c, "--from-snapshot", &s],
            _ => vec!["volume", "rm", "-f", &v],
        };
        let mut child = Command::new(BIN)
            .arg("--host")
            .arg(format!("unix://{}", d.socket().display()))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if n == 0 {
            // Half the rounds let the work finish first, so that there is
            // always state for the kills to threaten.
            let _ = child.wait();
        } else {
            std::thread::sleep(Duration::from_millis(rng % 15));
        }
        d.kill9();
        let _ = child.wait();
        d.spawn();
        let (volumes, snapshots) = check_subvolume_state(&d);
        seen = (seen.0.max(volumes), seen.1.max(snapshots));
    }
    // The checks above did see volumes and snapshots.
    assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
}

/// Checks store against disk; returns how many volumes and snapshots
/// there are.
fn check_subvolume_state(d: &Daemon) -> (usize, usize) {
    let names = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(d.data.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut ids = BTreeSet::new();
    for v in d.list() {
        assert_eq!(v["status"], "ready", "{v}");
        let name = v["name"].as_str().unwrap();
        let dir = volume_dir(d, name);
        assert!(is_subvolume(&dir), "{v}");
        assert_eq!(d.inspect(name)["usage"]["capacity_bytes"], 16 << 20, "{v}");
        ids.insert(dir.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(names("volumes"), ids, "volumes on disk and in the store");
    let snaps: serde_json::Value =
        serde_json::from_str(&d.ok(&["snapshot", "ls", "--format", "json"])).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert!(snaps.iter().all(|s| s["status"] == "ready"), "{snaps:?}");
    let on_disk = names("snapshots");
    assert_eq!(on_disk.len(), snaps.len(), "{on_disk:?} against {snaps:?}");
    for id in &on_disk {
        assert!(is_subvolume(&d.data.join("snapshots").join(id)), "{id}");
    }
    (ids.len(), snaps.len())
}
