//! A lost or emptied database beside volumes' data: the daemon refuses to
//! start rather than forget the volumes and tear down their mounts, and
//! data no record accounts for is reported, never deleted.

use std::path::PathBuf;

use stowage_testkit::{fs_type_at, Daemon};

use crate::BIN;

#[test]
fn an_empty_or_missing_store_beside_volume_data_is_refused_at_start() {
    let mut d = Daemon::start(BIN);
    d.ok(&["volume", "create", "kept"]);
    let at = PathBuf::from(
        d.ok(&["volume", "mount", "kept", "--consumer", "app"])
            .trim(),
    );
    std::fs::write(at.join("precious"), b"data").unwrap();
    d.stop();
    let db = d.data.join("stowage.db");
    for (how, damage) in [
        (
            "emptied",
            Box::new(|| std::fs::write(&db, b"").unwrap()) as Box<dyn Fn()>,
        ),
        ("removed", Box::new(|| std::fs::remove_file(&db).unwrap())),
    ] {
        let saved = std::fs::read(&db).unwrap();
        for side in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(d.data.join(format!("stowage.db{side}")));
        }
        damage();
        let log = d.start_refused();
        assert!(log.contains("never been written to"), "{how}: {log}");
        assert!(log.contains("restore the database"), "{how}: {log}");
        // The consumer's mount and the data are untouched.
        assert!(fs_type_at(&at).is_some(), "{how}: the mount was torn down");
        assert_eq!(std::fs::read(at.join("precious")).unwrap(), b"data");
        std::fs::write(&db, saved).unwrap();
    }
    d.spawn();
    assert_eq!(d.inspect("kept")["consumers"][0], "app");
    d.ok(&["volume", "unmount", "kept", "--consumer", "app"]);
}

#[test]
fn orphaned_data_is_reported_and_left_in_place() {
    let mut d = Daemon::start(BIN);
    d.ok(&["volume", "create", "v"]);
    d.stop();
    let stray = d
        .data
        .join("volumes")
        .join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("file"), b"x").unwrap();
    d.spawn();
    let log = d.log();
    assert!(log.contains("no volume or snapshot accounts for"), "{log}");
    assert!(log.contains(stray.to_str().unwrap()), "{log}");
    assert!(stray.join("file").exists());
    d.ok(&["volume", "rm", "v"]);
    assert!(stray.join("file").exists());
}
