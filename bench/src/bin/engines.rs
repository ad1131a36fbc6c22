//! `bench/engines`: what Stowage adds to a container's volume cycle.
//!
//! One cycle is `volume create`, `run --rm -v vol:/data IMAGE true` and
//! `volume rm`, timed as the engine's CLI sees it. Cycles with Stowage's
//! plugin and with the engine's own `local` driver alternate, so drift on
//! this shared machine hits both alike. Medians are printed with their
//! ratio; the target is at most 10% added.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stowage_bench::median;
use stowage_testkit::{require_root, Env, Kind, IMAGE};

const TARGET_OVERHEAD: f64 = 0.10;

/// Per-step and whole-cycle times of one driver.
#[derive(Default)]
struct Samples {
    create: Vec<Duration>,
    run: Vec<Duration>,
    remove: Vec<Duration>,
    cycle: Vec<Duration>,
}

fn median_ms(v: &[Duration]) -> f64 {
    median(v).as_secs_f64() * 1e3
}

fn timed(env: &Env, kind: Kind, args: &[&str]) -> Duration {
    let t = Instant::now();
    env.engine(kind, args);
    t.elapsed()
}

fn cycle(env: &Env, kind: Kind, driver: &str, name: &str, into: &mut Samples) {
    let mount = format!("{name}:/data");
    let start = Instant::now();
    let create = timed(env, kind, &["volume", "create", "--driver", driver, name]);
    let run = timed(
        env,
        kind,
        &["run", "--rm", "--network=none", "-v", &mount, IMAGE, "true"],
    );
    let remove = timed(env, kind, &["volume", "rm", name]);
    into.cycle.push(start.elapsed());
    into.create.push(create);
    into.run.push(run);
    into.remove.push(remove);
}

fn main() -> Result<()> {
    let mut cycles = 21;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [flag, n] if flag == "--cycles" => cycles = n.parse().context("--cycles N")?,
        _ => bail!("usage: engines [--cycles N]"),
    }
    require_root();
    let stowage = std::env::current_exe()?.with_file_name("stowage");
    let env = Env::start(stowage.to_str().context("binary path")?);

    println!("bench/engines: volume create + run --rm -v vol:/data {IMAGE} true + volume rm");
    println!("{cycles} cycles per driver, alternating; medians in milliseconds\n");
    println!(
        "{:>7} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>9}",
        "engine", "driver", "create", "run", "rm", "cycle", "ratio"
    );
    println!("{}", "-".repeat(74));
    let mut verdicts = Vec::new();
    for kind in [Kind::Docker, Kind::Podman] {
        let (mut ours, mut theirs) = (Samples::default(), Samples::default());
        // One unmeasured cycle each warms caches and the engine.
        let mut scratch = Samples::default();
        cycle(&env, kind, &env.plugin, "bench-warm-s", &mut scratch);
        cycle(&env, kind, "local", "bench-warm-l", &mut scratch);
        for i in 0..cycles {
            cycle(&env, kind, &env.plugin, &format!("bench-s-{i}"), &mut ours);
            cycle(&env, kind, "local", &format!("bench-l-{i}"), &mut theirs);
        }
        let ratio = median_ms(&ours.cycle) / median_ms(&theirs.cycle);
        for (driver, s, r) in [
            ("stowage", &ours, format!("{ratio:.3}x")),
            ("local", &theirs, String::new()),
        ] {
            println!(
                "{:>7} | {:>8} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>9}",
                kind.name(),
                driver,
                median_ms(&s.create),
                median_ms(&s.run),
                median_ms(&s.remove),
                median_ms(&s.cycle),
                r
            );
        }
        verdicts.push((kind, ratio));
    }
    println!();
    for (kind, ratio) in verdicts {
        let added = (ratio - 1.0) * 100.0;
        println!(
            "{}: Stowage adds {added:+.1}% to the cycle; target at most +{:.0}%: {}",
            kind.name(),
            TARGET_OVERHEAD * 100.0,
            if ratio <= 1.0 + TARGET_OVERHEAD {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    env.teardown();
    Ok(())
}
