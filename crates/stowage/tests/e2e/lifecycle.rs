//! The full lifecycle on each driver, restarts, and the data-root lock.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stowage_testkit::{fs_type_at, stderr_of, Daemon};

use crate::BIN;

fn mountpoint(d: &Daemon, name: &str) -> PathBuf {
    PathBuf::from(d.inspect(name)["mountpoint"].as_str().unwrap())
}

#[test]
fn local_volume_lifecycle() {
    let d = Daemon::start(BIN);
    let create = [
        "volume",
        "create",
        "mongodata",
        "-o",
        "uid=184",
        "-o",
        "gid=998",
        "-o",
        "mode=0750",
        "--label",
        "app=mongo",
    ];
    assert_eq!(d.ok(&create), "mongodata\n");
    assert_eq!(d.ok(&create), "mongodata\n", "create is idempotent");
    let err = d.fails(&["volume", "create", "mongodata", "-o", "uid=1"]);
    assert!(
        err.contains("already exists with different options"),
        "{err}"
    );

    let v = d.inspect("mongodata");
    assert_eq!(v["driver"], "local");
    assert_eq!(v["options"]["uid"], "184");
    assert_eq!(v["labels"]["app"], "mongo");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["consumers"].as_array().unwrap().len(), 0);
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));

    // Mount: a real bind mount at a stable path, owned as asked.
    let path = d.ok(&["volume", "mount", "mongodata", "--consumer", "c1"]);
    let path = PathBuf::from(path.trim());
    assert_eq!(path, mountpoint(&d, "mongodata"));
    assert!(path.starts_with(&d.run));
    assert_eq!(d.mounts(), vec![path.clone()]);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (184, 998, 0o750)
    );
    std::fs::write(path.join("db.dat"), b"persist me").unwrap();

    // Reference counting: the same consumer counts once; the last one out
    // releases the kernel mount.
    assert_eq!(
        d.ok(&["volume", "mount", "mongodata", "--consumer", "c1"])
            .trim(),
        path.to_str().unwrap()
    );
    d.ok(&["volume", "mount", "mongodata", "--consumer", "c2"]);
    assert_eq!(d.mounts().len(), 1);
    assert_eq!(
        d.inspect("mongodata")["consumers"],
        serde_json::json!(["c1", "c2"])
    );
    let err = d.fails(&["volume", "rm", "mongodata"]);
    assert!(err.contains("in use by c1, c2"), "{err}");
    d.ok(&["volume", "unmount", "mongodata", "--consumer", "c1"]);
    assert_eq!(d.mounts().len(), 1);
    d.ok(&["volume", "unmount", "mongodata", "--consumer", "c2"]);
    assert!(d.mounts().is_empty());
    d.ok(&["volume", "unmount", "mongodata", "--consumer", "c2"]);

    // The data outlives the mount.
    let again = PathBuf::from(
        d.ok(&["volume", "mount", "mongodata", "--consumer", "c3"])
            .trim(),
    );
    assert_eq!(std::fs::read(again.join("db.dat")).unwrap(), b"persist me");
    d.ok(&["volume", "unmount", "mongodata", "--consumer", "c3"]);

    // Filters and formats.
    d.ok(&["volume", "create", "other", "--label", "app=web"]);
    let names = |args: &[&str]| d.ok(args).lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(names(&["volume", "ls", "-q"]), ["mongodata", "other"]);
    assert_eq!(
        names(&["volume", "ls", "-q", "--filter", "label=app=web"]),
        ["other"]
    );
    assert_eq!(
        names(&["volume", "ls", "-q", "--filter", "driver=tmpfs"]),
        Vec::<String>::new()
    );
    let table = d.ok(&["volume", "ls"]);
    assert!(table.starts_with("DRIVER"), "{table}");
    assert!(table.contains("mongodata"), "{table}");

    let volume_dirs = std::fs::read_dir(d.data.join("volumes")).unwrap().count();
    assert_eq!(volume_dirs, 2);
    assert_eq!(
        d.ok(&["volume", "rm", "mongodata", "other"]),
        "mongodata\nother\n"
    );
    assert_eq!(
        std::fs::read_dir(d.data.join("volumes")).unwrap().count(),
        0
    );
    let err = d.fails(&["volume", "inspect", "mongodata"]);
    assert!(err.contains("no such volume: mongodata"), "{err}");
}

#[test]
fn tmpfs_volume_lifecycle() {
    let d = Daemon::start(BIN);
    d.ok(&[
        "volume",
        "create",
        "scratch",
        "-d",
        "tmpfs",
        "-o",
        "size=1m",
        "-o",
        "mode=1777",
    ]);
    let path = PathBuf::from(
        d.ok(&["volume", "mount", "scratch", "--consumer", "c"])
            .trim(),
    );
    assert_eq!(fs_type_at(&path).as_deref(), Some("tmpfs"));
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o1777);
    // The size is enforced by the kernel.
    let big = vec![0u8; 2 << 20];
    let err = std::fs::write(path.join("big"), &big).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC");
    d.ok(&["volume", "unmount", "scratch", "--consumer", "c"]);
    assert!(d.mounts().is_empty());
    d.ok(&["volume", "rm", "scratch"]);
}

