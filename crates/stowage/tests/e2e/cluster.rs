//! Several daemons on one etcd: what every node shares (the volumes'
//! specs) and what each keeps for itself (its mounts), on a real etcd.
//! The three-host tests in network namespaces build on these.

use std::path::Path;

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
