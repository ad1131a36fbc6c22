//! Block volumes on data roots made here (ext4, XFS with reflink,
//! btrfs): lifecycle, growth under load, snapshots and
//! clones, a full volume, bad input and kill -9 around attach, mkfs and
//! mount.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use stowage_sys::{LinuxSys, Sys};
use stowage_testkit::{fs_type_at, loop_devices_backing, stderr_of, wait_until, Daemon, ScratchFs};

use crate::BIN;

/// How long a loop device may take to go after its last unmount.
const RELEASE: Duration = Duration::from_secs(2);

fn xfs_root() -> ScratchFs {
    ScratchFs::new("xfs", "3G", &["-m", "reflink=1"], "")
}

pub(crate) fn id_of(d: &Daemon, name: &str) -> String {
    let v = d.inspect(name);
    let mp = PathBuf::from(v["mountpoint"].as_str().unwrap());
    mp.file_name().unwrap().to_string_lossy().into_owned()
}

fn image_of(d: &Daemon, name: &str) -> PathBuf {
    d.data
        .join("images")
        .join(format!("{}.img", id_of(d, name)))
}

pub(crate) fn mount(d: &Daemon, name: &str, consumer: &str) -> PathBuf {
    PathBuf::from(
        d.ok(&["volume", "mount", name, "--consumer", consumer])
            .trim(),
    )
}

pub(crate) fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", stderr_of(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn block_volumes_live_on_loop_devices_only_while_mounted() {
    let root = xfs_root();
    let mut d = Daemon::start_in(BIN, root.path(), &[]);
    for fs in ["ext4", "xfs"] {
        let name = format!("db-{fs}");
        let fs_option = format!("fs={fs}");
        let create = [
            "volume",
            "create",
            &name,
            "-d",
            "block",
            "-o",
            "size=320M",
            "-o",
            &fs_option,
        ];
        // Again with the same options: idempotent.
        d.ok(&create);
        d.ok(&create);
        let image = image_of(&d, &name);
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 320 << 20);
        assert!(
            loop_devices_backing(&image).is_empty(),
            "attached before any mount"
        );

        let v = d.inspect(&name);
        assert_eq!(v["size_bytes"], 320u64 << 20);
        let usage = &v["usage"];
        assert!(
            usage["capacity_bytes"].as_u64().unwrap() > 250 << 20,
            "{usage}"
        );

        let mp = mount(&d, &name, "c1");
        assert_eq!(fs_type_at(&mp).as_deref(), Some(fs));
        assert_eq!(loop_devices_backing(&image).len(), 1);
        std::fs::write(mp.join("data"), vec![42u8; 4 << 20]).unwrap();
        let used = d.inspect(&name)["usage"]["used_bytes"].as_u64().unwrap();
        assert!(used >= 4 << 20, "usage counts the write: {used}");

        // A restart keeps it mounted; kill -9 and restart restores the
        // mount of a volume with a consumer.
        d.stop();
        d.spawn();
        assert_eq!(fs_type_at(&mp).as_deref(), Some(fs));
        d.kill9();
        rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH).unwrap();
        d.spawn();
        assert_eq!(fs_type_at(&mp).as_deref(), Some(fs), "{}", d.log());
        assert_eq!(std::fs::read(mp.join("data")).unwrap().len(), 4 << 20);

        d.ok(&["volume", "unmount", &name, "--consumer", "c1"]);
        assert!(fs_type_at(&mp).is_none());
        // The loop device clears itself once unmounted.
        wait_until("loop device released", RELEASE, || {
            loop_devices_backing(&image).is_empty()
        });
        d.ok(&["volume", "rm", &name]);
        assert!(!image.exists());
    }
    assert!(d.list().is_empty());
}

