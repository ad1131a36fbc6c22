//! Several daemons on one etcd: what every node shares (the volumes'
//! specs) and what each keeps for itself (its mounts), on a real etcd.
//! The three-host tests in network namespaces build on these.

use std::path::Path;

use stowage_testkit::csi::attach;
use stowage_testkit::etcd::{Certs, Etcd};
use stowage_testkit::{fs_type_at, stderr_of, Daemon};

use crate::BIN;

fn node(etcd: &Etcd, id: &str) -> Daemon {
    let store = format!("etcd://{}", etcd.endpoint);
    Daemon::start_with(BIN, &["--store", &store, "--node-id", id])
}

fn is_mounted(p: &Path) -> bool {
    fs_type_at(p).is_some()
}

#[test]
fn nodes_on_one_etcd_see_every_volume_and_keep_their_mounts_to_themselves() {
    let etcd = Etcd::start();
    let a = node(&etcd, "node-a");
    let mut b = node(&etcd, "node-b");

    a.ok(&["volume", "create", "shared", "--label", "app=web"]);
    b.ok(&["volume", "create", "b-own"]);
    // Every node answers every read, and says where the data lives.
    for d in [&a, &b] {
        assert_eq!(d.names(), ["b-own", "shared"]);
        assert_eq!(d.inspect("shared")["node"], "node-a");
        assert_eq!(d.inspect("b-own")["node"], "node-b");
    }
    // Only the home node can reach node-local storage.
    let refused = b.fails(&["volume", "mount", "shared", "--consumer", "c1"]);
    assert!(refused.contains("node-a"), "{refused}");
    let path = a.ok(&["volume", "mount", "shared", "--consumer", "c1"]);
    let path = Path::new(path.trim());
    assert!(is_mounted(path));
    assert_eq!(a.inspect("shared")["consumers"], serde_json::json!(["c1"]));

    // A peer's restart reconciles its own volumes only: node-a's mount
    // and consumer stay.
    b.stop();
    b.spawn();
    assert!(is_mounted(path));
    assert_eq!(a.inspect("shared")["consumers"], serde_json::json!(["c1"]));
    // Removal is the home node's too.
    let refused = b.fails(&["volume", "rm", "--force", "shared"]);
    assert!(refused.contains("node-a"), "{refused}");
    // Pruning on a node leaves other nodes' volumes alone.
    let pruned = b.ok(&["volume", "prune", "-f"]);
    assert!(
        pruned.contains("b-own") && !pruned.contains("shared"),
        "{pruned}"
    );

    a.ok(&["volume", "unmount", "shared", "--consumer", "c1"]);
    assert!(!is_mounted(path));
    a.ok(&["volume", "rm", "shared"]);
    assert!(b.names().is_empty());
}

#[test]
fn a_node_reaches_etcd_over_tls_with_its_certificate() {
    let certs = Certs::make(&["127.0.0.1"]);
    let etcd = Etcd::start_tls(&certs);
    let store = format!("etcd://{}", etcd.endpoint);
    let (ca, cert, key) = (
        certs.ca.to_str().unwrap(),
        certs.client_cert.to_str().unwrap(),
        certs.client_key.to_str().unwrap(),
    );
    let d = Daemon::start_with(
        BIN,
        &[
            "--store",
            &store,
            "--node-id",
            "tls-node",
            "--etcd-ca",
            ca,
            "--etcd-cert",
            cert,
            "--etcd-key",
            key,
        ],
    );
    d.ok(&["volume", "create", "over-tls"]);
    assert_eq!(d.inspect("over-tls")["node"], "tls-node");
}

