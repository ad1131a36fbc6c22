//! `bench/netblock`: a `block` volume homed on one host and mounted on
//! another over the network (NBD with TLS-PSK: nbdkit, an nbdkit TLS
//! client, nbdfuse -C 4, a loop device), beside the same fio jobs, in the
//! same run, on:
//! - the stack assembled by hand as the issue measured it: nbdkit, nbdfuse
//!   -C 4 and a loop device, no TLS;
//! - the same by hand with TLS-PSK, which takes the TLS client Stowage
//!   runs too (nbdfuse reads no key file from a URI);
//! - a local Stowage block volume on the home host.
//!
//! Each job runs on a file in the mounted ext4 filesystem with direct I/O.
//! It also times attach and mount on the other host, and failover: from
//! cutting the consuming host off to a mount on a third host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use stowage_bench::{median, median_f64, stowage_bin};
use stowage_testkit::etcd::Etcd;
use stowage_testkit::netns::{Host, TestNet};
use stowage_testkit::{holds_within, Daemon};

const TTL: u64 = 5;
const SIZE: &str = "2G";
const FILE_SIZE: &str = "1G";
const TARGET_RATIO: f64 = 0.95;

struct Job {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    /// Reported in IOPS, else in MiB/s.
    iops: bool,
}

const JOBS: [Job; 4] = [
    Job {
        name: "4k random read, qd32",
        rw: "randread",
        bs: "4k",
        iops: true,
    },
    Job {
        name: "4k random write, qd32",
        rw: "randwrite",
        bs: "4k",
        iops: true,
    },
    Job {
        name: "1M sequential read",
        rw: "read",
        bs: "1M",
        iops: false,
    },
    Job {
        name: "1M sequential write",
        rw: "write",
        bs: "1M",
        iops: false,
    },
];

/// One fio job on `file` for `seconds`: IOPS or MiB/s.
fn fio(file: &Path, job: &Job, seconds: u64) -> Result<f64> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=32",
        ])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={FILE_SIZE}"))
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--runtime={seconds}"))
        .args(["--time_based", "--output-format=json"])
        .output()
        .context("running fio (Debian fio)")?;
    anyhow::ensure!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let side = if job.rw.contains("read") {
        "read"
    } else {
        "write"
    };
    let stats = &v["jobs"][0][side];
    Ok(match job.iops {
        true => stats["iops"].as_f64().unwrap_or(0.0),
        false => stats["bw"].as_f64().unwrap_or(0.0) / 1024.0,
    })
}

/// The stack assembled by hand: an image exported from `home`, attached
/// on `user` with nbdfuse -C 4 (through a TLS client when `tls`), a loop
/// device, ext4, mounted; torn down when dropped.
struct ByHand {
    dir: tempfile::TempDir,
    mountpoint: PathBuf,
    device: String,
}

impl ByHand {
    fn new(home: &Host, user: &Host, tls: bool, port: u16) -> Result<ByHand> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let image = d.join("image");
        run(Command::new("truncate").args(["-s", SIZE]).arg(&image))?;
        run(Command::new("mkfs.ext4").arg("-q").arg(&image))?;
        let psk = d.join("psk");
        std::fs::write(&psk, format!("bench:{}\n", "ab".repeat(32)))?;
        let mut export = home.command("nbdkit");
        export
            .args(["-i", &home.addr, "-p", &port.to_string()])
            .arg("-P")
            .arg(d.join("export.pid"));
        if tls {
            export
                .arg("--tls=require")
                .arg(format!("--tls-psk={}", psk.display()));
        }
        run(export.arg("file").arg(&image).arg("cache=none"))?;
        let fuse = d.join("fuse");
        std::fs::create_dir(&fuse)?;
        let uri = if tls {
            let socket = d.join("relay.sock");
            let mut relay = user.command("nbdkit");
            relay
                .arg("-U")
                .arg(&socket)
                .arg("-P")
                .arg(d.join("relay.pid"));
            relay.args(["nbd", &format!("hostname={}", home.addr)]);
            relay.arg(format!("port={port}")).arg("tls=require");
            relay.arg(format!("tls-psk={}", psk.display()));
            run(relay.arg("tls-username=bench"))?;
            format!("nbd+unix:///?socket={}", socket.display())
        } else {
            format!("nbd://{}:{port}", home.addr)
        };
        let file = fuse.join("disk");
        let mut attach = user.command("nbdfuse");
        attach.args(["-C", "4"]).arg("-P").arg(d.join("fuse.pid"));
        attach.arg(&file).arg(uri);
        attach.stdin(std::process::Stdio::null());
        attach.stdout(std::process::Stdio::null());
        attach.spawn()?;
        anyhow::ensure!(
            holds_within(Duration::from_secs(10), || d.join("fuse.pid").exists()),
            "nbdfuse did not start"
        );
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(&file)
            .output()?;
        let device = String::from_utf8(out.stdout)?.trim().to_string();
        anyhow::ensure!(!device.is_empty(), "losetup failed");
        let mountpoint = d.join("mnt");
        std::fs::create_dir(&mountpoint)?;
        run(Command::new("mount").arg(&device).arg(&mountpoint))?;
        Ok(ByHand {
            dir,
            mountpoint,
            device,
        })
    }
}