#[test]
fn bad_block_input_is_refused_and_changes_nothing() {
    let root = xfs_root();
    let d = Daemon::start_in(BIN, root.path(), &[]);
    for (opts, expect) in [
        (vec![], "missing required option size"),
        (vec!["size=-1"], "invalid value \"-1\" for option size"),
        (vec!["size=10Q"], "unknown unit"),
        (vec!["size=0"], "must be positive"),
        (vec!["size=1P"], "not enough space"),
        (vec!["size=1M"], "need at least 16M"),
        (
            vec!["size=400M", "fs=xfs", "inode-ratio=4096"],
            "ext4 option",
        ),
        (vec!["size=100M", "fs=btrfs"], "supported: ext4, xfs"),
        (vec!["size=100M", "fs=xfs"], "need at least 300M"),
        (
            vec!["size=100M", "inode-ratio=4096 -O ^has_journal"],
            "inode-ratio",
        ),
        (vec!["size=100M", "mkfs-args=-E"], "unknown option"),
        (vec!["size=100M", "reserved=90"], "from 0 to 50"),
    ] {
        let mut args = vec!["volume", "create", "bad", "-d", "block"];
        for o in &opts {
            args.extend(["-o", o]);
        }
        let err = d.fails(&args);
        assert!(err.contains(expect), "{opts:?}: {err}");
    }
    assert!(d.list().is_empty());
    let images: Vec<_> = std::fs::read_dir(d.data.join("images")).unwrap().collect();
    assert!(images.is_empty(), "no image left behind");

    d.ok(&["volume", "create", "v", "-d", "block", "-o", "size=32M"]);
    for (size, expect) in [
        ("16M", "shrinking"),
        ("-5", "invalid value"),
        ("1P", "not enough space"),
    ] {
        let err = d.fails(&["volume", "resize", "v", &format!("--size={size}")]);
        assert!(err.contains(expect), "{size}: {err}");
    }
    let err = d.fails(&["volume", "resize", "nope", "--size", "1G"]);
    assert!(err.contains("no such volume"), "{err}");
    let err = d.fails(&["volume", "create", "dir", "-o", "size=1G"]);
    assert!(err.contains("only on a btrfs data root"), "{err}");
    d.ok(&["volume", "create", "dir"]);
    let err = d.fails(&["volume", "resize", "dir", "--size", "1G"]);
    assert!(err.contains("does not support sizes"), "{err}");
    // A tmpfs keeps nothing on the data root: no space check, its own answer.
    d.ok(&["volume", "create", "ram", "-d", "tmpfs"]);
    let err = d.fails(&["volume", "resize", "ram", "--size", "1P"]);
    assert!(err.contains("does not support resizing"), "{err}");
    assert_eq!(d.inspect("v")["size_bytes"], 32u64 << 20);
}

/// Writes `mib` MiB to `file` with dd; returns dd's standard error if it
/// failed.
pub(crate) fn fill(file: &Path, mib: u32) -> Result<(), String> {
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", file.display()),
            "bs=1M",
            &format!("count={mib}"),
            "conv=fsync",
        ])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr_of(&out))
    }
}

