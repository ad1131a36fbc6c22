//! Ownership on real filesystems: idmapped mounts on ext4, xfs, btrfs and
//! tmpfs images made here, and the chown fallback on overlay, which refuses
//! idmapping.

use std::path::{Path, PathBuf};
use std::process::Command;

use stowage_testkit::{owner, run, Daemon};

use crate::BIN;

const DISK: u32 = 15149;

/// Mounts a fresh filesystem of `kind` at `base/<kind>` and returns a
/// directory in it holding a file, both owned by `DISK`.
fn filesystem(base: &Path, kind: &str) -> PathBuf {
    let mnt = base.join(kind);
    std::fs::create_dir_all(&mnt).unwrap();
    if kind == "tmpfs" {
        run("mount", &["-t", "tmpfs", "tmpfs", mnt.to_str().unwrap()]);
    } else {
        let img = base.join(format!("{kind}.img"));
        run("truncate", &["-s", "400M", img.to_str().unwrap()]);
        let mkfs = format!("mkfs.{kind}");
        let quiet: &[&str] = match kind {
            "xfs" | "btrfs" => &["-q", "-f"],
            _ => &["-q"],
        };
        let mut args = quiet.to_vec();
        args.push(img.to_str().unwrap());
        run(&mkfs, &args);
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
        );
    }
    seed(&mnt.join("data"))
}

fn seed(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("existing"), b"old data").unwrap();
    for p in [dir.to_path_buf(), dir.join("existing")] {
        std::os::unix::fs::chown(&p, Some(DISK), Some(DISK)).unwrap();
    }
    dir.to_path_buf()
}

/// Writes `name` in `dir` as uid 184 / gid 998, as a container process
/// would: it enters the directory as root and drops privileges there, since
/// the root-only run root is not traversable by 184 (an engine bind-mounts
/// the mountpoint into the container instead).
fn write_as_mongodb(dir: &Path, name: &str) -> std::process::Output {
    Command::new("setpriv")
        .current_dir(dir)
        .args([
            "--reuid",
            "184",
            "--regid",
            "998",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!("echo new > {name}"))
        .output()
        .unwrap()
}

fn presentation(d: &Daemon, name: &str) -> serde_json::Value {
    d.inspect(name)["presentation"].clone()
}

#[test]
fn idmapped_mounts_on_ext4_xfs_btrfs_and_tmpfs() {
    let d = Daemon::start(BIN);
    for kind in ["ext4", "xfs", "btrfs", "tmpfs"] {
        let data = filesystem(&d.base(), kind);
        let name = format!("mongo-{kind}");
        let path = format!("path={}", data.display());
        d.ok(&[
            "volume",
            "create",
            &name,
            "-d",
            "bind",
            "-o",
            &path,
            "-o",
            "owner=184:998",
        ]);
        let mp = PathBuf::from(d.ok(&["volume", "mount", &name, "--consumer", "c"]).trim());
        let p = presentation(&d, &name);
        assert_eq!(p["ownership"]["method"], "idmap", "{kind}: {p}");
        assert_eq!(owner(&mp), (184, 998), "{kind}");
        assert_eq!(owner(&mp.join("existing")), (184, 998), "{kind}");
        // A process running as 184:998 writes; the file lands as DISK.
        let out = write_as_mongodb(&mp, "new");
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(owner(&data.join("new")), (DISK, DISK), "{kind}");
        assert_eq!(
            owner(&data.join("existing")),
            (DISK, DISK),
            "{kind}: nothing chowned"
        );
        d.ok(&["volume", "rm", "--force", &name]);
    }
}

#[test]
fn the_tmpfs_driver_is_idmapped_too() {
    let d = Daemon::start(BIN);
    d.ok(&[
        "volume",
        "create",
        "scratch",
        "-d",
        "tmpfs",
        "-o",
        "uid=15149",
        "-o",
        "gid=15149",
        "-o",
        "owner=184:998",
    ]);
    let mp = PathBuf::from(
        d.ok(&["volume", "mount", "scratch", "--consumer", "c"])
            .trim(),
    );
    assert_eq!(owner(&mp), (184, 998));
    let out = write_as_mongodb(&mp, "f");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(presentation(&d, "scratch")["ownership"]["method"], "idmap");
}

#[test]
fn overlay_refuses_idmap_and_falls_back_to_a_recursive_chown() {
    let d = Daemon::start(BIN);
    let base = d.base().join("overlay");
    for dir in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir_all(base.join(dir)).unwrap();
    }
    seed(&base.join("lower/data"));
    std::fs::create_dir_all(base.join("lower/data/sub")).unwrap();
    std::os::unix::fs::chown(base.join("lower/data/sub"), Some(DISK), Some(DISK)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", base.join("lower/data/link")).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.join("lower").display(),
        base.join("upper").display(),
        base.join("work").display()
    );
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            base.join("merged").to_str().unwrap(),
        ],
    );
    let data = base.join("merged/data");
    let passwd = owner(Path::new("/etc/passwd"));

    // ownership=idmap refuses to fall back.
    let path = format!("path={}", data.display());
    d.ok(&[
        "volume",
        "create",
        "strict",
        "-d",
        "bind",
        "-o",
        &path,
        "-o",
        "owner=184:998",
        "-o",
        "ownership=idmap",
    ]);
    let err = d.fails(&["volume", "mount", "strict", "--consumer", "c"]);
    assert!(err.contains("Invalid argument"), "{err}");
    assert_eq!(
        owner(&data),
        (DISK, DISK),
        "a refused mount changes nothing"
    );
    d.ok(&["volume", "rm", "strict"]);

    d.ok(&[
        "volume",
        "create",
        "ov",
        "-d",
        "bind",
        "-o",
        &path,
        "-o",
        "owner=184:998",
    ]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "ov", "--consumer", "c"]).trim());
    let p = presentation(&d, "ov");
    assert_eq!(p["ownership"]["method"], "chown", "{p}");
    assert!(
        p["ownership"]["reason"]
            .as_str()
            .unwrap()
            .contains("refuses idmapped mounts"),
        "{p}"
    );
    for f in ["", "existing", "sub"] {
        assert_eq!(owner(&data.join(f)), (184, 998), "{f}");
    }
    assert_eq!(
        owner(&data.join("link")),
        (0, 0),
        "the symlink is not the owner's"
    );
    assert_eq!(owner(Path::new("/etc/passwd")), passwd, "never followed");
    assert!(write_as_mongodb(&mp, "new").status.success());
    d.ok(&["volume", "unmount", "ov", "--consumer", "c"]);

    // Mounting again finds the root already matching: nothing to walk.
    d.ok(&["volume", "mount", "ov", "--consumer", "c"]);
    let reason = presentation(&d, "ov")["ownership"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("already matched"), "{reason}");
}