impl Drop for ByHand {
    fn drop(&mut self) {
        let d = self.dir.path();
        let _ = run(Command::new("umount").arg(&self.mountpoint));
        let _ = run(Command::new("losetup").arg("-d").arg(&self.device));
        let _ = run(Command::new("fusermount3").arg("-u").arg(d.join("fuse")));
        for pid in ["relay.pid", "export.pid"] {
            if let Ok(p) = std::fs::read_to_string(d.join(pid)) {
                let _ = run(Command::new("kill").arg(p.trim()));
            }
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Three hosts with an etcd member and a daemon each, given one sealing
/// key file.
struct Cluster {
    nodes: Vec<Daemon>,
    _etcd: Vec<Etcd>,
    net: TestNet,
    _keys: tempfile::TempDir,
}

fn cluster() -> Result<Cluster> {
    let net = TestNet::new(3);
    let etcd = Etcd::cluster(&net.hosts);
    let endpoints: Vec<&str> = etcd.iter().map(|m| m.endpoint.as_str()).collect();
    let store = format!("etcd://{}", endpoints.join(","));
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("sealing.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32)))?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let key = key.to_string_lossy().into_owned();
    let (bin, ttl) = (stowage_bin()?, TTL.to_string());
    let nodes: Vec<Daemon> = (net.hosts.iter().enumerate())
        .map(|(i, h)| {
            let id = format!("h{i}");
            let args = [
                "--store",
                &store,
                "--node-id",
                &id,
                "--advertise",
                &h.addr,
                "--node-ttl",
                &ttl,
                "--sealing-key-file",
                &key,
            ];
            Daemon::start_on(&bin, h, &args)
        })
        .collect();
    let joined = holds_within(Duration::from_secs(20), || {
        let out = nodes[0].cli(&["node", "ls", "--format", "json"]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.iter().filter(|n| n["state"] == "ready").count() == 3
    });
    anyhow::ensure!(joined, "the three nodes did not join");
    Ok(Cluster {
        nodes,
        _etcd: etcd,
        net,
        _keys: keys,
    })
}

fn mount(d: &Daemon, volume: &str, consumer: &str) -> Result<PathBuf> {
    let out = d.cli(&["volume", "mount", volume, "--consumer", consumer]);
    anyhow::ensure!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn main() -> Result<()> {
    let mut runs = 3;
    let mut seconds = 10;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--runs", Some(v)) => runs = v.parse()?,
            ("--seconds", Some(v)) => seconds = v.parse()?,
            _ => anyhow::bail!("usage: netblock [--runs N] [--seconds S]"),
        }
    }
    let c = cluster()?;
    let (home, user) = (&c.nodes[0], &c.nodes[1]);
    for v in ["net", "local"] {
        home.ok(&[
            "volume",
            "create",
            v,
            "-d",
            "block",
            "-o",
            &format!("size={SIZE}"),
        ]);
    }

    // Attach and mount on another host, then unmount, a few times.
    let mut attach = Vec::new();
    for _ in 0..runs.max(3) {
        let t = Instant::now();
        mount(user, "net", "bench")?;
        attach.push(t.elapsed());
        user.ok(&["volume", "unmount", "net", "--consumer", "bench"]);
    }
    let ours = mount(user, "net", "bench")?.join("fio");
    let local = mount(home, "local", "bench")?.join("fio");
    let plain = ByHand::new(&c.net.hosts[0], &c.net.hosts[1], false, 10810)?;
    let tls = ByHand::new(&c.net.hosts[0], &c.net.hosts[1], true, 10811)?;
    let (plain_file, tls_file) = (plain.mountpoint.join("fio"), tls.mountpoint.join("fio"));

    println!(
        "bench/netblock: fio on a {FILE_SIZE} file in ext4 on a {SIZE} block volume, direct I/O, \
         qd32, median of {runs} runs of {seconds}s"
    );
    println!("network: homed on h0, mounted on h1 (network namespaces); by hand: the same hosts");
    println!(
        "\n{:<24} | {:>9} | {:>12} | {:>6} | {:>12} | {:>6} | {:>9} | {:>6}",
        "", "Stowage", "by hand", "ratio", "by hand TLS", "ratio", "local", "ratio"
    );
    println!("{}", "-".repeat(104));
    let mut worst = f64::MAX;
    for job in &JOBS {
        let mut m = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, f) in [&ours, &plain_file, &tls_file, &local]
                .into_iter()
                .enumerate()
            {
                m[i].push(fio(f, job, seconds)?);
            }
        }
        let [o, p, t, l] = m.map(|v| median_f64(&v));
        worst = worst.min(o / t);
        let unit = if job.iops { "IOPS" } else { "MiB/s" };
        println!(
            "{:<24} | {:>9.0} | {:>12.0} | {:>5.2}x | {:>12.0} | {:>5.2}x | {:>9.0} | {:>5.2}x  {unit}",
            job.name,
            o,
            p,
            o / p,
            t,
            o / t,
            l,
            o / l
        );
    }
    drop((plain, tls));
    user.ok(&["volume", "unmount", "net", "--consumer", "bench"]);
    home.ok(&["volume", "unmount", "local", "--consumer", "bench"]);
    println!(
        "\nattach + mount on another host: {:.0} ms (median of {})",
        median(&attach).as_secs_f64() * 1e3,
        attach.len()
    );

    // Failover: the consuming host is cut off; a third host mounts it.
    mount(user, "net", "held")?;
    c.net.partition(1);
    let cut = Instant::now();
    let survivor = &c.nodes[2];
    let within = Duration::from_secs(TTL + 30);
    let moved = holds_within(within, || mount(survivor, "net", "taker").is_ok());
    let failover = cut.elapsed();
    c.net.heal(1);
    anyhow::ensure!(moved, "no failover within {within:?}");
    println!(
        "failover: h1 cut off, mounted on h2 after {:.1} s (target TTL + 10 = {} s)",
        failover.as_secs_f64(),
        TTL + 10
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "\ntargets: >= {TARGET_RATIO} of the same stack by hand (with TLS-PSK, as Stowage runs it): {} \
         (worst {worst:.3}); failover within TTL + 10 s: {}",
        met(worst >= TARGET_RATIO),
        met(failover <= Duration::from_secs(TTL + 10))
    );
    Ok(())
}