/// Appends numbered 4 KiB records to `file` until stopped, fsyncing each.
pub(crate) fn writer(file: &Path) -> std::process::Child {
    let script = format!(
        "i=0; while :; do printf '%4095d\\n' $i | dd of={} bs=4096 seek=$i conv=notrunc,fsync status=none || exit 1; i=$((i+1)); done",
        file.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Checks that `file` holds records 0..n, each complete; returns n.
pub(crate) fn records(file: &Path) -> usize {
    let data = std::fs::read(file).unwrap();
    assert_eq!(data.len() % 4096, 0, "a torn record");
    for (i, rec) in data.chunks(4096).enumerate() {
        let text = std::str::from_utf8(rec).unwrap();
        assert_eq!(text.trim().parse::<usize>().unwrap(), i, "record {i}");
    }
    data.len() / 4096
}

#[test]
fn xfs_volumes_grow_online_while_a_process_writes() {
    let root = xfs_root();
    let d = Daemon::start_in(BIN, root.path(), &[]);
    d.ok(&[
        "volume",
        "create",
        "grow",
        "-d",
        "block",
        "-o",
        "size=320M",
        "-o",
        "fs=xfs",
    ]);
    let mp = mount(&d, "grow", "c");
    let log = mp.join("log");
    let mut w = writer(&log);
    std::thread::sleep(Duration::from_millis(300));
    let before = d.inspect("grow")["usage"]["capacity_bytes"]
        .as_u64()
        .unwrap();
    d.ok(&["volume", "resize", "grow", "--size", "1G"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.try_wait().unwrap().is_none(), "the writer kept running");
    w.kill().unwrap();
    w.wait().unwrap();
    let v = d.inspect("grow");
    assert_eq!(v["size_bytes"], 1u64 << 30);
    let after = v["usage"]["capacity_bytes"].as_u64().unwrap();
    assert!(after > before + (600 << 20), "{before} -> {after}");
    let df = sh(&format!("df -B1 --output=size {} | tail -1", mp.display()));
    assert_eq!(df.trim().parse::<u64>().unwrap(), after);
    assert!(records(&log) > 0);
    // The same size again changes nothing.
    d.ok(&["volume", "resize", "grow", "--size", "1G"]);
}

#[test]
fn ext4_volumes_grow_offline_and_explain_online_limits() {
    let root = xfs_root();
    let d = Daemon::start_in(BIN, root.path(), &[]);
    d.ok(&["volume", "create", "e", "-d", "block", "-o", "size=64M"]);
    let mp = mount(&d, "e", "c");
    std::fs::write(mp.join("keep"), b"kept").unwrap();
    let online = d.cli(&["volume", "resize", "e", "--size", "128M"]);
    // capabilities(7): CAP_SYS_RESOURCE, which ext4's online resize needs.
    let can_resize_online = LinuxSys.has_capability(24);
    if can_resize_online {
        assert!(online.status.success(), "{}", stderr_of(&online));
    } else {
        let err = stderr_of(&online);
        assert!(err.contains("CAP_SYS_RESOURCE"), "{err}");
        assert_eq!(d.inspect("e")["size_bytes"], 64u64 << 20, "nothing changed");
    }
    d.ok(&["volume", "unmount", "e", "--consumer", "c"]);
    d.ok(&["volume", "resize", "e", "--size", "256M"]);
    let v = d.inspect("e");
    assert_eq!(v["size_bytes"], 256u64 << 20);
    assert!(
        v["usage"]["capacity_bytes"].as_u64().unwrap() > 200 << 20,
        "{v}"
    );
    let mp = mount(&d, "e", "c");
    assert_eq!(std::fs::read(mp.join("keep")).unwrap(), b"kept");
}

/// The `block` volume the snapshot tests copy.
const BLOCK_SOURCE: &[&str] = &["-d", "block", "-o", "size=400M", "-o", "fs=xfs"];

/// Snapshots on a data root of a volume created with `source` (driver and
/// options, less than 500M): the method it should use, and a full check of
/// consistency under writes and of clone independence. Returns the daemon,
/// with the copies `restored` (from a snapshot) and `twin` (a 500M clone)
/// still there.
pub(crate) fn snapshot_and_clone(root: &Path, source: &[&str], expected_method: &str) -> Daemon {
    let d = Daemon::start_in(BIN, root, &[]);
    let mut create = vec!["volume", "create", "src"];
    create.extend_from_slice(source);
    d.ok(&create);
    let mp = mount(&d, "src", "c");
    let pattern: Vec<u8> = (0..(8 << 20)).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(mp.join("pattern"), &pattern).unwrap();
    let log = mp.join("log");
    let mut w = writer(&log);
    std::thread::sleep(Duration::from_millis(300));
    d.ok(&["snapshot", "create", "src", "snap1"]);
    // Taking it again returns the same snapshot.
    d.ok(&["snapshot", "create", "src", "snap1"]);
    std::thread::sleep(Duration::from_millis(200));
    w.kill().unwrap();
    w.wait().unwrap();
    let snaps: serde_json::Value =
        serde_json::from_str(&d.ok(&["snapshot", "ls", "--format", "json"])).unwrap();
    assert_eq!(snaps[0]["name"], "snap1");
    assert_eq!(snaps[0]["method"], expected_method, "{snaps}");

    d.ok(&["volume", "create", "restored", "--from-snapshot", "snap1"]);
    let r = mount(&d, "restored", "c");
    assert_eq!(std::fs::read(r.join("pattern")).unwrap(), pattern);
    let in_snapshot = records(&r.join("log"));
    let in_source = records(&log);
    assert!(
        in_snapshot > 0 && in_snapshot <= in_source,
        "{in_snapshot} of {in_source}"
    );

    // A clone of the live volume, then writes to the clone only.
    d.ok(&[
        "volume",
        "create",
        "twin",
        "--clone-of",
        "src",
        "-o",
        "size=500M",
    ]);
    assert_eq!(d.inspect("twin")["size_bytes"], 500u64 << 20);
    let t = mount(&d, "twin", "c");
    std::fs::write(t.join("pattern"), b"changed").unwrap();
    std::fs::write(t.join("new"), b"only in the clone").unwrap();
    assert_eq!(std::fs::read(mp.join("pattern")).unwrap(), pattern);
    assert!(!mp.join("new").exists());
    // The restored volume and the snapshot are independent of the source
    // too: removing both source and snapshot leaves the copies intact.
    d.ok(&["volume", "rm", "-f", "src"]);
    d.ok(&["snapshot", "rm", "snap1"]);
    assert_eq!(std::fs::read(r.join("pattern")).unwrap(), pattern);
    let err = d.fails(&["volume", "create", "x", "--from-snapshot", "snap1"]);
    assert!(err.contains("no such snapshot"), "{err}");
    let err = d.fails(&["snapshot", "create", "dir-less"]);
    assert!(err.contains("no such volume"), "{err}");
    d.ok(&["volume", "create", "t", "-d", "tmpfs"]);
    let err = d.fails(&["snapshot", "create", "t"]);
    assert!(err.contains("does not support snapshots"), "{err}");
    let left: Vec<_> = std::fs::read_dir(d.data.join("snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "snapshot data removed");
    d
}

#[test]
fn snapshots_are_reflinks_on_xfs_and_consistent_under_writes() {
    let root = xfs_root();
    snapshot_and_clone(root.path(), BLOCK_SOURCE, "reflink");
}

#[test]
fn snapshots_are_reflinks_on_btrfs() {
    let root = ScratchFs::new("btrfs", "3G", &[], "");
    snapshot_and_clone(root.path(), BLOCK_SOURCE, "reflink");
}

#[test]
fn snapshots_fall_back_to_sparse_copies_on_ext4() {
    let root = ScratchFs::new("ext4", "3G", &[], "");
    snapshot_and_clone(root.path(), BLOCK_SOURCE, "sparse-copy");
}

#[test]
fn a_full_volume_gives_enospc_and_nothing_else_breaks() {
    let root = xfs_root();
    let d = Daemon::start_in(BIN, root.path(), &[]);
    d.ok(&["volume", "create", "small", "-d", "block", "-o", "size=32M"]);
    d.ok(&["volume", "create", "other", "-d", "block", "-o", "size=32M"]);
    let mp = mount(&d, "small", "c");
    let err = fill(&mp.join("fill"), 64).unwrap_err();
    assert!(err.contains("No space left on device"), "{err}");
    let usage = &d.inspect("small")["usage"];
    assert!(
        usage["available_bytes"].as_u64().unwrap() < 1 << 20,
        "{usage}"
    );
    // The data root, the daemon, the store and other volumes are fine.
    let o = mount(&d, "other", "c");
    std::fs::write(o.join("ok"), b"fine").unwrap();
    d.ok(&["volume", "create", "after"]);
    assert_eq!(d.list().len(), 3);
    std::fs::remove_file(mp.join("fill")).unwrap();
    std::fs::write(mp.join("again"), b"room again").unwrap();
}

/// kill -9 at random instants of block creates and mounts (between image
/// creation, mkfs, loop attach and mount): after each restart every volume
/// is ready and usable, and no loop device or image is left over.
#[test]
fn kill_9_around_attach_mkfs_and_mount_leaks_nothing() {
    let root = xfs_root();
    let mut d = Daemon::start_in(BIN, root.path(), &[]);
    let mut rng = 0x2545F4914F6CDD1Du64;
    for round in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let name = format!("v{}", round % 4);
        let args: Vec<String> = if round % 2 == 0 {
            ["volume", "create", &name, "-d", "block", "-o", "size=64M"]
                .map(String::from)
                .to_vec()
        } else {
            ["volume", "mount", &name, "--consumer", "c"]
                .map(String::from)
                .to_vec()
        };
        let mut child = Command::new(BIN)
            .arg("--host")
            .arg(format!("unix://{}", d.socket().display()))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng % 60));
        d.kill9();
        let _ = child.wait();
        d.spawn();
        check_block_state(&d);
    }
}

fn check_block_state(d: &Daemon) {
    let volumes = d.list();
    let mut images = std::collections::BTreeSet::new();
    for v in &volumes {
        assert_eq!(v["status"], "ready", "{v}");
        let name = v["name"].as_str().unwrap();
        let image = image_of(d, name);
        images.insert(image.file_name().unwrap().to_string_lossy().into_owned());
        let mounted = !v["consumers"].as_array().unwrap().is_empty();
        let mp = PathBuf::from(v["mountpoint"].as_str().unwrap());
        assert_eq!(fs_type_at(&mp).is_some(), mounted, "{v}");
        assert_eq!(
            loop_devices_backing(&image).len(),
            usize::from(mounted),
            "{v}"
        );
        if !mounted {
            // Usable: a good filesystem, not a half-formatted image.
            let mp = mount(d, name, "probe");
            assert_eq!(fs_type_at(&mp).as_deref(), Some("ext4"));
            d.ok(&["volume", "unmount", name, "--consumer", "probe"]);
            wait_until("loop released", RELEASE, || {
                loop_devices_backing(&image).is_empty()
            });
        }
    }
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(d.data.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, images, "images and store disagree");
}

/// A sparse copy tells `inspect` how far it has come while it runs, which
/// the CLI turns into a progress bar; the report ends with the copy.
#[test]
fn a_sparse_copy_reports_its_progress_while_it_runs() {
    let root = ScratchFs::new("ext4", "3G", &[], "");
    let d = Daemon::start_in(BIN, root.path(), &[]);
    d.ok(&[
        "volume", "create", "big", "--driver", "block", "-o", "size=1G",
    ]);
    let mp = mount(&d, "big", "filler");
    sh(&format!(
        "dd if=/dev/zero of={}/data bs=1M count=768 conv=fsync status=none",
        mp.display()
    ));
    d.ok(&["volume", "unmount", "big", "--consumer", "filler"]);

    let mut seen = Vec::new();
    std::thread::scope(|s| {
        let snapshot = s.spawn(|| d.cli(&["snapshot", "create", "big", "big-snap"]));
        while !snapshot.is_finished() {
            let out = d.cli(&["snapshot", "inspect", "big-snap"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let copy = &v[0]["copy"];
                if !copy.is_null() {
                    seen.push((copy["done_bytes"].as_u64(), copy["total_bytes"].as_u64()));
                }
            }
        }
        let out = snapshot.join().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    });
    assert!(!seen.is_empty(), "no progress seen during the copy");
    for (done, total) in &seen {
        let (done, total) = (done.unwrap(), total.unwrap());
        assert!(total >= 768 << 20 && done <= total, "{done}/{total}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["snapshot", "inspect", "big-snap"])).unwrap();
    assert!(v[0]["copy"].is_null(), "progress outlived the copy: {v}");
    assert_eq!(v[0]["method"], "sparse-copy");
}