#[test]
fn bind_volume_lifecycle_never_deletes_host_data() {
    let d = Daemon::start(BIN);
    let srv = d.base().join("srv/data");
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::write(srv.join("existing"), b"host data").unwrap();
    let opt = format!("path={}", srv.display());
    d.ok(&["volume", "create", "imported", "-d", "bind", "-o", &opt]);
    let path = PathBuf::from(
        d.ok(&["volume", "mount", "imported", "--consumer", "c"])
            .trim(),
    );
    assert_eq!(std::fs::read(path.join("existing")).unwrap(), b"host data");
    std::fs::write(path.join("new"), b"from container").unwrap();
    assert_eq!(std::fs::read(srv.join("new")).unwrap(), b"from container");
    d.ok(&["volume", "rm", "--force", "imported"]);
    assert!(d.mounts().is_empty());
    assert!(srv.join("existing").exists() && srv.join("new").exists());
}

#[test]
fn bind_source_swapped_for_a_symlink_is_refused_at_mount() {
    let d = Daemon::start(BIN);
    let srv = d.base().join("srv/data");
    std::fs::create_dir_all(&srv).unwrap();
    let opt = format!("path={}", srv.display());
    d.ok(&["volume", "create", "imported", "-d", "bind", "-o", &opt]);
    std::fs::remove_dir(&srv).unwrap();
    std::os::unix::fs::symlink("/etc", &srv).unwrap();
    let err = d.fails(&["volume", "mount", "imported", "--consumer", "c"]);
    assert!(err.contains("symlink"), "{err}");
    assert!(d.mounts().is_empty());
    assert!(d.inspect("imported")["consumers"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn volumes_and_mounts_survive_a_restart() {
    let mut d = Daemon::start(BIN);
    d.ok(&["volume", "create", "keep"]);
    d.ok(&["volume", "create", "mem", "-d", "tmpfs"]);
    let keep = PathBuf::from(d.ok(&["volume", "mount", "keep", "--consumer", "c"]).trim());
    let mem = PathBuf::from(d.ok(&["volume", "mount", "mem", "--consumer", "c"]).trim());
    std::fs::write(mem.join("f"), b"in memory").unwrap();
    d.stop();
    // A stopped daemon leaves its consumers' mounts alone.
    assert_eq!(d.mounts().len(), 2);
    d.spawn();
    assert_eq!(d.mounts().len(), 2, "reconcile keeps live mounts");
    assert_eq!(std::fs::read(mem.join("f")).unwrap(), b"in memory");
    assert_eq!(d.inspect("keep")["consumers"], serde_json::json!(["c"]));
    d.ok(&["volume", "unmount", "keep", "--consumer", "c"]);
    assert!(!is_mounted(&keep));
}

fn is_mounted(p: &Path) -> bool {
    fs_type_at(p).is_some()
}

#[test]
fn a_second_daemon_on_the_same_data_root_refuses_to_start() {
    let d = Daemon::start(BIN);
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--data-root")
        .arg(&d.data)
        .arg("--run-root")
        .arg(d.base().join("run2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("another stowage daemon"), "{err}");
    assert!(err.contains("data root"), "{err}");
    // The first daemon is unharmed.
    d.ok(&["volume", "ls"]);
}

#[test]
fn help_explains_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["volume", "--help"],
        vec!["volume", "create", "--help"],
        vec!["volume", "ls", "--help"],
        vec!["volume", "mount", "--help"],
        vec!["volume", "rm", "--help"],
        vec!["volume", "prune", "--help"],
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let out = std::process::Command::new(BIN)
        .args(["volume", "create", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["--driver", "--opt", "--label", "uid", "size", "path"] {
        assert!(text.contains(word), "create --help lacks {word}: {text}");
    }
}

#[test]
fn prune_removes_only_volumes_without_consumers() {
    let d = Daemon::start(BIN);
    for n in ["a", "b", "c"] {
        d.ok(&["volume", "create", n]);
    }
    d.ok(&["volume", "mount", "b", "--consumer", "c"]);
    let err = d.fails(&["volume", "prune"]);
    assert!(err.contains("pass --force"), "{err}");
    assert_eq!(d.list().len(), 3, "an unconfirmed prune removes nothing");
    let out = d.ok(&["volume", "prune", "-f"]);
    assert!(out.contains("Total: 2 volume(s) removed"), "{out}");
    assert_eq!(d.names(), ["b"]);
}

/// A service manager may stop the daemon the moment it answers: the
/// signal handlers are in place before the first socket is, so SIGTERM
/// always ends in a clean exit (`stop` asserts the exit status).
#[test]
fn sigterm_the_moment_the_daemon_answers_is_a_clean_stop() {
    let mut d = Daemon::start(BIN);
    for _ in 0..20 {
        d.stop();
        d.spawn();
    }
    d.stop();
}