#[test]
fn an_etcd_that_cannot_be_reached_stops_the_start_with_a_reason() {
    let mut etcd = Etcd::start();
    let endpoint = etcd.endpoint.clone();
    etcd.kill();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--run-root")
        .arg(dir.path().join("run"))
        .args(["--store", &format!("etcd://{endpoint}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("connecting to etcd at http://{endpoint}")),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 15,
        "took {:?}",
        started.elapsed()
    );
    // Nothing listens: no socket was bound before the store answered.
    assert!(!dir.path().join("run/stowage.sock").exists());
}

#[test]
fn a_data_root_starts_only_under_the_node_name_it_was_first_given() {
    let mut d = Daemon::start_with(BIN, &["--node-id", "first"]);
    d.ok(&["volume", "create", "homed"]);
    d.stop();
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--data-root")
        .arg(&d.data)
        .arg("--run-root")
        .arg(&d.run)
        .args(["--node-id", "second"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("belongs to node \"first\""), "{err}");
    d.spawn();
    assert_eq!(d.inspect("homed")["node"], "first");
}

fn states(d: &Daemon) -> Vec<(String, String)> {
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["node", "ls", "--format", "json"])).unwrap();
    nodes
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().into(),
                n["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn nodes_are_ready_cordoned_or_down_as_their_leases_say() {
    let etcd = Etcd::start();
    let store = format!("etcd://{}", etcd.endpoint);
    let args = |id: &'static str| {
        vec![
            "--store".to_string(),
            store.clone(),
            "--node-id".into(),
            id.into(),
            "--node-ttl".into(),
            "2".into(),
            "--advertise".into(),
            format!("{id}.test:7000"),
            "--node-label".into(),
            format!("zone={id}"),
        ]
    };
    let start = |id: &'static str| {
        let a = args(id);
        Daemon::start_with(BIN, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let a = start("node-a");
    let mut b = start("node-b");
    let mut c = start("node-c");
    c.ok(&["volume", "create", "on-c"]);
    assert_eq!(
        states(&a),
        pairs(&[
            ("node-a", "ready"),
            ("node-b", "ready"),
            ("node-c", "ready")
        ])
    );
    let table = b.ok(&["node", "ls"]);
    assert!(
        table.contains("node-a.test:7000") && table.contains("zone=node-a"),
        "{table}"
    );

    // Cordoned from any node, seen by every node; a heartbeat keeps it.
    a.ok(&["node", "cordon", "node-b"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(states(&c)[1], pairs(&[("node-b", "cordoned")])[0]);
    a.ok(&["node", "uncordon", "node-b"]);
    assert_eq!(states(&c)[1], pairs(&[("node-b", "ready")])[0]);
    assert!(a
        .fails(&["node", "cordon", "nobody"])
        .contains("no such node"));

    // A clean stop shows at once; kill -9 once the lease (2 s) ends.
    b.stop();
    assert_eq!(states(&a)[1].1, "down");
    let killed = std::time::Instant::now();
    c.kill9();
    stowage_testkit::wait_until(
        "node-c down within TTL + 5 s",
        std::time::Duration::from_secs(7),
        || states(&a)[2].1 == "down",
    );
    eprintln!("node-c down {:?} after kill -9 (TTL 2 s)", killed.elapsed());

    // An up node is not removed; a down one holding data only with --force.
    assert!(a.fails(&["node", "rm", "node-a"]).contains("is up"));
    a.ok(&["node", "rm", "node-b"]);
    let refused = a.fails(&["node", "rm", "node-c"]);
    assert!(
        refused.contains("on-c") && refused.contains("--force"),
        "{refused}"
    );
    a.ok(&["node", "rm", "--force", "node-c"]);
    assert_eq!(states(&a), pairs(&[("node-a", "ready")]));
    assert!(a.names().is_empty());
    // A removed node that comes back joins again.
    b.spawn();
    assert_eq!(states(&a).len(), 2);
}

#[test]
fn a_volume_is_placed_on_the_node_asked_made_there_and_used_there() {
    let etcd = Etcd::start();
    let store = format!("etcd://{}", etcd.endpoint);
    let start = |id: &str, zone: &str| {
        let label = format!("zone={zone}");
        Daemon::start_with(
            BIN,
            &["--store", &store, "--node-id", id, "--node-label", &label],
        )
    };
    let a = start("node-a", "east");
    let mut b = start("node-b", "west");
    let c = start("node-c", "west");

    // Asked of node-a, made by node-b, which alone can mount it.
    a.ok(&["volume", "create", "placed", "--node", "node-b"]);
    assert_eq!(a.inspect("placed")["node"], "node-b");
    assert_eq!(a.inspect("placed")["status"], "ready");
    let path = b.ok(&["volume", "mount", "placed", "--consumer", "c1"]);
    assert!(is_mounted(Path::new(path.trim())));
    assert!(a
        .fails(&["volume", "mount", "placed", "--consumer", "c2"])
        .contains("node-b"));
    // Asking again with the same spec is the same volume; another is a conflict.
    a.ok(&["volume", "create", "placed", "--node", "node-b"]);
    assert!(a
        .fails(&[
            "volume",
            "create",
            "placed",
            "--node",
            "node-b",
            "-o",
            "mode=0700"
        ])
        .contains("already exists"));

    // Any ready node whose labels match.
    a.ok(&[
        "volume",
        "create",
        "in-west",
        "--node",
        "any",
        "--node-selector",
        "zone=west",
    ]);
    let home = a.inspect("in-west")["node"].as_str().unwrap().to_string();
    assert!(home == "node-b" || home == "node-c", "{home}");
    let none = a.fails(&[
        "volume",
        "create",
        "nowhere",
        "--node-selector",
        "zone=north",
    ]);
    assert!(none.contains("no ready node"), "{none}");
    assert!(a
        .fails(&["volume", "create", "x", "--node", "nobody"])
        .contains("no such node"));

    // A home node that cannot make it says why, through the asking node.
    let refused = a.fails(&[
        "volume",
        "create",
        "too-big",
        "--driver",
        "block",
        "-o",
        "size=100T",
        "--node",
        "node-c",
    ]);
    assert!(
        refused.contains("could not be made on node node-c"),
        "{refused}"
    );
    assert!(!a.names().contains(&"too-big".to_string()));

    // Nothing is placed on a cordoned or a down node.
    a.ok(&["node", "cordon", "node-c"]);
    assert!(a
        .fails(&["volume", "create", "y", "--node", "node-c"])
        .contains("cordoned"));
    b.ok(&["volume", "unmount", "placed", "--consumer", "c1"]);
    b.stop();
    assert!(a
        .fails(&["volume", "create", "z", "--node", "node-b"])
        .contains("is down"));
    drop(c);
}

#[test]
fn access_modes_hold_across_nodes_at_every_door() {
    let etcd = Etcd::start();
    let store = format!("etcd://{}", etcd.endpoint);
    let start = |id: &str| {
        Daemon::start_with(
            BIN,
            &["--store", &store, "--node-id", id, "--node-ttl", "2"],
        )
    };
    let a = start("node-a");
    let mut b = start("node-b");
    // A directory every node reaches alike: a cluster filesystem's stand-in.
    let shared = tempfile::tempdir().unwrap();
    let path = shared.path().canonicalize().unwrap();
    let create = |name: &str, mode: &str| {
        a.ok(&[
            "volume",
            "create",
            name,
            "--driver",
            "bind",
            "-o",
            &format!("path={}", path.display()),
            "-o",
            "scope=cluster",
            "--access",
            mode,
        ]);
    };

    // rwo: the node that uses it holds it; REST, Docker and CSI on the
    // other node are refused, naming the holder.
    create("one-node", "rwo");
    assert_eq!(b.inspect("one-node")["access"], "rwo");
    assert!(b.inspect("one-node").get("node").is_none(), "no home node");
    a.ok(&["volume", "mount", "one-node", "--consumer", "c1"]);
    let refused = b.fails(&["volume", "mount", "one-node", "--consumer", "c2"]);
    assert!(refused.contains("node node-a holds it"), "{refused}");
    let docker = b.plugin_call("Mount", r#"{"Name":"one-node","ID":"c3"}"#);
    assert!(
        docker["Err"].as_str().unwrap().contains("node-a"),
        "{docker}"
    );
    let csi = attach(&b.csi_socket(), "one-node", "node-b").unwrap_err();
    assert_eq!(csi.code(), tonic::Code::FailedPrecondition, "{csi:?}");
    let seen = b.inspect("one-node");
    assert_eq!(seen["held_by"], "node-a");
    assert_eq!(
        seen["consumers_by_node"]["node-a"],
        serde_json::json!(["c1"])
    );
    a.ok(&["volume", "unmount", "one-node", "--consumer", "c1"]);

    // An exclusive CSI attachment keeps Docker and REST elsewhere out:
    // the hole where any mount ignored attachments is closed.
    attach(&a.csi_socket(), "one-node", "node-b").unwrap();
    let docker = a.plugin_call("Mount", r#"{"Name":"one-node","ID":"c4"}"#);
    assert!(
        docker["Err"].as_str().unwrap().contains("node-b"),
        "{docker}"
    );
    let refused = a.fails(&["volume", "rm", "one-node"]);
    assert!(refused.contains("attached to node node-b"), "{refused}");
    // Its node dies: the attachment ends with its lease (TTL 2 s), and the
    // volume is usable elsewhere within TTL + 5 s.
    let killed = std::time::Instant::now();
    b.kill9();
    stowage_testkit::wait_until(
        "the dead node's claim to end",
        std::time::Duration::from_secs(7),
        || a.inspect("one-node").get("held_by").is_none(),
    );
    eprintln!("released {:?} after kill -9", killed.elapsed());
    attach(&a.csi_socket(), "one-node", "node-a").unwrap();
    let v = a.inspect("one-node");
    assert_eq!(v["held_by"], "node-a");
    assert_eq!(v["attachments"].as_object().unwrap().len(), 1, "{v}");
    b.spawn();

    // rwop: one consumer in the whole cluster.
    create("one-consumer", "rwop");
    a.ok(&["volume", "mount", "one-consumer", "--consumer", "only"]);
    a.fails(&["volume", "mount", "one-consumer", "--consumer", "second"]);
    b.fails(&["volume", "mount", "one-consumer", "--consumer", "second"]);

    // rox: every node mounts it, and no one writes through it.
    create("readers", "rox");
    let pa = a.ok(&["volume", "mount", "readers", "--consumer", "r1"]);
    let pb = b.ok(&["volume", "mount", "readers", "--consumer", "r2"]);
    for p in [pa.trim(), pb.trim()] {
        let err = std::fs::write(Path::new(p).join("f"), b"x").unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ReadOnlyFilesystem,
            "{p}: {err}"
        );
    }
    assert_eq!(
        a.inspect("readers")["consumers_by_node"]
            .as_object()
            .unwrap()
            .len(),
        2
    );

    // rwx: every node mounts it read-write, and sees the others' writes.
    create("everyone", "rwx");
    let pa = a.ok(&["volume", "mount", "everyone", "--consumer", "w1"]);
    let pb = b.ok(&["volume", "mount", "everyone", "--consumer", "w2"]);
    std::fs::write(Path::new(pa.trim()).join("from-a"), b"a").unwrap();
    assert_eq!(
        std::fs::read(Path::new(pb.trim()).join("from-a")).unwrap(),
        b"a"
    );

    // Node-local storage takes no mode it cannot give.
    let refused = a.fails(&["volume", "create", "local-many", "--access", "rwx"]);
    assert!(refused.contains("allows rwo, rwop, rox"), "{refused}");
    for (d, c, v) in [
        (&a, "w1", "everyone"),
        (&b, "w2", "everyone"),
        (&a, "r1", "readers"),
        (&b, "r2", "readers"),
        (&a, "only", "one-consumer"),
    ] {
        d.ok(&["volume", "unmount", v, "--consumer", c]);
    }
}
