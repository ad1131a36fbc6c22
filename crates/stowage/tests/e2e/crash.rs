//! Concurrency on one name, and a kill -9 storm: the store and the mount
//! table must agree afterwards and no acknowledged volume may be lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use stowage_testkit::{stderr_of, Daemon};

use crate::BIN;

/// Checks that every volume with consumers is mounted exactly once at its
/// mountpoint, that nothing else is mounted under the run root, and that
/// each local volume's directory exists with no stray ones beside them.
fn assert_store_matches_kernel(d: &Daemon) -> Vec<serde_json::Value> {
    let volumes = d.list();
    let mut expected: Vec<PathBuf> = volumes
        .iter()
        .filter(|v| !v["consumers"].as_array().unwrap().is_empty())
        .map(|v| PathBuf::from(v["mountpoint"].as_str().unwrap()))
        .collect();
    expected.sort();
    let mut mounted = d.mounts();
    mounted.sort();
    assert_eq!(mounted, expected, "mount table and store disagree");
    for v in &volumes {
        assert_eq!(v["status"], "ready", "{v}");
    }
    let ids: BTreeSet<String> = volumes
        .iter()
        .filter(|v| v["driver"] == "local")
        .map(|v| {
            PathBuf::from(v["mountpoint"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let dirs: BTreeSet<String> = std::fs::read_dir(d.data.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, ids, "volume directories and store disagree");
    volumes
}

#[test]
fn eight_clients_on_one_name() {
    let mut d = Daemon::start(BIN);
    let d_ref = &d;
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                let consumer = format!("c{t}");
                for i in 0..24 {
                    let args: Vec<&str> = match (t + i) % 4 {
                        0 => vec!["volume", "create", "shared"],
                        1 => vec!["volume", "mount", "shared", "--consumer", &consumer],
                        2 => vec!["volume", "unmount", "shared", "--consumer", &consumer],
                        _ => vec!["volume", "rm", "shared"],
                    };
                    let out = d_ref.cli(&args);
                    let err = stderr_of(&out);
                    // Refusals are fine; transport errors or crashes are not.
                    assert!(
                        out.status.success()
                            || err.contains("no such volume")
                            || err.contains("in use by"),
                        "{args:?}: {err}"
                    );
                }
            });
        }
    });
    assert_store_matches_kernel(&d);
    d.stop();
    d.spawn();
    assert_store_matches_kernel(&d);
}

/// What the test knows of one volume from acknowledged answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Present(BTreeSet<String>),
    Absent,
    /// An operation was cut off by a kill: its outcome is unknown.
    Unknown,
}

