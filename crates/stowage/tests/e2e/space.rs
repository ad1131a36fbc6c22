//! A data root that runs out of space: callers are told it is full (507,
//! `resource_exhausted`), not that Stowage failed.

use std::io::Write;
use std::path::Path;

use stowage_testkit::{Daemon, ScratchFs};

use crate::BIN;

/// Writes `path` until the filesystem holding it has no space left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 16];
    while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
}

fn post_create(d: &Daemon, name: &str) -> String {
    let body = format!(r#"{{"name":"{name}"}}"#);
    let request = format!(
        "POST /v1/volumes HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    d.raw(request.as_bytes())
}

#[test]
fn a_full_data_root_is_reported_as_insufficient_storage() {
    let fs = ScratchFs::new("ext4", "32M", &["-m", "0"], "");
    let d = Daemon::start_in(BIN, fs.path(), &[]);
    d.ok(&["volume", "create", "before"]);
    let filler = fs.path().join("filler");
    fill(&filler);
    let answer = post_create(&d, "after");
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
    assert!(answer.contains("resource_exhausted"), "{answer}");
    std::fs::remove_file(&filler).unwrap();
    d.ok(&["volume", "create", "after"]);
    let names: Vec<String> = d
        .list()
        .iter()
        .map(|v| v["name"].as_str().unwrap().into())
        .collect();
    assert_eq!(names, ["after", "before"]);
}

#[test]
fn one_directory_for_two_roots_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_str().unwrap();
    for args in [
        [
            "--data-root",
            p,
            "--run-root",
            p,
            "--plugin-dir",
            "/run/docker/plugins",
        ],
        [
            "--data-root",
            "/nonexistent/d",
            "--run-root",
            p,
            "--plugin-dir",
            p,
        ],
    ] {
        let out = std::process::Command::new(BIN)
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("must be different directories"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("another stowage daemon"), "{err}");
    }
}
