//! Bad input at every door gets a clear error and changes nothing.

use crate::harness::Daemon;

/// Everything an attacker could have changed: the volumes and the mounts.
fn snapshot(d: &Daemon) -> (Vec<serde_json::Value>, Vec<std::path::PathBuf>) {
    (d.list(), d.mounts())
}

#[test]
fn bad_cli_input_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "existing"]);
    d.ok(&["volume", "mount", "existing", "--consumer", "c1"]);
    let srv = d.base().join("srv");
    std::fs::create_dir_all(srv.join("real")).unwrap();
    std::os::unix::fs::symlink(srv.join("real"), srv.join("link")).unwrap();
    std::fs::write(srv.join("file"), b"").unwrap();
    let p = |s: &str| format!("path={}", s.replace("SRV", srv.to_str().unwrap()));
    let data_inside = format!("path={}/volumes", d.data.display());
    let long = "x".repeat(129);

    let before = snapshot(&d);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["volume", "create", "../etc"]
                .into_iter()
                .map(String::from)
                .collect(),
            "invalid volume name",
        ),
        (
            vec!["volume", "create", "a/b"]
                .into_iter()
                .map(String::from)
                .collect(),
            "not allowed",
        ),
        (
            vec!["volume".into(), "create".into(), long.clone()],
            "longer than 128 bytes",
        ),
        (
            vec!["volume", "create", "-x"]
                .into_iter()
                .map(String::from)
                .collect(),
            "unexpected argument",
        ),
        (
            vec!["volume", "create", "v", "-o", "colour=red"]
                .into_iter()
                .map(String::from)
                .collect(),
            "valid options: uid, gid, mode",
        ),
        (
            vec!["volume", "create", "v", "-o", "uid=-1"]
                .into_iter()
                .map(String::from)
                .collect(),
            "invalid value",
        ),
        (
            vec!["volume", "create", "v", "-d", "tmpfs", "-o", "size=10Q"]
                .into_iter()
                .map(String::from)
                .collect(),
            "expected a size",
        ),
        (
            vec![
                "volume",
                "create",
                "v",
                "-d",
                "tmpfs",
                "-o",
                "size=1m,mode=777",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "expected a size",
        ),
        (
            vec!["volume", "create", "v", "-d", "nfs"]
                .into_iter()
                .map(String::from)
                .collect(),
            "unknown driver",
        ),
        (
            vec!["volume", "create", "v", "-d", "bind"]
                .into_iter()
                .map(String::from)
                .collect(),
            "missing required option path",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "v".into(),
                "-d".into(),
                "bind".into(),
                "-o".into(),
                p("relative"),
            ],
            "absolute",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "v".into(),
                "-d".into(),
                "bind".into(),
                "-o".into(),
                p("SRV/real/../../etc"),
            ],
            "normalised",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "v".into(),
                "-d".into(),
                "bind".into(),
                "-o".into(),
                p("SRV/link"),
            ],
            "symlink",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "v".into(),
                "-d".into(),
                "bind".into(),
                "-o".into(),
                p("SRV/file"),
            ],
            "not a directory",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "v".into(),
                "-d".into(),
                "bind".into(),
                "-o".into(),
                data_inside,
            ],
            "data or run root",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "v".into(),
                "-d".into(),
                "bind".into(),
                "-o".into(),
                "path=/".into(),
            ],
            "data or run root",
        ),
        (
            vec!["volume", "rm", "existing"]
                .into_iter()
                .map(String::from)
                .collect(),
            "in use by c1",
        ),
        (
            vec!["volume", "rm", "../../etc"]
                .into_iter()
                .map(String::from)
                .collect(),
            "invalid volume name",
        ),
        (
            vec!["volume", "mount", "existing", "--consumer", ""]
                .into_iter()
                .map(String::from)
                .collect(),
            "invalid consumer id",
        ),
        (
            vec!["volume", "mount", "missing", "--consumer", "c"]
                .into_iter()
                .map(String::from)
                .collect(),
            "no such volume",
        ),
        (
            vec!["volume", "ls", "--filter", "colour=red"]
                .into_iter()
                .map(String::from)
                .collect(),
            "known filters",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = d.fails(&args);
        assert!(
            err.contains(needle),
            "stowage {args:?}: expected {needle:?} in {err:?}"
        );
    }
    assert_eq!(snapshot(&d), before, "refused requests changed nothing");
}

#[test]
fn malformed_and_oversized_rest_bodies_are_refused() {
    let d = Daemon::start();
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
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
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
