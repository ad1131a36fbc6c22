//! `bench/ownership`: making a tree of N files usable by uid 184:998 when
//! it belongs to 15149 on disk, three ways, on a loop-backed ext4:
//!
//! - Stowage with `owner=184:998` through an idmapped mount: `create` +
//!   `mount` over the REST socket, until the mountpoint is usable;
//! - Stowage's fallback (`ownership=chown`): the same two calls, which now
//!   walk the tree in parallel;
//! - plain `chown -R 184:998`.
//!
//! Between runs the tree goes back to 15149 and is written back (untimed).
//! Caches are warm.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use stowage_bench::{daemon_on_root_fs, median, Conn};
use stowage_sys::{IdMapping, IdRange, LinuxSys, Sys};
use stowage_testkit::{owner, require_root, run};

const DISK: u32 = 15149;
const OWNER: (u32, u32) = (184, 998);
const MIN_IDMAP_RUNS: usize = 31;

/// `n` empty files in directories of 1000, all owned by `DISK`.
fn build_tree(root: &Path, n: usize) -> Result<()> {
    std::fs::create_dir(root)?;
    std::os::unix::fs::chown(root, Some(DISK), Some(DISK))?;
    for d in 0..n.div_ceil(1000) {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir(&dir)?;
        std::os::unix::fs::chown(&dir, Some(DISK), Some(DISK))?;
        for f in 0..1000.min(n - d * 1000) {
            let file = std::fs::File::create(dir.join(format!("f{f}")))?;
            std::os::unix::fs::fchown(&file, Some(DISK), Some(DISK))?;
        }
    }
    Ok(())
}

fn mapping(from: (u32, u32), to: (u32, u32)) -> IdMapping {
    IdMapping {
        uids: vec![IdRange {
            disk: from.0,
            container: to.0,
            count: 1,
        }],
        gids: vec![IdRange {
            disk: from.1,
            container: to.1,
            count: 1,
        }],
    }
}

/// Gives the tree back to `DISK`, whatever it was changed to, and writes
/// that back, so the next timed run does not pay for this one's inodes.
fn reset(root: &Path) -> Result<()> {
    LinuxSys.chown_tree(root, &mapping(OWNER, (DISK, DISK)), 2)?;
    settle(root);
    Ok(())
}

/// Writes back the filesystem holding `root`, then every filesystem: the
/// loop device's writes dirty its image file on the root filesystem, whose
/// writeback would otherwise slow the store's fsyncs in the next timed
/// run (untimed).
fn settle(root: &Path) {
    run("sync", &["-f", root.to_str().unwrap()]);
    run("sync", &[]);
}

