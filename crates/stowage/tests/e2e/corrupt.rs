//! One record that cannot be read stops nothing but itself: the daemon
//! starts, lists it as corrupt with the reason, keeps its mounts, and
//! refuses operations on it alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use stowage_testkit::{fs_type_at, Daemon};

use crate::BIN;

/// Overwrites the stored value of volume `name` with `value`, through
/// Python's sqlite3 module (the daemon is stopped).
fn overwrite_record(db: &Path, name: &str, value: &str) {
    let script = "import sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1])\n\
        n = c.execute(\"UPDATE entries SET value = ? WHERE collection = 'volumes' AND key = ?\", (sys.argv[3].encode(), sys.argv[2])).rowcount\n\
        c.commit()\n\
        assert n == 1, n\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .args([name, value])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_corrupt_record_is_listed_and_refused_while_the_rest_works() {
    let mut d = Daemon::start(BIN);
    for name in ["good", "bad", "lost"] {
        d.ok(&["volume", "create", name]);
    }
    let bad_at = PathBuf::from(
        d.ok(&["volume", "mount", "bad", "--consumer", "app"])
            .trim(),
    );
    let bad_id = bad_at.file_name().unwrap().to_str().unwrap().to_string();
    d.stop();
    // Truncated JSON that still names its id, and garbage.
    let truncated = format!(r#"{{"id":"{bad_id}","name":"bad","driver":"loc"#);
    overwrite_record(&d.data.join("stowage.db"), "bad", &truncated);
    overwrite_record(&d.data.join("stowage.db"), "lost", "\u{1}not json");
    d.spawn();
    assert!(d.log().contains("record cannot be read"), "{}", d.log());

    let list = d.list();
    let status = |n: &str| {
        let v = list.iter().find(|v| v["name"] == n).unwrap();
        (
            v["status"].as_str().unwrap().to_string(),
            v["corrupt"].as_str().map(str::to_string),
        )
    };
    assert_eq!(status("good"), ("ready".into(), None));
    for n in ["bad", "lost"] {
        let (s, reason) = status(n);
        assert_eq!(s, "corrupt");
        assert!(!reason.unwrap().is_empty());
        assert_eq!(d.inspect(n)["status"], "corrupt");
        for op in [
            &["volume", "mount", n, "--consumer", "c"][..],
            &["volume", "rm", n],
        ] {
            let err = d.fails(op);
            assert!(err.contains("cannot be read"), "{op:?}: {err}");
        }
    }
    // Its mount is kept: it may have consumers that the record would show.
    assert!(fs_type_at(&bad_at).is_some());
    let at = d.ok(&["volume", "mount", "good", "--consumer", "c"]);
    assert!(Path::new(at.trim()).exists());
    d.ok(&["volume", "unmount", "good", "--consumer", "c"]);
    assert!(d.ok(&["volume", "ls"]).contains("corrupt"));
}
