//! A client that holds many idle connections to one door: it meets that
//! door's limit, idle connections are let go, and the other doors answer
//! as if nothing happened.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use stowage_testkit::Daemon;

const IDLE: usize = 1100;

#[test]
fn idle_connections_on_one_door_starve_no_door() {
    // The daemon starts with the usual soft limit of 1024 open files.
    let (_wrapper, bin) = crate::wrapped_bin("ulimit -Sn 1024");
    let d = Daemon::start(&bin);
    let plugin = d.base().join("plugins/stowage.sock");
    let idle: Vec<UnixStream> = (0..IDLE)
        .filter_map(|_| UnixStream::connect(&plugin).ok())
        .collect();
    assert!(idle.len() > 1000, "only {} connections", idle.len());
    // One slow client sends half a request and stops.
    let mut slow = UnixStream::connect(d.socket()).unwrap();
    slow.write_all(b"GET /v1/volumes HTTP/1.1\r\nhost: x\r\n")
        .unwrap();

    // REST and CSI answer at once. A starved door would make these wait
    // for ever: the test fails after a while instead.
    let t = Instant::now();
    std::thread::scope(|scope| {
        let (done, finished) = std::sync::mpsc::channel();
        let d = &d;
        scope.spawn(move || {
            d.ok(&["volume", "create", "v"]);
            assert!(d.ok(&["volume", "ls"]).contains("v"));
            stowage_testkit::csi::blocking(&d.csi_socket(), |csi| async move {
                let req = stowage_testkit::csi::proto::GetPluginInfoRequest {};
                csi.identity.clone().get_plugin_info(req).await.unwrap();
            });
            let _ = done.send(());
        });
        if finished.recv_timeout(Duration::from_secs(30)).is_err() {
            // The calls may still be waiting: end them with the daemon.
            if let Some(pid) = d.pid() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            panic!(
                "REST and CSI did not answer beside a full door:\n{}",
                d.log()
            );
        }
    });
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(d.log().contains("connection limit reached"), "{}", d.log());

    // Idle connections and the slow one are closed after the header
    // timeout; then the plugin door answers again.
    let mut slow_answer = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = slow.read_to_end(&mut slow_answer);
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "the slow client was kept {waited:?}"
    );
    let mut probe = idle.into_iter().next().unwrap();
    let mut buf = [0u8; 1];
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        probe.read(&mut buf).unwrap_or(0),
        0,
        "an idle connection was kept"
    );
    let mut s = UnixStream::connect(&plugin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("VolumeDriver"), "{answer}");
}
