//! `bench/scale`: a daemon holding many volumes, many of them mounted.
//! Times `volume ls` and `volume inspect` through the CLI, and a restart
//! from process start to open sockets (reconcile included), against the
//! issue's targets; the floor is the CLI's own round trip (`stowage
//! version`: a process start and one request), measured in the same run.
//! Also prints how fast the volumes were created and mounted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use stowage_bench::{daemon_on_root_fs, median, Conn};

const TARGET_LS: Duration = Duration::from_millis(200);
const TARGET_INSPECT: Duration = Duration::from_millis(5);
const TARGET_START: Duration = Duration::from_secs(3);
/// Concurrent REST clients while populating.
const CLIENTS: usize = 8;

struct Settings {
    volumes: usize,
    mounted: usize,
    runs: usize,
}

impl Settings {
    fn from_args() -> Result<Settings> {
        let mut s = Settings {
            volumes: 100_000,
            mounted: 10_000,
            runs: 5,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let value: usize = it.next().context("flag without a value")?.parse()?;
            match a.as_str() {
                "--volumes" => s.volumes = value,
                "--mounted" => s.mounted = value,
                "--runs" => s.runs = value,
                _ => bail!("unknown flag {a}; use --volumes N --mounted M --runs R"),
            }
        }
        if s.mounted > s.volumes {
            bail!("--mounted must not exceed --volumes");
        }
        Ok(s)
    }
}

/// Sends `count` requests made by `request(i)` over `CLIENTS` connections;
/// returns how many per second went through.
async fn populate(
    socket: &Path,
    count: usize,
    request: fn(usize) -> (Method, String, String),
) -> Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let socket = socket.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await?;
            for i in (c..count).step_by(CLIENTS) {
                let (method, path, body) = request(i);
                conn.call(method, &path, Some(body)).await?;
                if i % 10_000 == 0 && i > 0 {
                    eprint!(".");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!();
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// The time of one CLI call, its output thrown away.
fn cli_time(bin: &str, socket: &Path, args: &[&str]) -> Result<Duration> {
    let host = format!("unix://{}", socket.display());
    let t = Instant::now();
    let status = Command::new(bin)
        .arg("--host")
        .arg(&host)
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    let elapsed = t.elapsed();
    if !status.success() {
        bail!("stowage {args:?} failed with {status}");
    }
    Ok(elapsed)
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let s = Settings::from_args()?;
    let mut daemon = daemon_on_root_fs()?;
    let socket = daemon.socket();
    let bin = daemon.bin.to_str().context("binary path")?.to_string();

    eprintln!("creating {} local volumes", s.volumes);
    let created = populate(&socket, s.volumes, |i| {
        let name = format!("v{i:06}");
        (
            Method::POST,
            "/v1/volumes".into(),
            format!(r#"{{"name":"{name}"}}"#),
        )
    })
    .await?;
    eprintln!("mounting {} of them", s.mounted);
    let mounted = populate(&socket, s.mounted, |i| {
        let path = format!("/v1/volumes/v{i:06}/mount");
        (Method::POST, path, r#"{"consumer":"bench"}"#.into())
    })
    .await?;

    let mut floor = Vec::new();
    let mut ls = Vec::new();
    let mut ls_json = Vec::new();
    let mut inspect = Vec::new();
    let mut inspect_rest = Vec::new();
    let mut ls_rest = Vec::new();
    let mut ls_none = Vec::new();
    let mut ls_summary = Vec::new();
    let mut ls_quiet = Vec::new();
    let mut conn = Conn::open(&socket).await?;
    for r in 0..s.runs {
        floor.push(cli_time(&bin, &socket, &["version"])?);
        ls.push(cli_time(&bin, &socket, &["volume", "ls"])?);
        ls_json.push(cli_time(
            &bin,
            &socket,
            &["volume", "ls", "--format", "json"],
        )?);
        ls_quiet.push(cli_time(&bin, &socket, &["volume", "ls", "-q"])?);
        let name = format!("v{:06}", (r * 7919) % s.mounted.max(1));
        inspect.push(cli_time(&bin, &socket, &["volume", "inspect", &name])?);
        let t = Instant::now();
        conn.call(Method::GET, &format!("/v1/volumes/{name}"), None)
            .await?;
        inspect_rest.push(t.elapsed());
        let t = Instant::now();
        conn.call(Method::GET, "/v1/volumes", None).await?;
        ls_rest.push(t.elapsed());
        let t = Instant::now();
        conn.call(Method::GET, "/v1/volumes?view=summary", None)
            .await?;
        ls_summary.push(t.elapsed());
        // Every record read, none sent: the store's and the parse's share.
        let t = Instant::now();
        conn.call(Method::GET, "/v1/volumes?filter=driver=none", None)
            .await?;
        ls_none.push(t.elapsed());
    }
    drop(conn);
    let mut start = Vec::new();
    for _ in 0..s.runs.min(3) {
        daemon.stop();
        let t = Instant::now();
        daemon.spawn();
        start.push(t.elapsed());
    }

    println!(
        "bench/scale: {} local volumes, {} of them mounted; medians of {} runs ({} restarts)",
        s.volumes,
        s.mounted,
        s.runs,
        start.len()
    );
    println!(
        "populated through REST with {CLIENTS} clients: {created:.0} creates/s (fsync'd), {mounted:.0} mounts/s"
    );
    println!(
        "floor: the CLI's own round trip (`stowage version`): {}\n",
        ms(median(&floor))
    );
    println!(
        "{:<34} | {:>9} | {:>9} | {:>9} | {:>7} | verdict",
        "step", "stowage", "floor", "target", "ratio"
    );
    println!("{}", "-".repeat(86));
    let row = |what: &str, ours: Duration, floor: Option<Duration>, target: Duration| {
        let ours_s = ours.as_secs_f64();
        println!(
            "{:<34} | {:>9} | {:>9} | {:>9} | {:>6.2}x | {}",
            what,
            ms(ours),
            floor.map(ms).unwrap_or_else(|| "-".into()),
            ms(target),
            ours_s / target.as_secs_f64(),
            if ours <= target { "met" } else { "NOT met" }
        );
    };
    let f = Some(median(&floor));
    row("volume ls (CLI, table)", median(&ls), f, TARGET_LS);
    row("volume ls -q (CLI, names)", median(&ls_quiet), f, TARGET_LS);
    row(
        "volume ls --format json (CLI)",
        median(&ls_json),
        f,
        TARGET_LS,
    );
    row("GET /v1/volumes (REST)", median(&ls_rest), None, TARGET_LS);
    row(
        "  of which reading the records",
        median(&ls_none),
        None,
        TARGET_LS,
    );
    row(
        "GET /v1/volumes?view=summary (REST)",
        median(&ls_summary),
        None,
        TARGET_LS,
    );
    row("volume inspect (CLI)", median(&inspect), f, TARGET_INSPECT);
    row(
        "GET /v1/volumes/NAME (REST)",
        median(&inspect_rest),
        None,
        TARGET_INSPECT,
    );
    row(
        "restart: start to open sockets",
        median(&start),
        None,
        TARGET_START,
    );
    println!("\nratio: stowage / target (at most 1.00x meets it)");
    Ok(())
}
