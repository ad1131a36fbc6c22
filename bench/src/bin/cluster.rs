//! `bench/cluster`: Stowage on three hosts (network namespaces, an etcd
//! member and a daemon on each) beside one daemon on its embedded SQLite
//! store, measured in the same run:
//! - the lifecycle cycle (create, mount, unmount, remove over REST) with 1
//!   and 8 clients, the cluster's spread over its three hosts;
//! - `GET /v1/volumes` with 10,000 volumes;
//! - how long after a host is cut off the others show it `down`, and
//!   until a volume it held exclusively is attached elsewhere.
//!
//! Beside the cycles it measures the etcd cluster alone making the
//! requests a cycle makes (see `store_alone`): the most cycles per second
//! this machine's etcd allows, whatever the daemon does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::Method;
use stowage_bench::{daemon_on_root_fs, median, median_f64, rest_cycle, stowage_bin, Conn};
use stowage_testkit::etcd::Etcd;
use stowage_testkit::netns::{Host, TestNet};
use stowage_testkit::{holds_within, Daemon};

const TARGET_CYCLES_PER_SEC: f64 = 150.0;
const TARGET_LS: Duration = Duration::from_millis(150);
/// The lease TTL of the cluster's nodes, in seconds.
const TTL: u64 = 5;
const VOLUMES: usize = 10_000;

struct Settings {
    runs: usize,
    seconds: f64,
}

fn settings() -> Result<Settings> {
    let mut s = Settings {
        runs: 3,
        seconds: 3.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().context("flag without a value")?;
        match a.as_str() {
            "--runs" => s.runs = value.parse()?,
            "--seconds" => s.seconds = value.parse()?,
            _ => anyhow::bail!("unknown flag {a}; use --runs N --seconds S"),
        }
    }
    Ok(s)
}

/// Three hosts, each with an etcd member and a daemon; dropped daemons
/// first, then etcd, then the network.
struct Cluster {
    nodes: Vec<Daemon>,
    etcd: Vec<Etcd>,
    net: TestNet,
}

fn cluster() -> Result<Cluster> {
    let net = TestNet::new(3);
    let etcd = Etcd::cluster(&net.hosts);
    let endpoints: Vec<&str> = etcd.iter().map(|m| m.endpoint.as_str()).collect();
    let store = format!("etcd://{}", endpoints.join(","));
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
            ];
            Daemon::start_on(&bin, h, &args)
        })
        .collect();
    let joined = holds_within(Duration::from_secs(20), || {
        node_states(&nodes[0])
            .iter()
            .filter(|s| *s == "ready")
            .count()
            == 3
    });
    anyhow::ensure!(joined, "the three nodes did not join");
    Ok(Cluster { nodes, etcd, net })
}

