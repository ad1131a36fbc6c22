//! `bench/csi`: full CSI cycles (CreateVolume, NodeStage, NodePublish,
//! NodeUnpublish, NodeUnstage, DeleteVolume) through the CSI socket of a
//! real daemon, against the REST cycle (create, mount, unmount, remove) on
//! the same driver, measured in the same run on the same daemon. The CSI
//! cycle does two bind mounts more (staging and target paths) than the
//! REST one; that is what a CO asks for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use hyper::Method;
use stowage_bench::{daemon_on_root_fs, median, median_f64, rest_cycle, Conn, RunSettings};
use stowage_testkit::csi::{proto, CsiClient};

use proto::volume_capability::access_mode::Mode;
use proto::volume_capability::{AccessMode, AccessType, MountVolume};

/// The CSI door may add at most this much over the REST door.
const TARGET_OVERHEAD: f64 = 0.20;
const BLOCK_SIZE: i64 = 64 << 20;

/// Median cycle time of one run, and cycles per second (counting the
/// CO's own work between cycles).
#[derive(Clone, Copy)]
struct Run {
    cycle_ms: f64,
    per_sec: f64,
}

/// Runs `cycle` back to back for `seconds`, at least once; returns the
/// run's figures and what each cycle returned. A cycle returns the time
/// its calls took: what a CO does around them (making and removing the
/// staging directory) is not the door's.
async fn timed<T>(
    seconds: f64,
    mut cycle: impl AsyncFnMut(usize) -> Result<(Duration, T)>,
) -> Result<(Run, Vec<T>)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let (mut times, mut outputs) = (Vec::new(), Vec::new());
    while times.is_empty() || Instant::now() < deadline {
        let (took, output) = cycle(times.len()).await?;
        times.push(took);
        outputs.push(output);
    }
    let run = Run {
        cycle_ms: median(&times).as_secs_f64() * 1e3,
        per_sec: times.len() as f64 / start.elapsed().as_secs_f64(),
    };
    Ok((run, outputs))
}

/// The median time of `n` calls of `call`.
async fn p50_of(n: usize, mut call: impl AsyncFnMut() -> Result<()>) -> Result<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call().await?;
        times.push(t.elapsed());
    }
    Ok(median(&times))
}

/// The median of each step over `cycles`.
fn step_p50<const N: usize>(cycles: &[[Duration; N]]) -> [Duration; N] {
    std::array::from_fn(|i| median(&cycles.iter().map(|c| c[i]).collect::<Vec<_>>()))
}

/// A table of each step's median per driver, in milliseconds.
fn print_steps<'a>(
    door: &str,
    names: &[&str],
    rows: impl Iterator<Item = (&'a str, &'a [Duration])>,
) {
    println!("\n{door} steps, median over all runs (ms):");
    let header: Vec<String> = names.iter().map(|s| format!("{s:>13}")).collect();
    println!("{:>6} | {}", "driver", header.join(" | "));
    for (driver, p50) in rows {
        let cells: Vec<String> = p50
            .iter()
            .map(|d| format!("{:>13.2}", d.as_secs_f64() * 1e3))
            .collect();
        println!("{driver:>6} | {}", cells.join(" | "));
    }
}

fn median_run(runs: &[Run]) -> Run {
    let med = |f: fn(&Run) -> f64| median_f64(&runs.iter().map(f).collect::<Vec<_>>());
    Run {
        cycle_ms: med(|r| r.cycle_ms),
        per_sec: med(|r| r.per_sec),
    }
}

fn capability() -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// The steps of a CSI cycle, in order.
const STEPS: [&str; 6] = [
    "CreateVolume",
    "NodeStage",
    "NodePublish",
    "NodeUnpublish",
    "NodeUnstage",
    "DeleteVolume",
];
/// The steps of a REST cycle, in order.
const REST_STEPS: [&str; 4] = ["create", "mount", "unmount", "remove"];

/// One CSI cycle; returns the time of its calls and of each step.
async fn csi_cycle(
    csi: &CsiClient,
    driver: &str,
    name: &str,
    paths: &Path,
) -> Result<(Duration, [Duration; 6])> {
    let (mut c, mut n) = (csi.controller.clone(), csi.node.clone());
    let staging = paths.join("staging").join(name);
    std::fs::create_dir_all(&staging)?;
    let target = paths.join("target").join(name);
    let text = |p: &PathBuf| p.to_string_lossy().into_owned();
    let mut times = [Duration::ZERO; 6];
    let mut t = Instant::now();
    let mut lap = |i: usize| {
        times[i] = t.elapsed();
        t = Instant::now();
    };
    c.create_volume(proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: (driver == "block").then_some(proto::CapacityRange {
            required_bytes: BLOCK_SIZE,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability()],
        parameters: HashMap::from([("driver".to_string(), driver.to_string())]),
        ..Default::default()
    })
    .await?;
    lap(0);
    n.node_stage_volume(proto::NodeStageVolumeRequest {
        volume_id: name.into(),
        staging_target_path: text(&staging),
        volume_capability: Some(capability()),
        ..Default::default()
    })
    .await?;
    lap(1);
    n.node_publish_volume(proto::NodePublishVolumeRequest {
        volume_id: name.into(),
        staging_target_path: text(&staging),
        target_path: text(&target),
        volume_capability: Some(capability()),
        ..Default::default()
    })
    .await?;
    lap(2);
    n.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
        volume_id: name.into(),
        target_path: text(&target),
    })
    .await?;
    lap(3);
    n.node_unstage_volume(proto::NodeUnstageVolumeRequest {
        volume_id: name.into(),
        staging_target_path: text(&staging),
    })
    .await?;
    lap(4);
    c.delete_volume(proto::DeleteVolumeRequest {
        volume_id: name.into(),
        ..Default::default()
    })
    .await?;
    lap(5);
    std::fs::remove_dir(&staging)?;
    Ok((times.iter().sum(), times))
}