/// create + mount through the REST socket; returns the time and the
/// mountpoint.
async fn create_and_mount(
    conn: &mut Conn,
    name: &str,
    tree: &Path,
    method: &str,
) -> Result<(Duration, PathBuf)> {
    let body = serde_json::json!({
        "name": name,
        "driver": "bind",
        "options": {"path": tree, "owner": "184:998", "ownership": method},
    });
    let t = Instant::now();
    conn.call(Method::POST, "/v1/volumes", Some(body.to_string()))
        .await?;
    let mount = conn
        .call(
            Method::POST,
            &format!("/v1/volumes/{name}/mount"),
            Some(r#"{"consumer":"bench"}"#.into()),
        )
        .await?;
    let elapsed = t.elapsed();
    let answer: serde_json::Value = serde_json::from_slice(&mount)?;
    let mountpoint = PathBuf::from(answer["mountpoint"].as_str().context("mountpoint")?);
    Ok((elapsed, mountpoint))
}

async fn release(conn: &mut Conn, name: &str) -> Result<()> {
    conn.call(
        Method::POST,
        &format!("/v1/volumes/{name}/unmount"),
        Some(r#"{"consumer":"bench"}"#.into()),
    )
    .await?;
    conn.call(Method::DELETE, &format!("/v1/volumes/{name}"), None)
        .await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    require_root();
    let mut sizes = vec![10_000usize, 100_000, 1_000_000];
    let mut runs = 5usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().context("flag without a value")?;
        match flag.as_str() {
            "--sizes" => sizes = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--runs" => runs = value.parse()?,
            _ => bail!("usage: ownership [--sizes N,N,...] [--runs N]"),
        }
    }

    let tmp = tempfile::Builder::new()
        .prefix("stowage-bench-own")
        .tempdir_in("/var/tmp")?;
    let base = tmp.path().canonicalize()?;
    let image = base.join("ext4.img");
    let mnt = base.join("mnt");
    std::fs::create_dir(&mnt)?;
    let inodes = sizes.iter().sum::<usize>() + sizes.len() * 2000 + 10_000;
    run("truncate", &["-s", "8G", image.to_str().unwrap()]);
    run(
        "mkfs.ext4",
        &["-q", "-N", &inodes.to_string(), image.to_str().unwrap()],
    );
    run(
        "mount",
        &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    let result = bench(&base, &mnt, &sizes, runs).await;
    // Cleanup must not panic over the result.
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    result
}

async fn bench(base: &Path, mnt: &Path, sizes: &[usize], runs: usize) -> Result<()> {
    let daemon = daemon_on_root_fs()?;
    let mut conn = Conn::open(&daemon.socket()).await?;

    println!(
        "bench/ownership: make a tree owned by {DISK} usable as 184:998 (ext4 on loop, warm cache)"
    );
    println!(
        "idmap and fallback: create + mount over the REST socket (create's commit is fsync'd)"
    );
    // An idmap run takes about a millisecond on a machine whose noise
    // moves single runs by several: more of them steady the median.
    let idmap_runs = runs.max(MIN_IDMAP_RUNS);
    println!(
        "medians of {idmap_runs} idmap runs and {runs} of the others \
         (1 run of chown -R and of the fallback above 100k files)\n"
    );
    println!(
        "{:>9} | {:>11} | {:>11} | {:>12} | {:>11} | {:>13} | {:>15}",
        "files", "idmap", "idmap mount", "fallback", "chown -R", "chown-R/idmap", "chown-R/fallbk"
    );
    println!("{}", "-".repeat(100));
    let mut verdict = Vec::new();
    for &n in sizes {
        let tree = mnt.join(format!("tree-{n}"));
        build_tree(&tree, n)?;
        settle(&tree);
        let slow_runs = if n > 100_000 { 1 } else { runs };

        // Stowage, idmap.
        let mut idmap = Vec::new();
        for r in 0..idmap_runs {
            let name = format!("idmap-{n}-{r}");
            let (t, mp) = create_and_mount(&mut conn, &name, &tree, "idmap").await?;
            if owner(&mp) != OWNER || owner(&tree) != (DISK, DISK) {
                bail!("idmap run did not present the tree as 184:998");
            }
            idmap.push(t);
            release(&mut conn, &name).await?;
        }
        // The kernel's share: an idmapped bind mount with a reused namespace.
        let ns = LinuxSys.user_namespace(&mapping((DISK, DISK), OWNER))?;
        let probe = base.join(format!("probe-{n}"));
        std::fs::create_dir(&probe)?;
        let mut syscalls = Vec::new();
        for _ in 0..idmap_runs {
            let t = Instant::now();
            LinuxSys.bind_mount(&tree, &probe, false, Some(&ns))?;
            syscalls.push(t.elapsed());
            LinuxSys.unmount(&probe)?;
        }

        // Stowage's fallback.
        let mut fallback = Vec::new();
        for r in 0..slow_runs {
            let name = format!("chown-{n}-{r}");
            let (t, _) = create_and_mount(&mut conn, &name, &tree, "chown").await?;
            if owner(&tree) != OWNER || owner(&tree.join("d0/f0")) != OWNER {
                bail!("the fallback did not change the owners");
            }
            fallback.push(t);
            release(&mut conn, &name).await?;
            reset(&tree)?;
        }

        // Plain chown -R.
        let mut chown = Vec::new();
        for _ in 0..slow_runs {
            let t = Instant::now();
            let status = Command::new("chown")
                .arg("-R")
                .arg("184:998")
                .arg(&tree)
                .status()?;
            chown.push(t.elapsed());
            if !status.success() {
                bail!("chown -R failed with {status}");
            }
            reset(&tree)?;
        }

        let (i, s, f, c) = (
            median(&idmap),
            median(&syscalls),
            median(&fallback),
            median(&chown),
        );
        println!(
            "{:>9} | {:>8.3} ms | {:>8.1} µs | {:>9.1} ms | {:>8.1} ms | {:>12.0}x | {:>14.2}x",
            n,
            i.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e6,
            f.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            c.as_secs_f64() / i.as_secs_f64(),
            c.as_secs_f64() / f.as_secs_f64(),
        );
        verdict.push((
            n,
            i,
            c.as_secs_f64() / i.as_secs_f64(),
            c.as_secs_f64() / f.as_secs_f64(),
        ));
        std::fs::remove_dir_all(&tree)?;
    }
    println!();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let worst = verdict.iter().map(|v| v.1).max().unwrap_or_default();
    println!(
        "idmap at most 1 ms at every size: {} (worst {:.3} ms)",
        met(worst <= Duration::from_millis(1)),
        worst.as_secs_f64() * 1e3
    );
    if let Some(v) = verdict.iter().find(|v| v.0 >= 1_000_000) {
        println!(
            "idmap at least 1000x faster than chown -R at 1M files: {} ({:.0}x)",
            met(v.2 >= 1000.0),
            v.2
        );
    }
    let slowest = verdict.iter().map(|v| v.3).fold(f64::INFINITY, f64::min);
    println!(
        "fallback at least 1.5x faster than chown -R: {} (lowest {:.2}x)",
        met(slowest >= 1.5),
        slowest
    );
    Ok(())
}
