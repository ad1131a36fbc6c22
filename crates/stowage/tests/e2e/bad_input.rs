//! Bad input at every door gets a clear error and changes nothing.

use stowage_testkit::Daemon;

use crate::BIN;

/// Everything an attacker could have changed: the volumes and the mounts.
fn snapshot(d: &Daemon) -> (Vec<serde_json::Value>, Vec<std::path::PathBuf>) {
    (d.list(), d.mounts())
}

#[test]
fn bad_cli_input_is_refused_and_changes_nothing() {
    let d = Daemon::start(BIN);
    d.ok(&["volume", "create", "existing"]);
    d.ok(&["volume", "mount", "existing", "--consumer", "c1"]);
    let srv = d.base().join("srv");
    std::fs::create_dir_all(srv.join("real")).unwrap();
    std::os::unix::fs::symlink(srv.join("real"), srv.join("link")).unwrap();
    std::fs::write(srv.join("file"), b"").unwrap();

    let before = snapshot(&d);
    // Each command line is split on spaces after SRV, DATA and LONG are
    // replaced.
    let cases = [
        ("volume create ../etc", "invalid volume name"),
        ("volume create a/b", "not allowed"),
        ("volume create LONG", "longer than 128 bytes"),
        ("volume create -x", "unexpected argument"),
        (
            "volume create v -o colour=red",
            "valid options: uid, gid, mode",
        ),
        ("volume create v -o uid=-1", "invalid value"),
        ("volume create v -d tmpfs -o size=10Q", "expected a size"),
        (
            "volume create v -d tmpfs -o size=1m,mode=777",
            "expected a size",
        ),
        (
            "volume create v -d tmpfs -o size=17179869184g",
            "size too large",
        ),
        (
            "volume create v -d tmpfs -o size=18014398509481988k",
            "size too large",
        ),
        ("volume create v -d nfs", "unknown driver"),
        ("volume create v -d bind", "missing required option path"),
        ("volume create v -d bind -o path=relative", "absolute"),
        (
            "volume create v -d bind -o path=SRV/real/../../etc",
            "normalised",
        ),
        ("volume create v -d bind -o path=SRV/link", "symlink"),
        (
            "volume create v -d bind -o path=SRV/file",
            "not a directory",
        ),
        (
            "volume create v -d bind -o path=DATA/volumes",
            "data or run root",
        ),
        ("volume create v -d bind -o path=/", "data or run root"),
        ("volume rm existing", "in use by c1"),
        ("volume rm ../../etc", "invalid volume name"),
        ("volume mount missing --consumer c", "no such volume"),
        (
            "volume mount existing --consumer a\tb",
            "invalid consumer id",
        ),
        ("volume ls --filter colour=red", "known filters"),
    ];
    for (line, needle) in cases {
        let line = line
            .replace("SRV", srv.to_str().unwrap())
            .replace("DATA", d.data.to_str().unwrap())
            .replace("LONG", &"x".repeat(129));
        let args: Vec<&str> = line.split(' ').collect();
        let err = d.fails(&args);
        assert!(
            err.contains(needle),
            "stowage {line}: expected {needle:?} in {err:?}"
        );
    }
    let err = d.fails(&["volume", "mount", "existing", "--consumer", ""]);
    assert!(err.contains("invalid consumer id"), "{err}");
    assert_eq!(snapshot(&d), before, "refused requests changed nothing");
}

#[test]
fn malformed_and_oversized_rest_bodies_are_refused() {
    let d = Daemon::start(BIN);
    let before = snapshot(&d);
    let post = |body: &[u8]| {
        let mut req = format!(
            "POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        d.raw(&req)
    };
    let answer = post(b"{\"name\": ");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_request"), "{answer}");
    let answer = post(br#"{"name":"v","driver":"local","extra":true}"#);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("unknown field"), "{answer}");
    let huge = format!(
        r#"{{"name":"v","labels":{{"k":"{}"}}}}"#,
        "x".repeat(8 << 20)
    );
    let answer = post(huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    let answer = d.raw(b"GARBAGE\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(snapshot(&d), before);
    d.ok(&["volume", "create", "still-works"]);
}