/// The REST baseline: bench/lifecycle's cycle on `driver`; returns the
/// time of its calls.
async fn rest_run(conn: &mut Conn, driver: &str, name: &str) -> Result<(Duration, [Duration; 4])> {
    let body = match driver {
        "block" => {
            format!(r#"{{"name":"{name}","driver":"block","options":{{"size":"{BLOCK_SIZE}"}}}}"#)
        }
        _ => format!(r#"{{"name":"{name}","driver":"{driver}"}}"#),
    };
    let mut times = [Duration::ZERO; 4];
    for (i, (method, path, body)) in rest_cycle(name, body).into_iter().enumerate() {
        let t = Instant::now();
        conn.call(method, &path, body).await?;
        times[i] = t.elapsed();
    }
    Ok((times.iter().sum(), times))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let s = RunSettings::from_args()?;
    let daemon = daemon_on_root_fs()?;
    let csi = CsiClient::connect(&daemon.csi_socket()).await?;
    let mut conn = Conn::open(&daemon.socket()).await?;
    // The parent of every target path exists, as a CO makes sure.
    let paths = daemon.base().join("co");
    std::fs::create_dir_all(paths.join("target"))?;

    println!(
        "bench/csi: one client, cycles back to back; median of {} runs of {}s",
        s.runs, s.seconds
    );
    println!(
        "csi:  CreateVolume + NodeStage + NodePublish + NodeUnpublish + NodeUnstage + DeleteVolume"
    );
    println!(
        "rest: create + mount + unmount + remove (bench/lifecycle's cycle), same daemon, same run"
    );
    println!("block volumes are {} MiB ext4\n", BLOCK_SIZE >> 20);
    println!(
        "{:>6} | {:>13} | {:>9} | {:>14} | {:>10} | {:>8}",
        "driver", "csi cycle p50", "csi /s", "rest cycle p50", "rest /s", "csi/rest"
    );
    println!("{}", "-".repeat(74));
    let mut worst: f64 = 0.0;
    let mut step_medians = Vec::new();
    let mut round = 0;
    for driver in ["local", "block"] {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        let (mut steps, mut rest_steps) = (Vec::new(), Vec::new());
        for _ in 0..s.runs {
            round += 1;
            let (run, cycles) = timed(s.seconds, async |i| {
                csi_cycle(&csi, driver, &format!("csi-{driver}-{round}-{i}"), &paths).await
            })
            .await?;
            ours.push(run);
            steps.extend(cycles);
            let (run, cycles) = timed(s.seconds, async |i| {
                rest_run(&mut conn, driver, &format!("rest-{driver}-{round}-{i}")).await
            })
            .await?;
            base.push(run);
            rest_steps.extend(cycles);
        }
        let (o, b) = (median_run(&ours), median_run(&base));
        step_medians.push((driver, step_p50(&steps), step_p50(&rest_steps)));
        let ratio = o.cycle_ms / b.cycle_ms;
        worst = worst.max(ratio);
        println!(
            "{:>6} | {:>11.2}ms | {:>9.1} | {:>12.2}ms | {:>10.1} | {:>7.2}x",
            driver, o.cycle_ms, o.per_sec, b.cycle_ms, b.per_sec, ratio
        );
    }
    let csi_steps = step_medians.iter().map(|(d, csi, _)| (*d, &csi[..]));
    print_steps("CSI", &STEPS, csi_steps);
    let rest_steps = step_medians.iter().map(|(d, _, rest)| (*d, &rest[..]));
    print_steps("REST", &REST_STEPS, rest_steps);
    // The cost of a round trip that does no work, for scale.
    let mut node = csi.node.clone();
    let csi_floor = p50_of(2000, async || {
        node.node_get_info(proto::NodeGetInfoRequest {}).await?;
        Ok(())
    })
    .await?;
    let rest_floor = p50_of(2000, async || {
        conn.call(Method::GET, "/v1/version", None).await?;
        Ok(())
    })
    .await?;
    println!(
        "round trip doing no work, p50: csi NodeGetInfo {:.3}ms, rest GET /v1/version {:.3}ms",
        csi_floor.as_secs_f64() * 1e3,
        rest_floor.as_secs_f64() * 1e3
    );
    let csi_lookup = p50_of(2000, async || {
        let r = node
            .node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
                volume_id: "nothing-here".into(),
                volume_path: "/nothing".into(),
                staging_target_path: String::new(),
            })
            .await;
        assert!(r.is_err());
        Ok(())
    })
    .await?;
    let rest_lookup = p50_of(2000, async || {
        let _ = conn
            .call(Method::GET, "/v1/volumes/nothing-here", None)
            .await;
        Ok(())
    })
    .await?;
    println!(
        "round trip looking up a missing volume, p50: csi {:.3}ms, rest {:.3}ms",
        csi_lookup.as_secs_f64() * 1e3,
        rest_lookup.as_secs_f64() * 1e3
    );
    println!(
        "\ntarget: the CSI cycle at most {:.0}% over the REST cycle: {} (worst {:+.0}%)",
        TARGET_OVERHEAD * 100.0,
        if worst <= 1.0 + TARGET_OVERHEAD {
            "met"
        } else {
            "NOT met"
        },
        (worst - 1.0) * 100.0
    );
    Ok(())
}
