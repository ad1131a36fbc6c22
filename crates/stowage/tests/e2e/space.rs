//! A data root that runs out of space: callers are told it is full (507,
//! `resource_exhausted`), not that Stowage failed.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use stowage_testkit::{holds_within, Daemon, ScratchFs};

use crate::BIN;

/// Writes `path` until the filesystem holding it has no space left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    // Large pieces first, then single blocks, so that not even a
    // directory's block is left.
    for size in [1 << 16, 1 << 12, 1] {
        let chunk = vec![0xa5u8; size];
        while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
    }
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
    assert_eq!(d.names(), ["after", "before"]);
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

fn create_block(d: &Daemon, name: &str, size: &str, extra: &[&str]) -> std::process::Output {
    let size = format!("size={size}");
    let mut args = vec!["volume", "create", name, "--driver", "block", "-o", &size];
    args.extend_from_slice(extra);
    d.cli(&args)
}

#[test]
fn sizes_are_committed_against_the_data_root_and_overcommit_is_refused() {
    let fs = ScratchFs::new("ext4", "256M", &["-m", "0"], "");
    let d = Daemon::start_in(BIN, fs.path(), &[]);
    assert!(create_block(&d, "a", "90M", &[]).status.success());
    assert!(create_block(&d, "b", "90M", &[]).status.success());
    // Each alone fits in the free space; together they would promise more
    // than the data root holds.
    let out = create_block(&d, "c", "90M", &[]);
    assert!(!out.status.success());
    let err = stowage_testkit::stderr_of(&out);
    assert!(
        err.contains("would commit") && err.contains("--overcommit-ratio"),
        "{err}"
    );
    let err = d.fails(&["volume", "resize", "a", "--size", "180M"]);
    assert!(err.contains("would commit"), "{err}");
    let err = d.fails(&["snapshot", "create", "a", "a-snap"]);
    assert!(err.contains("would commit"), "{err}");
    assert_eq!(d.names(), ["a", "b"]);

    // An operator who accepts the risk says so.
    let fs2 = ScratchFs::new("ext4", "256M", &["-m", "0"], "");
    let d2 = Daemon::start_in(BIN, fs2.path(), &["--overcommit-ratio", "2"]);
    for name in ["a", "b", "c"] {
        assert!(
            create_block(&d2, name, "90M", &[]).status.success(),
            "{name}"
        );
    }
}

/// Writes `mib` MiB of a pattern to `path` and syncs it; whether that
/// succeeded.
fn write_synced(path: &Path, mib: usize) -> bool {
    let of = format!("of={}", path.display());
    let count = format!("count={mib}");
    std::process::Command::new("dd")
        .args(["if=/dev/urandom", &of, "bs=1M", &count, "conv=fsync"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_full_data_root_fails_thin_writers_loudly_and_spares_thick_ones() {
    let fs = ScratchFs::new("ext4", "320M", &["-m", "0"], "");
    let d = Daemon::start_in(BIN, fs.path(), &["--space-check-interval", "1"]);
    assert!(create_block(&d, "thin", "96M", &[]).status.success());
    let thick = create_block(&d, "thick", "96M", &["-o", "provisioning=thick"]);
    assert!(
        thick.status.success(),
        "{}",
        stowage_testkit::stderr_of(&thick)
    );
    let allocated = |n: &str| d.inspect(n)["space"]["allocated_bytes"].as_u64().unwrap();
    assert!(allocated("thick") >= 96 << 20, "{}", allocated("thick"));
    assert!(allocated("thin") < 48 << 20, "{}", allocated("thin"));
    assert!(d.inspect("thin")["space"]["at_risk"].is_null());

    let thin_at =
        std::path::PathBuf::from(d.ok(&["volume", "mount", "thin", "--consumer", "c"]).trim());
    let thick_at = std::path::PathBuf::from(
        d.ok(&["volume", "mount", "thick", "--consumer", "c"])
            .trim(),
    );
    let filler = fs.path().join("filler");
    fill(&filler);
    // The daemon's own check says so, with nobody looking; once.
    assert!(
        holds_within(Duration::from_secs(10), || d
            .log()
            .contains("volume at risk volume=thin")),
        "{}",
        d.log()
    );

    let risk = d.inspect("thin")["space"]["at_risk"]
        .as_str()
        .map(str::to_string);
    assert!(
        risk.as_deref().is_some_and(|r| r.contains("I/O errors")),
        "{risk:?}"
    );
    assert!(d.inspect("thick")["space"]["at_risk"].is_null());
    assert_eq!(
        d.log().matches("volume at risk volume=thin").count(),
        1,
        "{}",
        d.log()
    );
    assert!(
        !d.log().contains("volume at risk volume=thick"),
        "{}",
        d.log()
    );

    // The thick volume's writers need nothing from the data root.
    assert!(
        write_synced(&thick_at.join("data"), 48),
        "a thick volume's write failed"
    );
    // A thin one's fail, and say so: never a success that lost the data.
    assert!(
        !write_synced(&thin_at.join("data"), 48),
        "a write past the full data root succeeded"
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(
        holds_within(Duration::from_secs(10), || {
            d.log().contains("volume no longer at risk volume=thin")
        }),
        "{}",
        d.log()
    );
    d.ok(&["volume", "unmount", "thin", "--consumer", "c"]);
    d.ok(&["volume", "unmount", "thick", "--consumer", "c"]);
}
