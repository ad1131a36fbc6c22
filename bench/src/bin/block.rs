//! `bench/block`: a Stowage block volume against the filesystem beneath it.
//!
//! 1. fio, direct I/O: sequential 1 MiB write and read of a 2 GiB file
//!    (iodepth 16) and 4 KiB random read and write (iodepth 32, timed), in
//!    an ext4 block volume whose image lives on the root filesystem,
//!    against the same jobs in a plain directory of that root filesystem.
//! 2. Snapshot and clone of a 10 GiB volume holding 2 GiB against a full
//!    copy (`cp -a --reflink=never`) of the same data: a block volume on an
//!    XFS data root with reflink, and a local volume (a subvolume) on a
//!    btrfs data root.
//!
//! Each figure is the median of `--runs` runs (default 3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use stowage_bench::{median, median_f64, stowage_bin, Conn};
use stowage_testkit::{require_root, run, Daemon, ScratchFs};

/// One fio job; returns bytes/s and IOPS.
fn fio(dir: &Path, rw: &str, bs: &str, depth: u32, runtime: Option<u32>) -> Result<(f64, f64)> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        "--output-format=json",
        "--direct=1",
        "--ioengine=libaio",
        "--size=2G",
        "--group_reporting",
    ])
    .arg(format!("--filename={}", dir.join("fio.dat").display()))
    .arg(format!("--rw={rw}"))
    .arg(format!("--bs={bs}"))
    .arg(format!("--iodepth={depth}"));
    if let Some(secs) = runtime {
        cmd.args(["--time_based".to_string(), format!("--runtime={secs}")]);
    }
    let out = cmd.output().context("run fio (apt-get install fio)")?;
    if !out.status.success() {
        bail!("fio: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let job = &v["jobs"][0];
    let side = if rw.contains("read") { "read" } else { "write" };
    Ok((
        job[side]["bw_bytes"].as_f64().unwrap_or(0.0),
        job[side]["iops"].as_f64().unwrap_or(0.0),
    ))
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

async fn mount(conn: &mut Conn, name: &str) -> Result<PathBuf> {
    let body = conn
        .call(
            Method::POST,
            &format!("/v1/volumes/{name}/mount"),
            Some(r#"{"consumer":"bench"}"#.into()),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(PathBuf::from(v["mountpoint"].as_str().unwrap_or_default()))
}

/// A fio job: label, rw, block size, queue depth, seconds if timed.
struct Job(&'static str, &'static str, &'static str, u32, Option<u32>);

async fn io(bin: &str, runs: usize, runtime: u32) -> Result<()> {
    let d = Daemon::start_in(bin, Path::new("/var/tmp"), &[]);
    let mut conn = Conn::open(&d.socket()).await?;
    conn.call(
        Method::POST,
        "/v1/volumes",
        Some(r#"{"name":"fio","driver":"block","options":{"size":"4G"}}"#.into()),
    )
    .await?;
    let volume = mount(&mut conn, "fio").await?;
    let plain = d.base().join("plain");
    std::fs::create_dir(&plain)?;

    println!("fio on a block volume (ext4 in a loop-backed image on the root ext4) vs a plain directory of the root ext4");
    println!("direct I/O; medians of {runs} runs; random jobs {runtime} s each");
    println!(
        "{:<28} {:>14} {:>14} {:>7}",
        "job", "stowage", "native", "ratio"
    );
    let jobs = [
        Job("seq write 1M (MiB/s)", "write", "1M", 16, None),
        Job("seq read 1M (MiB/s)", "read", "1M", 16, None),
        Job(
            "rand read 4k qd32 (IOPS)",
            "randread",
            "4k",
            32,
            Some(runtime),
        ),
        Job(
            "rand write 4k qd32 (IOPS)",
            "randwrite",
            "4k",
            32,
            Some(runtime),
        ),
    ];
    for Job(label, rw, bs, depth, time) in jobs {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for i in 0..runs {
            // Alternate which goes first so drift hits both alike.
            let mut order = [(&volume, &mut ours), (&plain, &mut theirs)];
            if i % 2 == 1 {
                order.reverse();
            }
            for (dir, out) in order {
                drop_caches();
                let (bw, iops) = fio(dir, rw, bs, depth, time)?;
                // Timed jobs report IOPS, sized ones bandwidth.
                out.push(match time {
                    None => bw / (1 << 20) as f64,
                    Some(_) => iops,
                });
            }
        }
        let (a, b) = (median_f64(&ours), median_f64(&theirs));
        println!("{label:<28} {a:>14.0} {b:>14.0} {:>7.2}", a / b);
    }
    Ok(())
}

/// One snapshot measurement: a volume on a data root made for it.
struct SnapshotCase {
    title: &'static str,
    fs: &'static str,
    mkfs_args: &'static [&'static str],
    /// The volume's create body.
    create: &'static str,
    /// Where its data lives under the data root, `ID` standing for the
    /// volume's id: what the full copy copies.
    data: &'static str,
}

const SNAPSHOT_CASES: &[SnapshotCase] = &[
    SnapshotCase {
        title: "10 GiB block volume holding 2 GiB, XFS data root with reflink",
        fs: "xfs",
        mkfs_args: &["-m", "reflink=1"],
        create: r#"{"name":"big","driver":"block","options":{"size":"10G"}}"#,
        data: "images/ID.img",
    },
    SnapshotCase {
        title: "10 GiB local volume holding 2 GiB, btrfs data root (subvolume)",
        fs: "btrfs",
        mkfs_args: &[],
        create: r#"{"name":"big","driver":"local","options":{"size":"10G"}}"#,
        data: "volumes/ID",
    },
];

async fn snapshots(bin: &str, runs: usize, case: &SnapshotCase) -> Result<()> {
    let root = ScratchFs::new(case.fs, "24G", case.mkfs_args, "");
    let d = Daemon::start_in(bin, root.path(), &[]);
    let mut conn = Conn::open(&d.socket()).await?;
    conn.call(Method::POST, "/v1/volumes", Some(case.create.into()))
        .await?;
    let mp = mount(&mut conn, "big").await?;
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}/data", mp.display()),
            "bs=4M",
            "count=512",
            "conv=fsync",
            "status=none",
        ],
    );
    let (mut snap, mut clone, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        conn.call(
            Method::POST,
            "/v1/snapshots",
            Some(format!(r#"{{"volume":"big","name":"s{i}"}}"#)),
        )
        .await?;
        snap.push(t.elapsed());
        let t = Instant::now();
        conn.call(
            Method::POST,
            "/v1/volumes",
            Some(format!(r#"{{"name":"c{i}","from_snapshot":"s{i}"}}"#)),
        )
        .await?;
        clone.push(t.elapsed());
    }
    let id = mp.file_name().context("mountpoint")?.to_string_lossy();
    let source = d.data.join(case.data.replace("ID", &id));
    for i in 0..runs {
        let dst = d.base().join(format!("copy{i}"));
        let t = Instant::now();
        run(
            "cp",
            &[
                "-a",
                "--reflink=never",
                source.to_str().unwrap_or_default(),
                dst.to_str().unwrap_or_default(),
            ],
        );
        run("sync", &["-f", dst.to_str().unwrap_or_default()]);
        copy.push(t.elapsed());
        run("rm", &["-rf", dst.to_str().unwrap_or_default()]);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let full = median(&copy);
    println!();
    println!("{}; medians of {runs} runs", case.title);
    println!(
        "{:<44} {:>10} {:>16} {:>9}",
        "operation", "stowage", "full copy (cp)", "speed-up"
    );
    for (label, v) in [
        ("snapshot while mounted (REST)", &snap),
        ("new volume from snapshot (REST)", &clone),
    ] {
        let m = median(v);
        println!(
            "{label:<44} {:>8.1}ms {:>14.1}ms {:>8.0}x",
            ms(m),
            ms(full),
            full.as_secs_f64() / m.as_secs_f64()
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    require_root();
    let (mut runs, mut runtime, mut parts) = (3usize, 30u32, "io,snapshot".to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().context("a flag needs a value")?;
        match flag.as_str() {
            "--runs" => runs = value.parse()?,
            "--runtime" => runtime = value.parse()?,
            "--only" => parts = value.clone(),
            _ => bail!("usage: block [--runs N] [--runtime SECONDS] [--only io|snapshot]"),
        }
    }
    let bin = stowage_bin()?;
    let bin = bin.as_str();
    if parts.contains("io") {
        io(bin, runs, runtime).await?;
    }
    if parts.contains("snapshot") {
        for case in SNAPSHOT_CASES {
            snapshots(bin, runs, case).await?;
        }
    }
    Ok(())
}