fn node_states(d: &Daemon) -> Vec<String> {
    let out = d.cli(&["node", "ls", "--format", "json"]);
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (nodes.iter())
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Full cycles per second of `clients` clients, client `c` on
/// `sockets[c % len]`, for `seconds`.
async fn cycles(sockets: &[PathBuf], clients: usize, seconds: f64, round: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let socket = sockets[c % sockets.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await?;
            let mut done = 0usize;
            while Instant::now() < deadline {
                let name = format!("r{round}-c{c}-{done}");
                for (method, path, body) in rest_cycle(&name, format!(r#"{{"name":"{name}"}}"#)) {
                    conn.call(method, &path, body).await?;
                }
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    per_second(tasks, start).await
}

/// Creates `count` volumes with 8 clients spread over `sockets`.
async fn populate(sockets: &[PathBuf], count: usize) -> Result<()> {
    let clients = 8;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let socket = sockets[c % sockets.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await?;
            for i in (c..count).step_by(clients) {
                let body = format!(r#"{{"name":"ls-{i:05}"}}"#);
                conn.call(Method::POST, "/v1/volumes", Some(body)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The time of a first `GET /v1/volumes`, and the median of `runs` after it.
async fn ls(socket: &Path, runs: usize) -> Result<(Duration, Duration)> {
    let mut conn = Conn::open(socket).await?;
    let mut times = Vec::new();
    for _ in 0..=runs {
        let t = Instant::now();
        let body = conn.call(Method::GET, "/v1/volumes", None).await?;
        times.push(t.elapsed());
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
        anyhow::ensure!(listed.len() >= VOLUMES, "listed {}", listed.len());
    }
    Ok((times[0], median(&times[1..])))
}

/// Cuts host 2 off while it holds an exclusive volume; returns how long
/// until host 0 shows it down, and until host 0 could attach the volume.
fn partition(c: &Cluster) -> Result<(Duration, Duration)> {
    let shared = tempfile::tempdir()?;
    let path = format!("path={}", shared.path().canonicalize()?.display());
    let h0 = &c.nodes[0];
    h0.ok(&[
        "volume",
        "create",
        "held",
        "--driver",
        "bind",
        "-o",
        &path,
        "-o",
        "scope=cluster",
        "--access",
        "rwo",
    ]);
    let attach = |node: &str| stowage_testkit::csi::attach(&h0.csi_socket(), "held", node);
    attach("h2").map_err(|e| anyhow::anyhow!("attaching to h2: {e}"))?;
    let within = Duration::from_secs(TTL + 20);
    let cut = Instant::now();
    c.net.partition(2);
    let down = holds_within(within, || {
        node_states(h0).get(2).is_some_and(|s| s == "down")
    });
    let down_after = cut.elapsed();
    let attached = holds_within(within, || attach("h0").is_ok());
    let attached_after = cut.elapsed();
    c.net.heal(2);
    anyhow::ensure!(down && attached, "h2 was not released within {within:?}");
    Ok((down_after, attached_after))
}

/// Cycles per second since `start` of the clients `tasks`, each of which
/// returns how many cycles it made.
async fn per_second(
    tasks: Vec<tokio::task::JoinHandle<Result<usize>>>,
    start: Instant,
) -> Result<f64> {
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The etcd requests of one cycle, as the daemon makes them, with values
/// of a record's size: create (put if absent, put), mount (put record and
/// use), unmount (put record, delete use) and remove (read, put, delete),
/// every write a transaction comparing the record's revision. Only remove
/// reads: a create puts if absent, and mount and unmount change the
/// volume as the daemon last saved it. Returns cycles per second of
/// `clients` clients.
async fn store_alone(endpoints: Vec<String>, clients: usize, seconds: f64) -> Result<f64> {
    use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
    let value = "x".repeat(600);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (endpoints, value) = (endpoints.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = Client::connect(endpoints, None).await?.kv_client();
            let mut done = 0usize;
            while Instant::now() < deadline {
                let key = format!("/bench/volumes/c{c}-{done}");
                let uses = format!("/bench/uses/c{c}-{done}/");
                let read = Txn::new().and_then([
                    TxnOp::get(key.as_str(), None),
                    TxnOp::get(uses.as_str(), Some(GetOptions::new().with_prefix())),
                ]);
                let revision =
                    |r: &etcd_client::TxnResponse| r.header().map_or(0, |h| h.revision());
                let write = |rev: i64, ops: Vec<TxnOp>| {
                    Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                        .and_then(ops)
                };
                let put = || TxnOp::put(key.as_str(), value.as_str(), None);
                let use_key = format!("{uses}h0");
                let mut rev = revision(&kv.txn(write(0, vec![put()])).await?);
                rev = revision(&kv.txn(write(rev, vec![put()])).await?);
                let mount = vec![put(), TxnOp::put(use_key.as_str(), "c", None)];
                rev = revision(&kv.txn(write(rev, mount)).await?);
                let unmount = vec![put(), TxnOp::delete(use_key.as_str(), None)];
                rev = revision(&kv.txn(write(rev, unmount)).await?);
                kv.txn(read).await?;
                rev = revision(&kv.txn(write(rev, vec![put()])).await?);
                kv.txn(write(rev, vec![TxnOp::delete(key.as_str(), None)]))
                    .await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    per_second(tasks, start).await
}

/// `store_alone` run on `host` (its network is the test network's), by
/// this program started again there with `--store-alone`.
fn store_alone_on(host: &Host, endpoints: &[&str], clients: usize, seconds: f64) -> Result<f64> {
    let me = std::env::current_exe()?;
    let out = host
        .command(&me.to_string_lossy())
        .args(["--store-alone", &endpoints.join(","), &clients.to_string()])
        .arg(seconds.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "store alone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, endpoints, clients, seconds] = &args[..] {
        if flag == "--store-alone" {
            let endpoints = endpoints.split(',').map(str::to_string).collect();
            let runtime = tokio::runtime::Runtime::new()?;
            let rate =
                runtime.block_on(store_alone(endpoints, clients.parse()?, seconds.parse()?))?;
            println!("{rate}");
            return Ok(());
        }
    }
    let s = settings()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sqlite = daemon_on_root_fs()?;
    let c = cluster()?;
    let ours: Vec<PathBuf> = c.nodes.iter().map(Daemon::socket).collect();
    let theirs = vec![sqlite.socket()];

    println!(
        "bench/cluster: three hosts in network namespaces, an etcd member and a daemon on each, \
         beside one daemon on SQLite; median of {} runs of {}s",
        s.runs, s.seconds
    );
    println!("cycle: create+mount+unmount+remove over REST, local driver; cluster clients spread over the three hosts");
    println!(
        "etcd alone: the cluster's etcd making a cycle's 7 requests (1 read, 6 \
         compare-and-put transactions) from clients with no daemon: this machine's ceiling\n"
    );
    println!(
        "{:<28} | {:>12} | {:>12} | {:>6}",
        "", "etcd cluster", "SQLite", "ratio"
    );
    println!("{}", "-".repeat(68));
    let endpoints: Vec<&str> = c.etcd.iter().map(|m| m.endpoint.as_str()).collect();
    let mut round = 0;
    let mut eight = 0.0;
    let mut alone = Vec::new();
    for clients in [1, 8] {
        let (mut e, mut q, mut a) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..s.runs {
            round += 1;
            e.push(runtime.block_on(cycles(&ours, clients, s.seconds, round))?);
            q.push(runtime.block_on(cycles(&theirs, clients, s.seconds, round))?);
            a.push(store_alone_on(
                &c.net.hosts[0],
                &endpoints,
                clients,
                s.seconds,
            )?);
        }
        let (e, q) = (median_f64(&e), median_f64(&q));
        alone.push((clients, e, median_f64(&a)));
        println!(
            "{:<28} | {:>12.0} | {:>12.0} | {:>5.2}x",
            format!("cycles/s, {clients} client(s)"),
            e,
            q,
            e / q
        );
        if clients == 8 {
            eight = e;
        }
    }

    for (clients, e, a) in alone {
        println!(
            "{:<28} | {:>12.0} | {:>12} | {:>5.2}x  (Stowage / etcd alone)",
            format!("  etcd alone, {clients} client(s)"),
            a,
            "-",
            e / a
        );
    }

    runtime.block_on(populate(&ours, VOLUMES))?;
    runtime.block_on(populate(&theirs, VOLUMES))?;
    let (e_first, e_ls) = runtime.block_on(ls(&ours[0], s.runs.max(5)))?;
    let (q_first, q_ls) = runtime.block_on(ls(&theirs[0], s.runs.max(5)))?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<28} | {:>10.1}ms | {:>10.1}ms | {:>5.2}x",
        format!("ls of {VOLUMES} volumes"),
        ms(e_ls),
        ms(q_ls),
        ms(e_ls) / ms(q_ls)
    );
    println!(
        "{:<28} | {:>10.1}ms | {:>10.1}ms | {:>5.2}x",
        "  the first ls after creates",
        ms(e_first),
        ms(q_first),
        ms(e_first) / ms(q_first)
    );

    let (down, attached) = partition(&c)?;
    println!(
        "\nhost cut off (TTL {TTL} s): down on the others after {:.1} s; its exclusive volume \
         attached elsewhere after {:.1} s (target TTL + 5 = {} s; Kubernetes force-detaches after 360 s)",
        down.as_secs_f64(),
        attached.as_secs_f64(),
        TTL + 5
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "\ntargets: >= {TARGET_CYCLES_PER_SEC:.0} cycles/s with 8 clients: {} ({eight:.0}); \
         ls of {VOLUMES} < {} ms: {} ({:.1} ms); released within TTL + 5 s: {} ({:.1} s)",
        met(eight >= TARGET_CYCLES_PER_SEC),
        TARGET_LS.as_millis(),
        met(e_ls < TARGET_LS),
        ms(e_ls),
        met(attached <= Duration::from_secs(TTL + 5)),
        attached.as_secs_f64()
    );
    Ok(())
}
