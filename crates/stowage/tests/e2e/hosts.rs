//! Three hosts, each a network namespace with its own etcd member and its
//! own Stowage daemon (own data, run and plugin roots), on one test
//! network: the cluster as it runs on three machines, and its faults.

use std::path::Path;
use std::time::{Duration, Instant};

use stowage_api::csi::TOPOLOGY_KEY as TOPOLOGY;
use stowage_testkit::csi::{attach, mount_cap, proto};
use stowage_testkit::etcd::Etcd;
use stowage_testkit::netns::TestNet;
use stowage_testkit::{holds_within, wait_until, Daemon, Podman, IMAGE};

use crate::BIN;

/// The lease TTL the hosts run with, in seconds: above the time the
/// client takes to drop a connection to a member gone silent (3 s), which
/// one renewal may wait for.
const TTL: u64 = 5;

/// Dropped in this order: daemons, then etcd, then the network.
struct Cluster {
    nodes: Vec<Daemon>,
    etcd: Vec<Etcd>,
    net: TestNet,
    /// A directory every host reaches alike: a cluster filesystem's
    /// stand-in, for volumes of `scope=cluster`.
    shared: tempfile::TempDir,
    /// The sealing key file every host is given.
    _keys: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let net = TestNet::new(3);
        let etcd = Etcd::cluster(&net.hosts);
        let endpoints = (etcd.iter().map(|m| m.endpoint.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let store = format!("etcd://{endpoints}");
        let ttl = TTL.to_string();
        let keys = tempfile::tempdir().unwrap();
        let key_file = keys.path().join("sealing.key");
        let key = stowage_core::secret::SealingKey::generate_file_text().unwrap();
        std::fs::write(&key_file, key.as_bytes()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&key_file, mode).unwrap();
        let key_file = key_file.to_string_lossy().into_owned();
        let nodes = (net.hosts.iter().enumerate())
            .map(|(i, h)| {
                let (id, zone) = (format!("h{i}"), format!("zone=z{}", i % 2));
                let args = [
                    "--store",
                    &store,
                    "--node-id",
                    &id,
                    "--advertise",
                    &h.addr,
                    "--node-ttl",
                    &ttl,
                    "--node-label",
                    &zone,
                    "--sealing-key-file",
                    &key_file,
                ];
                Daemon::start_on(BIN, h, &args)
            })
            .collect::<Vec<Daemon>>();
        // A daemon answers before it has joined.
        wait_until("every host to join", Duration::from_secs(20), || {
            states(&nodes[0])
                .iter()
                .filter(|(_, s)| s == "ready")
                .count()
                == 3
        });
        Cluster {
            nodes,
            etcd,
            net,
            shared: tempfile::tempdir().unwrap(),
            _keys: keys,
        }
    }

    /// Creates a volume on the shared directory, from host 0.
    fn create_shared(&self, name: &str, access: &str) {
        let path = self.shared.path().canonicalize().unwrap();
        self.nodes[0].ok(&[
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
            access,
        ]);
    }
}

/// `node ls` as (id, state) pairs.
fn states(d: &Daemon) -> Vec<(String, String)> {
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["node", "ls", "--format", "json"])).unwrap();
    (nodes.iter())
        .map(|n| {
            (
                n["id"].as_str().unwrap().into(),
                n["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn state_of(d: &Daemon, id: &str) -> String {
    let all = states(d);
    let found = all.iter().find(|(n, _)| n == id);
    found.map_or("absent".into(), |(_, s)| s.clone())
}

#[test]
fn three_hosts_are_one_system_at_every_door() {
    let c = Cluster::start();
    let [h0, h1, h2] = &c.nodes[..] else {
        unreachable!()
    };
    for d in [h0, h1, h2] {
        assert_eq!(
            states(d),
            [("h0", "ready"), ("h1", "ready"), ("h2", "ready")].map(|(a, b)| (a.into(), b.into()))
        );
    }
    let table = h1.ok(&["node", "ls"]);
    assert!(table.contains(&c.net.hosts[2].addr), "{table}");

    // Created on one host, seen on all; placed where asked.
    h0.ok(&["volume", "create", "here"]);
    h0.ok(&["volume", "create", "there", "--node", "h2"]);
    for d in [h0, h1, h2] {
        assert_eq!(d.names(), ["here", "there"]);
        assert_eq!(d.inspect("there")["node"], "h2");
    }
    let path = h2.ok(&["volume", "mount", "there", "--consumer", "c1"]);
    assert!(stowage_testkit::fs_type_at(Path::new(path.trim())).is_some());
    let refused = h1.fails(&["volume", "mount", "there", "--consumer", "c2"]);
    assert!(refused.contains("h2"), "{refused}");
    h2.ok(&["volume", "unmount", "there", "--consumer", "c1"]);

    // A cordoned host takes nothing new, asked by name or by selector.
    h2.ok(&["node", "cordon", "h0"]);
    assert_eq!(state_of(h1, "h0"), "cordoned");
    assert!(h1
        .fails(&["volume", "create", "no", "--node", "h0"])
        .contains("cordoned"));
    // h0 and h2 are in zone z0: with h0 cordoned, only h2 matches.
    h1.ok(&[
        "volume",
        "create",
        "in-z0",
        "--node",
        "any",
        "--node-selector",
        "zone=z0",
    ]);
    assert_eq!(h0.inspect("in-z0")["node"], "h2");
    h2.ok(&["node", "uncordon", "h0"]);

    // CSI topology: placed on the first ready node preferred, reported
    // as reachable from there; a requisite no ready node meets is refused.
    let (placed, capacity) = csi_topology(h1, "by-topology", &["h2"], &["h0", "h2"]);
    let placed = placed.unwrap();
    assert_eq!(placed.accessible_topology[0].segments[TOPOLOGY], "h2");
    assert_eq!(h0.inspect("by-topology")["node"], "h2");
    assert!(capacity > 0, "h2's free bytes, seen from h1: {capacity}");
    let (refused, capacity) = csi_topology(h1, "nowhere", &[], &["h9"]);
    let refused = refused.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("h9"), "{refused:?}");
    assert_eq!(capacity, 0, "an unknown node has no capacity");
    assert!(!h0.names().contains(&"nowhere".to_string()));

    // rwo: held by the host that mounts it; the other hosts' REST,
    // Docker plugin and CSI doors are refused, naming the holder.
    c.create_shared("one-host", "rwo");
    h0.ok(&["volume", "mount", "one-host", "--consumer", "c1"]);
    let refused = h1.fails(&["volume", "mount", "one-host", "--consumer", "c2"]);
    assert!(refused.contains("node h0 holds it"), "{refused}");
    let docker = h2.plugin_call("Mount", r#"{"Name":"one-host","ID":"c3"}"#);
    assert!(docker["Err"].as_str().unwrap().contains("h0"), "{docker}");
    let csi = attach(&h1.csi_socket(), "one-host", "h1").unwrap_err();
    assert_eq!(csi.code(), tonic::Code::FailedPrecondition, "{csi:?}");
    assert_eq!(h2.inspect("one-host")["held_by"], "h0");
    h0.ok(&["volume", "unmount", "one-host", "--consumer", "c1"]);
    // Released, it is anyone's: attached to h2 through h1's CSI door.
    attach(&h1.csi_socket(), "one-host", "h2").unwrap();
    assert_eq!(h0.inspect("one-host")["held_by"], "h2");

    // rox: mounted read-only on every host.
    c.create_shared("readers", "rox");
    for (i, d) in [h0, h1, h2].into_iter().enumerate() {
        let p = d.ok(&["volume", "mount", "readers", "--consumer", &format!("r{i}")]);
        let err = std::fs::write(Path::new(p.trim()).join("f"), b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ReadOnlyFilesystem);
    }
    let by_node = h1.inspect("readers")["consumers_by_node"].clone();
    assert_eq!(by_node.as_object().unwrap().len(), 3, "{by_node}");
    for (i, d) in [h0, h1, h2].into_iter().enumerate() {
        d.ok(&[
            "volume",
            "unmount",
            "readers",
            "--consumer",
            &format!("r{i}"),
        ]);
    }

    // A container on host 0, through its plugin socket, on a volume made
    // for host 0 from host 1's CLI.
    h1.ok(&["volume", "create", "for-podman", "--node", "h0"]);
    let dir = tempfile::tempdir().unwrap();
    let plugin = format!("stowage-hosts-{}", std::process::id());
    let podman = Podman::configure(
        &dir.path().join("podman"),
        &plugin,
        &h0.base().join("plugins/stowage.sock"),
    );
    podman.import_image(dir.path());
    podman.ok(&["volume", "reload"]);
    let listed = podman.ok(&["volume", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        listed.lines().any(|l| l == format!("for-podman {plugin}")),
        "{listed}"
    );
    let run = |script: &str| {
        podman.ok(&[
            "run",
            "--rm",
            "--network=none",
            "-v",
            "for-podman:/d",
            IMAGE,
            "sh",
            "-c",
            script,
        ])
    };
    run("echo from-a-container > /d/f");
    assert_eq!(run("cat /d/f").trim(), "from-a-container");
    // The container's data is the volume's, seen from the third host.
    let seen = h2.inspect("for-podman");
    assert!(seen.get("consumers_by_node").is_none(), "{seen}");
    let path = h0.ok(&["volume", "mount", "for-podman", "--consumer", "check"]);
    let data = std::fs::read_to_string(Path::new(path.trim()).join("f")).unwrap();
    assert_eq!(data.trim(), "from-a-container");
    h0.ok(&["volume", "unmount", "for-podman", "--consumer", "check"]);
    podman.clean();
}

#[test]
fn a_host_cut_off_goes_down_loses_its_claims_and_rejoins_with_nothing_lost() {
    let mut c = Cluster::start();

    // Losing one etcd member of three changes nothing visible, even to the
    // host whose member it was.
    c.etcd[1].kill();
    c.nodes[1].ok(&["volume", "create", "while-m1-died", "--node", "h2"]);
    assert!(c.nodes[2].names().contains(&"while-m1-died".to_string()));
    assert_eq!(state_of(&c.nodes[0], "h1"), "ready");
    c.etcd[1].restart();

    // Host 2 uses a volume of its own and holds an exclusive attachment.
    let local = c.nodes[2].ok(&["volume", "mount", "while-m1-died", "--consumer", "app"]);
    c.create_shared("exclusive", "rwo");
    attach(&c.nodes[0].csi_socket(), "exclusive", "h2").unwrap();
    assert_eq!(c.nodes[0].inspect("exclusive")["held_by"], "h2");

    let cut = Instant::now();
    c.net.partition(2);
    let (h0, h2) = (&c.nodes[0], &c.nodes[2]);
    let within = Duration::from_secs(TTL + 5);
    wait_until("h2 down on h0 within TTL + 5 s", within, || {
        state_of(h0, "h2") == "down"
    });
    let down = cut.elapsed();
    wait_until("h2's claim released within TTL + 5 s", within, || {
        h0.inspect("exclusive").get("held_by").is_none()
    });
    let released = cut.elapsed();
    eprintln!("partitioned h2: down after {down:?}, its claim released after {released:?}");
    attach(&h0.csi_socket(), "exclusive", "h0").unwrap();
    assert_eq!(c.nodes[1].inspect("exclusive")["held_by"], "h0");

    // The cut-off host refuses cluster writes, quickly and clearly.
    let t = Instant::now();
    let refused = h2.fails(&["volume", "create", "from-the-island"]);
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "refused after {:?}",
        t.elapsed()
    );
    assert!(
        refused.contains("unavailable") || refused.contains("lease"),
        "{refused}"
    );
    let refused = h2.fails(&["volume", "mount", "exclusive", "--consumer", "x"]);
    assert!(!refused.is_empty());
    // Meanwhile the others go on.
    h0.ok(&["volume", "create", "during-the-cut"]);

    // Healed: it rejoins, sees what was made meanwhile, and still has its
    // own mount and consumer; its old claim stays given up.
    c.net.heal(2);
    wait_until("h2 ready again", Duration::from_secs(20), || {
        state_of(h0, "h2") == "ready"
    });
    wait_until(
        "h2 to republish its consumer",
        Duration::from_secs(10),
        || h0.inspect("while-m1-died")["consumers_by_node"]["h2"] == serde_json::json!(["app"]),
    );
    assert!(stowage_testkit::fs_type_at(Path::new(local.trim())).is_some());
    assert!(h2.names().contains(&"during-the-cut".to_string()));
    assert!(!h0.names().contains(&"from-the-island".to_string()));
    assert_eq!(h2.inspect("exclusive")["held_by"], "h0");
    h2.ok(&["volume", "create", "after-the-cut"]);
    h2.ok(&["volume", "unmount", "while-m1-died", "--consumer", "app"]);

    // kill -9 of a daemon: its node goes down, and on restart it
    // reconciles its own mounts only.
    c.nodes[1].ok(&["volume", "create", "on-h1"]);
    let mounted = c.nodes[1].ok(&["volume", "mount", "on-h1", "--consumer", "k"]);
    c.nodes[1].kill9();
    wait_until("h1 down", within, || state_of(&c.nodes[0], "h1") == "down");
    c.nodes[1].spawn();
    wait_until("h1 to rejoin", Duration::from_secs(10), || {
        state_of(&c.nodes[0], "h1") == "ready"
    });
    assert!(stowage_testkit::fs_type_at(Path::new(mounted.trim())).is_some());
    assert_eq!(
        c.nodes[0].inspect("on-h1")["consumers_by_node"]["h1"],
        serde_json::json!(["k"])
    );
}

#[test]
fn without_quorum_writes_fail_fast_reads_say_they_may_be_stale_and_both_resume() {
    let mut c = Cluster::start();
    c.nodes[0].ok(&["volume", "create", "before"]);
    c.etcd[1].kill();
    c.etcd[2].kill();
    // A write fails within the store's deadline, saying why.
    let t = Instant::now();
    let refused = c.nodes[0].fails(&["volume", "create", "no-quorum"]);
    let took = t.elapsed();
    eprintln!("a write without quorum failed after {took:?}: {refused}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(refused.contains("unavailable"), "{refused}");
    // A read is answered from the member's own copy, and says it may be
    // stale, on stderr, with the answer on stdout.
    let stale = "may be stale";
    for args in [
        &["volume", "ls"][..],
        &["volume", "inspect", "before"],
        &["node", "ls"],
    ] {
        let t = Instant::now();
        let out = c.nodes[1].cli(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        eprintln!("{args:?} without quorum answered after {:?}", t.elapsed());
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            t.elapsed() < Duration::from_secs(12),
            "took {:?}",
            t.elapsed()
        );
        assert!(stderr.contains(stale), "{args:?}: {stderr}");
        let wanted = if args[0] == "node" { "h0" } else { "before" };
        assert!(stdout.contains(wanted), "{args:?}: {stdout}");
    }

    c.etcd[1].restart();
    c.etcd[2].restart();
    assert!(holds_within(Duration::from_secs(20), || {
        c.nodes[0]
            .cli(&["volume", "create", "with-quorum"])
            .status
            .success()
    }));
    assert!(c.nodes[2].names().contains(&"with-quorum".to_string()));
    let out = c.nodes[1].cli(&["volume", "ls"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(stale), "with a quorum: {stderr}");
}

/// CSI CreateVolume of a local volume `name` through `d`, preferring and
/// requiring the nodes given, and GetCapacity at the first required one.
fn csi_topology(
    d: &Daemon,
    name: &str,
    preferred: &[&str],
    requisite: &[&str],
) -> (Result<proto::Volume, tonic::Status>, i64) {
    use proto::volume_capability::access_mode::Mode;
    let segments = |n: &&str| proto::Topology {
        segments: [(TOPOLOGY.to_string(), n.to_string())].into(),
    };
    let req = proto::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        parameters: [("driver".to_string(), "local".to_string())].into(),
        accessibility_requirements: Some(proto::TopologyRequirement {
            requisite: requisite.iter().map(segments).collect(),
            preferred: preferred.iter().map(segments).collect(),
        }),
        ..Default::default()
    };
    let capacity = proto::GetCapacityRequest {
        accessible_topology: requisite.first().map(segments),
        ..Default::default()
    };
    stowage_testkit::csi::blocking(&d.csi_socket(), |csi| async move {
        let mut c = csi.controller.clone();
        let created = c
            .create_volume(req)
            .await
            .map(|r| r.into_inner().volume.unwrap());
        let free = c.get_capacity(capacity).await.unwrap().into_inner();
        (created, free.available_capacity)
    })
}

/// The status of a REST answer and its error code (empty on success).
fn rest(d: &Daemon, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = d.raw(request.as_bytes());
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let error: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = error["error"]["code"].as_str().unwrap_or_default();
    (status, code.to_string())
}

#[derive(Default)]
struct Outcomes {
    created: usize,
    removed: usize,
    /// Every answer, by operation and code, for the report.
    seen: std::collections::BTreeMap<String, usize>,
}

#[test]
fn three_hosts_by_eight_clients_racing_on_the_same_names_agree_with_the_model() {
    use std::sync::Mutex;
    let c = Cluster::start();
    let path = c.shared.path().canonicalize().unwrap();
    const NAMES: usize = 4;
    const ROUNDS: u64 = 12;
    let outcomes: Vec<Mutex<Outcomes>> = (0..NAMES).map(|_| Mutex::default()).collect();
    std::thread::scope(|s| {
        for (h, d) in c.nodes.iter().enumerate() {
            for client in 0..8u64 {
                let (outcomes, path) = (&outcomes, &path);
                s.spawn(move || {
                    // A fixed sequence per client (xorshift), the same every run.
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (h as u64 * 8 + client + 1);
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let node = format!("h{h}");
                    for round in 0..ROUNDS {
                        let v = (next() % NAMES as u64) as usize;
                        let name = format!("race-{v}");
                        let (op, code) = match next() % 4 {
                            0 => {
                                // A spec of its own: this create succeeds
                                // only if it makes the volume.
                                let body = serde_json::json!({
                                    "name": name, "driver": "bind", "access": "rwo",
                                    "options": {"path": path, "scope": "cluster"},
                                    "labels": {"op": format!("h{h}-c{client}-{round}")},
                                });
                                let (status, code) =
                                    rest(d, "POST", "/v1/volumes", &body.to_string());
                                if status < 300 {
                                    outcomes[v].lock().unwrap().created += 1;
                                }
                                ("create", if status < 300 { "ok".into() } else { code })
                            }
                            1 => {
                                let (status, code) =
                                    rest(d, "DELETE", &format!("/v1/volumes/{name}"), "");
                                if status < 300 {
                                    outcomes[v].lock().unwrap().removed += 1;
                                }
                                ("remove", if status < 300 { "ok".into() } else { code })
                            }
                            2 => {
                                let r = attach(&d.csi_socket(), &name, &node);
                                (
                                    "attach",
                                    r.map_or_else(|e| format!("{:?}", e.code()), |_| "ok".into()),
                                )
                            }
                            _ => {
                                let r = stowage_testkit::csi::detach(&d.csi_socket(), &name, &node);
                                (
                                    "detach",
                                    r.map_or_else(|e| format!("{:?}", e.code()), |_| "ok".into()),
                                )
                            }
                        };
                        assert!(
                            !["internal", "Internal", "Unknown", "DataLoss"]
                                .contains(&code.as_str()),
                            "{op} {name} on {node}: {code}"
                        );
                        *outcomes[v]
                            .lock()
                            .unwrap()
                            .seen
                            .entry(format!("{op} {code}"))
                            .or_default() += 1;
                    }
                });
            }
        }
    });

    // The model: a create succeeds only on an absent name (its spec is its
    // own) and a remove only on a present one, so per name the successes
    // alternate, and their difference is whether it exists now.
    let mut report = std::collections::BTreeMap::<String, usize>::new();
    for (v, o) in outcomes.iter().enumerate() {
        let o = o.lock().unwrap();
        let name = format!("race-{v}");
        let exists = c.nodes[0].names().contains(&name);
        assert_eq!(
            o.created as i64 - o.removed as i64,
            exists as i64,
            "{name}: {} creates and {} removes succeeded, and it exists: {exists}",
            o.created,
            o.removed
        );
        for (k, n) in &o.seen {
            *report.entry(k.clone()).or_default() += n;
        }
        if !exists {
            continue;
        }
        // Every host sees the same record, attached to at most the node
        // that holds it.
        let seen: Vec<serde_json::Value> = c.nodes.iter().map(|d| d.inspect(&name)).collect();
        for s in &seen[1..] {
            assert_eq!(s["labels"], seen[0]["labels"], "{name}");
            assert_eq!(s["attachments"], seen[0]["attachments"], "{name}");
            assert_eq!(s["held_by"], seen[0]["held_by"], "{name}");
        }
        let attached: Vec<&String> = (seen[0]["attachments"].as_object())
            .map(|a| a.keys().collect())
            .unwrap_or_default();
        assert!(attached.len() <= 1, "{name}: {attached:?}");
        if let Some(node) = attached.first() {
            assert_eq!(seen[0]["held_by"], node.as_str(), "{name}");
        }
    }
    eprintln!("answers: {report:?}");
    assert!(report.keys().any(|k| k == "create ok"), "{report:?}");
    assert!(report.keys().any(|k| k == "attach ok"), "{report:?}");
}

#[test]
fn a_block_volume_homed_on_one_host_is_mounted_on_another_over_the_network() {
    let mut c = Cluster::start();
    c.nodes[0].ok(&["volume", "create", "bv", "-d", "block", "-o", "size=64M"]);
    let path = c.nodes[1].ok(&["volume", "mount", "bv", "--consumer", "c1"]);
    let mountpoint = Path::new(path.trim()).to_path_buf();
    // Killed and started again, h1 keeps the attachment and its mount,
    // past the end of its old lease.
    c.nodes[1].kill9();
    c.nodes[1].spawn();
    wait_until("h1 to rejoin", Duration::from_secs(20), || {
        state_of(&c.nodes[0], "h1") == "ready"
    });
    std::thread::sleep(Duration::from_secs(TTL + 2));
    let probe = mountpoint.join("after-restart");
    std::fs::write(&probe, b"still attached").unwrap();
    std::fs::File::open(&probe).unwrap().sync_all().unwrap();
    let [h0, h1, h2] = &c.nodes[..] else {
        unreachable!()
    };
    assert_eq!(h1.inspect("bv")["node"], "h0");

    // h1 mounted it: h0 exports it to h1 alone, h1 attached it.
    assert_eq!(h1.ok(&["volume", "mount", "bv", "--consumer", "c1"]), path);
    let file = mountpoint.join("written-on-h1");
    std::fs::write(&file, b"from h1").unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let seen = h0.inspect("bv");
    assert_eq!(seen["consumers_by_node"]["h1"][0], "c1", "{seen}");
    let here = &h1.inspect("bv")["network"];
    assert_eq!(
        (&here["home"], &here["transport"]),
        (&"h0".into(), &"nbd".into())
    );
    assert_eq!(here["fenced"], false, "{here}");
    assert!(
        h0.inspect("bv").get("network").is_none(),
        "the home uses it locally"
    );
    let nbd = |d: &Daemon| {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &d.run.join("nbd/").to_string_lossy()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(nbd(h0), 1, "one export on the home node");
    assert_eq!(nbd(h1), 2, "the TLS client and nbdfuse on the consumer");

    // rwo: a third host is refused while h1 holds it.
    let refused = h2.fails(&["volume", "mount", "bv", "--consumer", "c2"]);
    assert!(refused.contains("h1"), "{refused}");
    assert_eq!(nbd(h2), 0, "nothing attached on the refused host");

    // Unmounted on h1: detached there, the export stopped, and the data
    // is on the home node.
    h1.ok(&["volume", "unmount", "bv", "--consumer", "c1"]);
    assert!(holds_within(Duration::from_secs(10), || nbd(h0) + nbd(h1) == 0));
    let path = h0.ok(&["volume", "mount", "bv", "--consumer", "c0"]);
    let back = std::fs::read(Path::new(path.trim()).join("written-on-h1")).unwrap();
    assert_eq!(back, b"from h1");
    h0.ok(&["volume", "unmount", "bv", "--consumer", "c0"]);
    h0.ok(&["volume", "rm", "bv"]);
}

/// Milliseconds since the epoch.
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The records `who` wrote in a log of `WHO N MILLIS` lines.
fn records_of(log: &str, who: &str) -> Vec<(u64, u128)> {
    (log.lines())
        .filter_map(|l| {
            let mut f = l.split(' ');
            (f.next() == Some(who)).then_some(())?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_cut_off_writer_never_writes_a_block_after_another_host_takes_its_volume_over() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let c = Cluster::start();
    let [h0, h1, h2] = &c.nodes[..] else {
        unreachable!()
    };
    h0.ok(&["volume", "create", "fv", "-d", "block", "-o", "size=64M"]);
    let on_h1 = h1.ok(&["volume", "mount", "fv", "--consumer", "writer"]);
    let log_on_h1 = Path::new(on_h1.trim()).join("log");

    // h1 appends numbered records, each fsync'd before it counts.
    let acked: Arc<Mutex<Vec<(u64, u128)>>> = Arc::default();
    let writer = {
        let (acked, path) = (acked.clone(), log_on_h1.clone());
        std::thread::spawn(move || {
            let mut f = (std::fs::OpenOptions::new().create(true).append(true))
                .open(&path)
                .unwrap();
            for n in 1.. {
                let at = now_ms();
                let written = writeln!(f, "B {n} {at}").and_then(|()| f.sync_data());
                if written.is_err() {
                    return;
                }
                acked.lock().unwrap().push((n, at));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    wait_until("h1 to write", Duration::from_secs(10), || {
        acked.lock().unwrap().len() >= 10
    });

    c.net.partition(1);
    let cut = Instant::now();
    let acked_before_cut = acked.lock().unwrap().clone();
    // h2 takes it over once h1's lease has ended.
    let on_h2 = std::cell::RefCell::new(None);
    let within = Duration::from_secs(TTL + 10);
    assert!(
        holds_within(within, || {
            let out = h2.cli(&["volume", "mount", "fv", "--consumer", "taker"]);
            let path = (out.status.success())
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
            let taken = path.is_some();
            *on_h2.borrow_mut() = path;
            taken
        }),
        "h2 could not take the volume over within TTL + 10 s"
    );
    let took_over = now_ms();
    eprintln!(
        "h2 took the volume over {:?} after h1 was cut off",
        cut.elapsed()
    );
    let log_on_h2 = Path::new(on_h2.borrow().as_deref().unwrap()).join("log");
    let seen = std::fs::read_to_string(&log_on_h2).unwrap_or_default();
    let found = records_of(&seen, "B");
    for record in &acked_before_cut {
        assert!(found.contains(record), "B's acknowledged {record:?} lost");
    }
    {
        let mut f = (std::fs::OpenOptions::new().append(true))
            .open(&log_on_h2)
            .unwrap();
        for n in 1..=5 {
            writeln!(f, "C {n} {}", now_ms()).unwrap();
        }
        f.sync_data().unwrap();
    }

    // The network comes back: h1's writes never land.
    c.net.heal(1);
    std::thread::sleep(Duration::from_secs(5));
    let late: Vec<_> = (acked.lock().unwrap().iter())
        .filter(|(_, at)| *at > took_over)
        .copied()
        .collect();
    assert!(
        late.is_empty(),
        "h1 acknowledged writes after the takeover: {late:?}"
    );
    assert!(writer.is_finished(), "h1's writer still writes");
    let fenced = &h1.inspect("fv")["network"]["fenced"];
    assert_eq!(fenced, true, "h1 says it cut its attachment off");
    // h1, back, still has its (fenced) consumer: it lets go first, or it
    // would claim the volume again once h2 does.
    assert!(holds_within(Duration::from_secs(20), || {
        (h1.cli(&["volume", "unmount", "fv", "--consumer", "writer"])
            .status)
            .success()
    }));
    h2.ok(&["volume", "unmount", "fv", "--consumer", "taker"]);
    let on_h0 = h0.ok(&["volume", "mount", "fv", "--consumer", "check"]);
    let last = std::fs::read_to_string(Path::new(on_h0.trim()).join("log")).unwrap();
    let after: Vec<_> = (records_of(&last, "B").into_iter())
        .filter(|(_, at)| *at > took_over)
        .collect();
    assert!(
        after.is_empty(),
        "B's records dated after the takeover: {after:?}"
    );
    assert_eq!(records_of(&last, "C").len(), 5, "C's records");
    h0.ok(&["volume", "unmount", "fv", "--consumer", "check"]);
}

#[test]
fn a_network_attachment_outlives_its_home_daemon_and_a_killed_nbdfuse_leaves_nothing_behind() {
    let mut c = Cluster::start();
    c.nodes[0].ok(&["volume", "create", "kv", "-d", "block", "-o", "size=64M"]);
    let path = c.nodes[1].ok(&["volume", "mount", "kv", "--consumer", "c1"]);
    let file = Path::new(path.trim()).join("data");
    let write = |what: &[u8]| -> std::io::Result<()> {
        std::fs::write(&file, what)?;
        std::fs::File::open(&file)?.sync_all()
    };
    write(b"before").unwrap();

    // The home daemon is killed and started again: the export it started
    // goes on, and is answered again under its new lease.
    c.nodes[0].kill9();
    write(b"while the home daemon is down").unwrap();
    c.nodes[0].spawn();
    wait_until("h0 to rejoin", Duration::from_secs(20), || {
        state_of(&c.nodes[1], "h0") == "ready"
    });
    std::thread::sleep(Duration::from_secs(TTL + 2));
    write(b"after the home daemon's old lease ended").unwrap();

    // nbdfuse is killed under the mount: I/O fails, and unmounting leaves
    // no process, mount or loop device of the attachment behind.
    let nbdfuse = std::process::Command::new("pgrep")
        .args(["-f", &format!("nbdfuse.*{}", c.nodes[1].run.display())])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&nbdfuse.stdout).trim().to_string();
    assert!(!pid.is_empty(), "nbdfuse runs on h1");
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(holds_within(Duration::from_secs(10), || write(b"after").is_err()));
    c.nodes[1].ok(&["volume", "unmount", "kv", "--consumer", "c1"]);
    let nbd = c.nodes[1].run.join("nbd/");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &nbd.to_string_lossy()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "processes left on h1");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*nbd.to_string_lossy()),
        "a FUSE mount left on h1"
    );
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(&*nbd.to_string_lossy()),
        "a loop device left on h1"
    );
    // Mounted again, it reads what was last fsync'd.
    let path = c.nodes[1].ok(&["volume", "mount", "kv", "--consumer", "c1"]);
    let back = std::fs::read(Path::new(path.trim()).join("data")).unwrap();
    assert_eq!(back, b"after the home daemon's old lease ended");
    c.nodes[1].ok(&["volume", "unmount", "kv", "--consumer", "c1"]);
}

#[test]
fn csi_answers_no_topology_for_a_block_volume_and_stages_it_on_a_host_other_than_its_home() {
    use proto::volume_capability::access_mode::Mode;
    let c = Cluster::start();
    let (h0, h1) = (&c.nodes[0], &c.nodes[1]);
    let req = proto::CreateVolumeRequest {
        name: "cb".into(),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        parameters: [("driver".to_string(), "block".to_string())].into(),
        capacity_range: Some(proto::CapacityRange {
            required_bytes: 64 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let created = stowage_testkit::csi::blocking(&h0.csi_socket(), |csi| async move {
        let mut c = csi.controller.clone();
        c.create_volume(req)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    });
    assert!(created.accessible_topology.is_empty(), "{created:?}");
    assert_eq!(h1.inspect("cb")["node"], "h0");

    attach(&h0.csi_socket(), "cb", "h1").unwrap();
    // Under h1's own directory (outside its roots), whose mounts go with
    // the daemon even when the test fails halfway.
    let staging = tempfile::tempdir_in(h1.base()).unwrap();
    let stage = proto::NodeStageVolumeRequest {
        volume_id: "cb".into(),
        staging_target_path: staging.path().display().to_string(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    stowage_testkit::csi::blocking(&h1.csi_socket(), |csi| async move {
        csi.node.clone().node_stage_volume(stage).await.unwrap();
    });
    let file = staging.path().join("staged-on-h1");
    std::fs::write(&file, b"through CSI").unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    assert_eq!(h1.inspect("cb")["network"]["home"], "h0");
    let unstage = proto::NodeUnstageVolumeRequest {
        volume_id: "cb".into(),
        staging_target_path: staging.path().display().to_string(),
    };
    stowage_testkit::csi::blocking(&h1.csi_socket(), |csi| async move {
        csi.node.clone().node_unstage_volume(unstage).await.unwrap();
    });
    stowage_testkit::csi::detach(&h0.csi_socket(), "cb", "h1").unwrap();

    let path = h0.ok(&["volume", "mount", "cb", "--consumer", "check"]);
    let back = std::fs::read(Path::new(path.trim()).join("staged-on-h1")).unwrap();
    assert_eq!(back, b"through CSI");
    h0.ok(&["volume", "unmount", "cb", "--consumer", "check"]);
}

#[test]
fn an_export_killed_under_io_fails_it_clearly_and_a_new_mount_serves_again_leaving_no_key() {
    let c = Cluster::start();
    let (h0, h1) = (&c.nodes[0], &c.nodes[1]);
    h0.ok(&["volume", "create", "xv", "-d", "block", "-o", "size=64M"]);
    let path = h1.ok(&["volume", "mount", "xv", "--consumer", "c1"]);
    let file = Path::new(path.trim()).join("data");
    let write = |what: &[u8]| -> std::io::Result<()> {
        std::fs::write(&file, what)?;
        std::fs::File::open(&file)?.sync_all()
    };
    write(b"before").unwrap();
    let exports = h0.run.join("nbd/exports");
    let pidfile = std::fs::read_dir(&exports)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("pid"))
        .next()
        .expect("an export on h0");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(holds_within(Duration::from_secs(10), || write(b"after").is_err()));

    h1.ok(&["volume", "unmount", "xv", "--consumer", "c1"]);
    let gone = || std::fs::read_dir(&exports).map_or(true, |mut d| d.next().is_none());
    assert!(
        holds_within(Duration::from_secs(10), gone),
        "the dead export's key left on h0"
    );
    let path = h1.ok(&["volume", "mount", "xv", "--consumer", "c1"]);
    let back = std::fs::read(Path::new(path.trim()).join("data")).unwrap();
    assert_eq!(back, b"before");
    h1.ok(&["volume", "unmount", "xv", "--consumer", "c1"]);
}