/// Checks the daemon's volumes against everything acknowledged so far.
fn assert_nothing_acknowledged_was_lost(d: &Daemon, known: &BTreeMap<String, Known>) -> usize {
    let volumes = assert_store_matches_kernel(d);
    let actual: BTreeMap<String, BTreeSet<String>> = volumes
        .iter()
        .map(|v| {
            let consumers = v["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            (v["name"].as_str().unwrap().to_string(), consumers)
        })
        .collect();
    let mut checked = 0;
    for (name, k) in known {
        match k {
            Known::Present(consumers) => {
                assert_eq!(actual.get(name), Some(consumers), "{name} lost or changed");
                checked += 1;
            }
            Known::Absent => {
                assert!(!actual.contains_key(name), "{name} came back");
                checked += 1;
            }
            Known::Unknown => {}
        }
    }
    checked
}

/// The next value of a xorshift generator: reproducible randomness.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn kill9_storm_loses_nothing_and_leaves_no_orphan_mount() {
    const WORKERS: usize = 4;
    const OPS: usize = 1000;
    let d = Daemon::start(BIN);
    let host = format!("unix://{}", d.socket().display());
    let d = Arc::new(Mutex::new(d));
    // Workers hold the gate for reading during one operation; the checker
    // takes it for writing, so checks see no operation in flight.
    let gate = Arc::new(RwLock::new(()));
    let known: Arc<Mutex<BTreeMap<String, Known>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));

    // The killer: kill -9 at random moments (mid-operation), restart, and
    // check that the restarted daemon kept everything acknowledged. It
    // waits for a few answers between kills, so that however slow a busy
    // machine makes each operation, most of them reach the daemon.
    let killer = {
        let (d, gate, known, stop) = (d.clone(), gate.clone(), known.clone(), stop.clone());
        let answered = answered.clone();
        std::thread::spawn(move || {
            let (mut kills, mut checks) = (0, 0);
            let mut seed = 0x9e3779b97f4a7c15u64;
            while !stop.load(Ordering::Relaxed) {
                let due = answered.load(Ordering::Relaxed) + 4 + (next(&mut seed) % 24) as usize;
                while answered.load(Ordering::Relaxed) < due && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(next(&mut seed) % 30));
                let mut d = d.lock().unwrap();
                d.kill9();
                kills += 1;
                d.spawn();
                let _quiet = gate.write().unwrap();
                checks += assert_nothing_acknowledged_was_lost(&d, &known.lock().unwrap());
            }
            (kills, checks)
        })
    };

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (host, gate, known) = (host.clone(), gate.clone(), known.clone());
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut seed = (w as u64 + 1) * 0x2545f4914f6cdd1d;
                let mut sent = 0;
                while sent < OPS / WORKERS {
                    let r = next(&mut seed);
                    // Each worker owns its names, so its model of them is
                    // exact except for operations cut off by a kill.
                    let name = format!("w{w}-v{}", r % 3);
                    let consumer = format!("c{}", (r >> 8) % 2);
                    let driver = if (r >> 16).is_multiple_of(4) {
                        "tmpfs"
                    } else {
                        "local"
                    };
                    let args: Vec<&str> = match (r >> 24) % 5 {
                        0 | 1 => vec!["volume", "create", &name, "-d", driver],
                        2 => vec!["volume", "mount", &name, "--consumer", &consumer],
                        3 => vec!["volume", "unmount", &name, "--consumer", &consumer],
                        _ => vec!["volume", "rm", "--force", &name],
                    };
                    let op = gate.read().unwrap();
                    let out = std::process::Command::new(crate::BIN)
                        .env("STOWAGE_HOST", &host)
                        .args(&args)
                        .output()
                        .unwrap();
                    let err = stderr_of(&out);
                    if err.contains("cannot connect to the stowage daemon") {
                        // Refused while the daemon is down: it never got
                        // there, so it changes nothing and counts for
                        // nothing; only calls the daemon took are the storm.
                        drop(op);
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    sent += 1;
                    let mut known = known.lock().unwrap();
                    let entry = known.entry(name.clone()).or_insert(Known::Absent);
                    let refused = err.contains("no such volume")
                        || err.contains("already exists with different");
                    if !out.status.success() && !refused {
                        // Connection refused or cut: the outcome is unknown.
                        *entry = Known::Unknown;
                        continue;
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    *entry = match (args[1], out.status.success(), entry.clone()) {
                        ("create", true, Known::Present(c)) => Known::Present(c),
                        ("create", true, Known::Absent) => Known::Present(BTreeSet::new()),
                        ("mount", true, Known::Present(mut c)) => {
                            c.insert(consumer.clone());
                            Known::Present(c)
                        }
                        ("unmount", true, Known::Present(mut c)) => {
                            c.remove(&consumer);
                            Known::Present(c)
                        }
                        ("mount" | "unmount" | "rm", false, _) => Known::Absent,
                        ("rm", true, _) => Known::Absent,
                        _ => Known::Unknown,
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let acked = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (kills, checks) = killer.join().unwrap();
    assert!(kills >= 5, "only {kills} kills happened");

    // One last kill, as after a power cut, then the final check.
    let mut d = d.lock().unwrap();
    d.kill9();
    d.spawn();
    let last = assert_nothing_acknowledged_was_lost(&d, &known.lock().unwrap());
    eprintln!(
        "{OPS} operations, {acked} answered, {kills} kills; {} volume states checked",
        checks + last
    );
    assert!(
        acked >= OPS / 2,
        "too few operations reached the daemon: {acked}"
    );
    assert!(checks + last >= 50, "too few checks: {}", checks + last);
}

/// With its sockets held by a service manager (systemd's socket
/// activation), a call made while the daemon is down waits and is
/// answered by the next daemon, instead of being refused.
#[test]
fn a_call_made_while_a_socket_activated_daemon_is_down_is_answered() {
    let mut d = Daemon::start(BIN);
    d.stop();
    d.hold_sockets();
    d.spawn();
    d.ok(&["volume", "create", "before"]);
    d.kill9();
    let socket = d.socket();
    let waiting = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(socket).expect("the held socket");
        // A daemon that bound a socket of its own never answers this one.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /v1/volumes/before HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .expect("an answer from the next daemon");
        answer
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiting.is_finished(), "answered with no daemon running");
    d.spawn();
    let answer = waiting.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"name\":\"before\""), "{answer}");
    d.stop();
    d.release_sockets();
    d.spawn();
    // Once seen failing in CI and not reproduced since: a few tries, and
    // what the CLI said if they all fail.
    let mut out = d.cli(&["volume", "inspect", "before"]);
    for _ in 0..10 {
        if out.status.success() {
            break;
        }
        eprintln!("inspect after the restart failed: {}", stderr_of(&out));
        std::thread::sleep(Duration::from_millis(200));
        out = d.cli(&["volume", "inspect", "before"]);
    }
    assert!(out.status.success(), "{}\n{}", stderr_of(&out), d.log());
}
