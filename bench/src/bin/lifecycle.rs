//! `bench/lifecycle`: full volume cycles (create, mount, unmount, remove)
//! through the REST socket of a real daemon on the local driver, against
//! the same cycle done by hand with `mkdir`, `mount --bind`, `umount` and
//! `rmdir` processes. Stowage's create and remove are fsync'd before
//! their replies, and its mount and unmount records outlive a `kill -9`
//! (they mirror mounts, which a reboot drops too); the by-hand cycle
//! persists nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use stowage_bench::{daemon_on_root_fs, median_f64, rest_cycle, Conn, RunSettings};

const TARGET_CYCLES_PER_SEC: f64 = 500.0;

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Run {
    cycles_per_sec: f64,
    op_p50_ms: f64,
    op_p99_ms: f64,
    cycle_p50_ms: f64,
    cycle_p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn summarize(
    cycles: usize,
    elapsed: Duration,
    mut ops: Vec<Duration>,
    mut cyc: Vec<Duration>,
) -> Run {
    ops.sort();
    cyc.sort();
    Run {
        cycles_per_sec: cycles as f64 / elapsed.as_secs_f64(),
        op_p50_ms: percentile(&ops, 0.5),
        op_p99_ms: percentile(&ops, 0.99),
        cycle_p50_ms: percentile(&cyc, 0.5),
        cycle_p99_ms: percentile(&cyc, 0.99),
    }
}

/// The median of each figure over several runs.
fn median(runs: &[Run]) -> Run {
    let med = |f: fn(&Run) -> f64| median_f64(&runs.iter().map(f).collect::<Vec<_>>());
    Run {
        cycles_per_sec: med(|r| r.cycles_per_sec),
        op_p50_ms: med(|r| r.op_p50_ms),
        op_p99_ms: med(|r| r.op_p99_ms),
        cycle_p50_ms: med(|r| r.cycle_p50_ms),
        cycle_p99_ms: med(|r| r.cycle_p99_ms),
    }
}

async fn stowage_run(socket: &Path, clients: usize, seconds: f64, round: usize) -> Result<Run> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let socket = socket.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await?;
            let (mut ops, mut cycles) = (Vec::new(), Vec::new());
            let mut i = 0;
            while Instant::now() < deadline {
                let name = format!("r{round}-c{c}-{i}");
                i += 1;
                let cycle = Instant::now();
                let steps = rest_cycle(&name, format!(r#"{{"name":"{name}"}}"#));
                for (method, path, body) in steps {
                    let t = Instant::now();
                    conn.call(method, &path, body).await?;
                    ops.push(t.elapsed());
                }
                cycles.push(cycle.elapsed());
            }
            anyhow::Ok((ops, cycles))
        }));
    }
    let (mut ops, mut cycles) = (Vec::new(), Vec::new());
    for t in tasks {
        let (o, c) = t.await??;
        ops.extend(o);
        cycles.extend(c);
    }
    Ok(summarize(cycles.len(), start.elapsed(), ops, cycles))
}

fn run_ok(cmd: &str, args: &[&Path]) -> Result<()> {
    let status = Command::new(cmd).args(args).status()?;
    if !status.success() {
        bail!("{cmd} {args:?} failed with {status}");
    }
    Ok(())
}

/// The same cycle by hand: four processes, no persistence.
fn by_hand_run(dir: &Path, clients: usize, seconds: f64) -> Result<Run> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let results: Vec<Result<(Vec<Duration>, Vec<Duration>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let (mut ops, mut cycles) = (Vec::new(), Vec::new());
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let v = dir.join(format!("c{c}-{i}"));
                        i += 1;
                        let cycle = Instant::now();
                        for (cmd, args) in [
                            ("mkdir", vec![v.as_path()]),
                            ("mount", vec![Path::new("--bind"), &v, &v]),
                            ("umount", vec![v.as_path()]),
                            ("rmdir", vec![v.as_path()]),
                        ] {
                            let t = Instant::now();
                            run_ok(cmd, &args)?;
                            ops.push(t.elapsed());
                        }
                        cycles.push(cycle.elapsed());
                    }
                    Ok((ops, cycles))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut ops, mut cycles) = (Vec::new(), Vec::new());
    for r in results {
        let (o, c) = r?;
        ops.extend(o);
        cycles.extend(c);
    }
    Ok(summarize(cycles.len(), start.elapsed(), ops, cycles))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let s = RunSettings::from_args()?;
    let daemon = daemon_on_root_fs()?;
    let socket = daemon.socket();
    let hand_dir = daemon.base().join("by-hand");
    std::fs::create_dir_all(&hand_dir)?;

    println!(
        "bench/lifecycle: create+mount+unmount+remove on the local driver; median of {} runs of {}s",
        s.runs, s.seconds
    );
    println!(
        "stowage: REST over the unix socket; create and remove fsync'd, mount records kill-9 safe"
    );
    println!("by hand: mkdir + mount --bind + umount + rmdir processes, nothing persisted\n");
    println!(
        "{:>7} | {:>10} | {:>9} | {:>8} | {:>8} | {:>9} | {:>9} | {:>10} | {:>6}",
        "clients",
        "cycles/s",
        "ops/s",
        "op p50",
        "op p99",
        "cycle p50",
        "cycle p99",
        "by hand/s",
        "ratio"
    );
    println!("{}", "-".repeat(104));
    let mut round = 0;
    let mut eight = 0.0;
    for clients in [1, 8] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..s.runs {
            round += 1;
            ours.push(stowage_run(&socket, clients, s.seconds, round).await?);
            theirs.push(by_hand_run(&hand_dir, clients, s.seconds)?);
        }
        let (o, t) = (median(&ours), median(&theirs));
        println!(
            "{:>7} | {:>10.0} | {:>9.0} | {:>6.2}ms | {:>6.2}ms | {:>7.2}ms | {:>7.2}ms | {:>10.0} | {:>5.1}x",
            clients,
            o.cycles_per_sec,
            o.cycles_per_sec * 4.0,
            o.op_p50_ms,
            o.op_p99_ms,
            o.cycle_p50_ms,
            o.cycle_p99_ms,
            t.cycles_per_sec,
            o.cycles_per_sec / t.cycles_per_sec
        );
        if clients == 8 {
            eight = o.cycles_per_sec;
        }
    }
    println!(
        "\ntarget: >= {TARGET_CYCLES_PER_SEC:.0} cycles/s (2,000 ops/s) with 8 clients: {} ({eight:.0} cycles/s)",
        if eight >= TARGET_CYCLES_PER_SEC { "met" } else { "NOT met" }
    );
    Ok(())
}
