//! Hosts for cluster tests: network namespaces on one private switch.
//!
//! Each host is a network namespace with one veth to a bridge. The bridge
//! lives in a namespace of its own, the switch, so the host's firewall
//! (Docker's FORWARD rules, bridge netfilter) never sees the traffic, and
//! a host is cut off by setting its port on the switch down. Addresses
//! come from 198.18.0.0/15, the range set aside for benchmarking networks
//! (RFC 2544): no one else's hosts live there. Processes join a host with
//! `nsenter --net` only, so they keep the machine's mount namespace and
//! the mounts they make are the ones Docker and Podman see.
//! Everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::daemon::run;

static NETS: AtomicU32 = AtomicU32::new(0);

pub struct TestNet {
    /// The switch's namespace.
    switch: String,
    pub hosts: Vec<Host>,
}

pub struct Host {
    /// The namespace's name, under /run/netns.
    pub netns: String,
    /// Its address on the test network.
    pub addr: String,
    /// Its port on the switch.
    port: String,
}

impl Host {
    /// `nsenter --net=… --`, to put before a program run on this host.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", self.netns),
            "--".into(),
        ]
    }

    /// Runs `f` on a thread of its own moved into this host's network:
    /// what it starts runs on this host, as a daemon's children do.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
        let path = format!("/run/netns/{}", self.netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("the host's network namespace");
                move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(LinkNameSpaceType::Network),
                )
                .expect("setns into the host's network");
                f()
            })
            .join()
            .expect("the thread within the host")
        })
    }

    /// `program` run on this host.
    pub fn command(&self, program: &str) -> Command {
        let prefix = self.prefix();
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..]).arg(program);
        cmd
    }
}

impl TestNet {
    /// `count` hosts on one switch, each with its loopback up and an
    /// address of its own.
    pub fn new(count: usize) -> TestNet {
        crate::require_root();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes: the pid in hex and the
        // net's number keep them apart across tests and test binaries.
        let tag = format!("{:x}n{n}", std::process::id());
        let subnet = 18 + (std::process::id() + n) % 2;
        let third = (std::process::id() / 2 + n) % 250 + 1;
        let net = TestNet {
            switch: format!("stw-{tag}-sw"),
            hosts: (0..count)
                .map(|i| Host {
                    netns: format!("stw-{tag}-h{i}"),
                    addr: format!("198.{subnet}.{third}.{}", i + 1),
                    port: format!("s{tag}p{i}"),
                })
                .collect(),
        };
        net.build();
        net
    }

    fn build(&self) {
        let sw = self.switch.as_str();
        run("ip", &["netns", "add", sw]);
        run("ip", &["-n", sw, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", sw, "link", "set", "br0", "up"]);
        for h in &self.hosts {
            let ns = h.netns.as_str();
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            // Made in the host namespace, then each end moved to its side.
            run(
                "ip",
                &[
                    "link", "add", &h.port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            run("ip", &["link", "set", &h.port, "netns", sw]);
            run("ip", &["-n", sw, "link", "set", &h.port, "master", "br0"]);
            run("ip", &["-n", sw, "link", "set", &h.port, "up"]);
            let cidr = format!("{}/24", h.addr);
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
    }

    /// Cuts host `i` off the network: its port on the switch goes down.
    pub fn partition(&self, i: usize) {
        self.port(i, "down");
    }

    /// Puts host `i` back on the network.
    pub fn heal(&self, i: usize) {
        self.port(i, "up");
    }

    fn port(&self, i: usize, state: &str) {
        let port = &self.hosts[i].port;
        run("ip", &["-n", &self.switch, "link", "set", port, state]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and a veth goes
        // with its peer.
        for ns in self.hosts.iter().map(|h| &h.netns).chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
