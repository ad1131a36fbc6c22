//! End-to-end tests with the real engines: a private dockerd and Podman
//! with a private configuration drive Stowage through its Docker volume
//! plugin socket. Every scenario runs on both engines. Needs root, docker.io,
//! podman, runc and busybox-static (scripts/test.sh installs them).

mod scenarios;

use libtest_mimic::{Arguments, Failed, Trial};
use stowage_testkit::{Env, Kind};

type Scenario = fn(&Env, Kind);

fn main() {
    let args = Arguments::from_args();
    stowage_testkit::require_root();
    let env: &'static Env = Box::leak(Box::new(Env::start(env!("CARGO_BIN_EXE_stowage"))));
    let scenarios: &[(&str, Scenario)] = &[
        (
            "mongodb_persistent_data",
            scenarios::mongodb_persistent_data,
        ),
        ("pulp_shared_content", scenarios::pulp_shared_content),
        ("copy_up", scenarios::copy_up),
        ("implicit_create", scenarios::implicit_create),
        ("owner_from_image", scenarios::owner_from_image),
        (
            "owner_maps_a_host_directory",
            scenarios::owner_maps_a_host_directory,
        ),
        (
            "two_uids_share_a_directory_through_their_own_owner",
            scenarios::two_uids_share_a_directory_through_their_own_owner,
        ),
        (
            "volumes_are_shared_with_stowage",
            scenarios::volumes_are_shared_with_stowage,
        ),
        (
            "mount_ids_are_reference_counted",
            scenarios::mount_ids_are_reference_counted,
        ),
        (
            "missing_backing_directory",
            scenarios::missing_backing_directory,
        ),
        (
            "volume_in_use_is_refused",
            scenarios::volume_in_use_is_refused,
        ),
        (
            "stowage_stopped_mid_run",
            scenarios::stowage_stopped_mid_run,
        ),
        (
            "restart_engine_and_stowage",
            scenarios::restart_engine_and_stowage,
        ),
        (
            "block_volume_through_the_plugin",
            scenarios::block_volume_through_the_plugin,
        ),
    ];
    // Scenarios of one engine's own feature run on that engine only.
    let podman_only: &[(&str, Scenario)] = &[(
        "userns_auto_with_idmap",
        scenarios::podman_userns_auto_with_idmap,
    )];
    let mut trials = Vec::new();
    // Both engines at once, so it is one trial.
    trials.push(Trial::test("kill9_storm_under_both_engines", move || {
        scenarios::kill9_storm(env);
        Ok::<(), Failed>(())
    }));
    for &(name, scenario) in podman_only {
        trials.push(Trial::test(format!("{name}::podman"), move || {
            scenario(env, Kind::Podman);
            Ok::<(), Failed>(())
        }));
    }
    for &(name, scenario) in scenarios {
        for kind in [Kind::Docker, Kind::Podman] {
            trials.push(Trial::test(format!("{name}::{}", kind.name()), move || {
                scenario(env, kind);
                Ok::<(), Failed>(())
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    env.teardown();
    conclusion.exit();
}
