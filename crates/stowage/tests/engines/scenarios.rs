//! The seed scenarios, each run on Docker and on Podman.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use stowage_testkit::engines::read;
use stowage_testkit::{holds_within, mounts_under, owner, wait_until, Env, Kind, IMAGE};

/// A name unique to the engine, so scenarios on both run side by side.
fn unique(kind: Kind, name: &str) -> String {
    format!("{name}-{}", kind.name())
}

/// The arguments of `run --network=none FLAGS… IMAGE COMMAND…`: every
/// container here is offline and runs the test image.
fn run<'a>(flags: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--network=none"];
    args.extend(flags);
    args.push(IMAGE);
    args.extend(command);
    args
}

/// `volume create` through the engine with Stowage as the driver.
fn create(env: &Env, kind: Kind, name: &str, opts: &[&str]) {
    let mut args = vec!["volume", "create", "--driver", &env.plugin];
    for o in opts {
        args.extend(["-o", o]);
    }
    args.push(name);
    assert_eq!(env.engine(kind, &args).trim(), name);
}

fn consumers(env: &Env, name: &str) -> Vec<String> {
    env.inspect(name)["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn mountpoint(env: &Env, name: &str) -> PathBuf {
    PathBuf::from(env.inspect(name)["mountpoint"].as_str().unwrap())
}

fn is_mounted(env: &Env, name: &str) -> bool {
    mounts_under(&env.base.join("run")).contains(&mountpoint(env, name))
}

/// Waits for the engine's Unmount after a container went away.
fn wait_released(env: &Env, name: &str) {
    assert!(
        released_within(env, name, Duration::from_secs(20)),
        "{name} still has consumers {:?}",
        consumers(env, name)
    );
    assert!(!is_mounted(env, name), "{name} is still mounted");
}

/// Starts a detached container that sleeps, with `volumes` (`-v` values).
fn sleeper(env: &Env, kind: Kind, name: &str, volumes: &[&str], script: &str) {
    let mut flags = vec!["-d", "--name", name];
    for v in volumes {
        flags.extend(["-v", v]);
    }
    let script = format!("{script} sleep 600");
    env.engine(kind, &run(&flags, &["sh", "-c", &script]));
}

fn remove_volume(env: &Env, kind: Kind, name: &str) {
    env.engine(kind, &["volume", "rm", name]);
    let out = env.stowage_raw(&["volume", "inspect", name]);
    assert!(!out.status.success(), "{name} survived its removal");
}

/// Seed "Persistent Storage": MongoDB's data outlives its container.
pub fn mongodb_persistent_data(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "mongodata");
    create(env, kind, &v, &["uid=184", "gid=998"]);
    let mount = format!("{v}:/var/lib/mongodb");
    let first = unique(kind, "mongo-1");
    let out = env.engine(
        kind,
        &run(
            &["--name", &first, "--user", "184:998", "-v", &mount],
            &[
                "sh",
                "-c",
                "echo 'record 1' > /var/lib/mongodb/collection.wt && id -u && id -g",
            ],
        ),
    );
    assert_eq!(out, "184\n998\n");
    env.engine(kind, &["rm", &first]);
    wait_released(env, &v);

    // The "upgrade": a new container finds the data.
    let upgrade = unique(kind, "mongo-2");
    let flags = ["-d", "--name", &upgrade, "--user", "184:998", "-v", &mount];
    env.engine(kind, &run(&flags, &["sleep", "600"]));
    let data = env.engine(
        kind,
        &["exec", &upgrade, "cat", "/var/lib/mongodb/collection.wt"],
    );
    assert_eq!(data, "record 1\n");

    // The host sees the same data through stowage's mountpoint.
    let info = env.inspect(&v);
    assert_eq!(info["mounted"], true);
    let file = mountpoint(env, &v).join("collection.wt");
    assert_eq!(read(&file), "record 1\n");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (184, 998));
    env.engine(kind, &["rm", "-f", &upgrade]);
    wait_released(env, &v);
    remove_volume(env, kind, &v);
}

/// Seed "Shared Storage": a worker fills two volumes, a read-only web
/// container serves them through symlinks.
pub fn pulp_shared_content(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let lib = unique(kind, "pulp-lib");
    let www = unique(kind, "pulp-www");
    create(env, kind, &lib, &[]);
    create(env, kind, &www, &[]);
    let (lib_rw, www_rw) = (format!("{lib}:/var/lib/pulp"), format!("{www}:/var/www"));
    let (lib_ro, www_ro) = (format!("{lib_rw}:ro"), format!("{www_rw}:ro"));

    let worker = "mkdir -p /var/lib/pulp/content /var/www/pub \
        && echo 'package bits' > /var/lib/pulp/content/pkg-1.0.rpm \
        && ln -s /var/lib/pulp/content/pkg-1.0.rpm /var/www/pub/pkg-1.0.rpm";
    env.engine(
        kind,
        &run(
            &["--rm", "-v", &lib_rw, "-v", &www_rw],
            &["sh", "-c", worker],
        ),
    );
    let web = env.engine(
        kind,
        &run(
            &["--rm", "-v", &lib_ro, "-v", &www_ro],
            &["cat", "/var/www/pub/pkg-1.0.rpm"],
        ),
    );
    assert_eq!(web, "package bits\n");
    for target in ["/var/www/pub/new", "/var/lib/pulp/content/new"] {
        let err = env.engine_fails(
            kind,
            &run(&["--rm", "-v", &lib_ro, "-v", &www_ro], &["touch", target]),
        );
        assert!(err.contains("Read-only file system"), "{err}");
    }

    // The data-container pattern: `content` only holds the volumes.
    let content = unique(kind, "pulp-content");
    env.engine(
        kind,
        &[
            "create",
            "--name",
            &content,
            "--network=none",
            "-v",
            &lib_rw,
            "-v",
            &www_rw,
            IMAGE,
            "true",
        ],
    );
    let worker = "echo 'version 2' > /var/lib/pulp/content/pkg-2.0.rpm \
        && ln -s /var/lib/pulp/content/pkg-2.0.rpm /var/www/pub/pkg-2.0.rpm";
    env.engine(
        kind,
        &run(&["--rm", "--volumes-from", &content], &["sh", "-c", worker]),
    );
    let from_ro = format!("{content}:ro");
    let web = env.engine(
        kind,
        &run(
            &["--rm", "--volumes-from", &from_ro],
            &[
                "cat",
                "/var/www/pub/pkg-2.0.rpm",
                "/var/www/pub/pkg-1.0.rpm",
            ],
        ),
    );
    assert_eq!(web, "version 2\npackage bits\n");
    let err = env.engine_fails(
        kind,
        &run(
            &["--rm", "--volumes-from", &from_ro],
            &["touch", "/var/www/pub/x"],
        ),
    );
    assert!(err.contains("Read-only file system"), "{err}");
    env.engine(kind, &["rm", &content]);
    for v in [&lib, &www] {
        wait_released(env, v);
        remove_volume(env, kind, v);
    }
}

/// An empty Stowage volume mounted over an image directory is seeded with
/// its content by the engine. The ownership each engine gives the copy is
/// what the README reports.
pub fn copy_up(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "seeded");
    create(env, kind, &v, &[]);
    let mount = format!("{v}:/seed");
    let out = env.engine(
        kind,
        &run(
            &["--rm", "-v", &mount],
            &[
                "stat",
                "-c",
                "%n %u:%g %a",
                "/seed",
                "/seed/config.txt",
                "/seed/sub/nested.txt",
            ],
        ),
    );
    let host = env.stowage(&["volume", "mount", &v, "--consumer", "host-check"]);
    let root = PathBuf::from(host.trim());
    assert_eq!(read(&root.join("config.txt")), "seeded by the image\n");
    assert_eq!(read(&root.join("sub/nested.txt")), "nested\n");
    let owner = |p: PathBuf| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    // Files keep the image's owner on both engines.
    assert_eq!(owner(root.join("config.txt")).0, 184, "{out}");
    assert_eq!(owner(root.join("sub")).0, 184, "{out}");
    // The volume root: Docker copies the image directory's owner and mode;
    // Podman leaves the root as Stowage made it.
    let expected_root = match kind {
        Kind::Docker => (184, 998, 0o750),
        Kind::Podman => (0, 0, 0o755),
    };
    assert_eq!(owner(root.clone()), expected_root, "{out}");
    env.stowage(&["volume", "unmount", &v, "--consumer", "host-check"]);
    remove_volume(env, kind, &v);
}

/// Volumes made through an engine are Stowage volumes, and the other way
/// round.
pub fn volumes_are_shared_with_stowage(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let from_engine = unique(kind, "from-engine");
    create(env, kind, &from_engine, &["driver=tmpfs", "size=8m"]);
    let info = env.inspect(&from_engine);
    assert_eq!(
        (info["driver"].as_str(), info["options"]["size"].as_str()),
        (Some("tmpfs"), Some("8m"))
    );

    let from_stowage = unique(kind, "from-stowage");
    env.stowage(&["volume", "create", &from_stowage, "-o", "mode=0777"]);
    if kind == Kind::Podman {
        // Podman asks plugins for their volumes only on reload.
        env.engine(kind, &["volume", "reload"]);
    }
    let listed = env.engine(kind, &["volume", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for v in [&from_engine, &from_stowage] {
        let line = format!("{v} {}", env.plugin);
        assert!(
            listed.lines().any(|l| l == line),
            "{line:?} not in:\n{listed}"
        );
    }
    let status = env.engine(
        kind,
        &[
            "volume",
            "inspect",
            "--format",
            "{{json .Status}}",
            &from_engine,
        ],
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["driver"], "tmpfs");
    assert_eq!(status["options"]["size"], "8m");
    assert!(status["created_at"].as_str().unwrap().ends_with('Z'));

    let mount = format!("{from_stowage}:/d");
    let out = env.engine(
        kind,
        &run(
            &["--rm", "-v", &mount],
            &["sh", "-c", "echo hi > /d/f && cat /d/f"],
        ),
    );
    assert_eq!(out, "hi\n");
    for v in [&from_engine, &from_stowage] {
        remove_volume(env, kind, v);
    }
}

/// Docker sends a fresh mount ID per container, Podman one ID and its own
/// count: either way the volume stays mounted while any container uses it.
pub fn mount_ids_are_reference_counted(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "refcount");
    create(env, kind, &v, &[]);
    let mount = format!("{v}:/d");
    let (c1, c2) = (unique(kind, "ref-1"), unique(kind, "ref-2"));
    sleeper(env, kind, &c1, &[&mount], "");
    sleeper(env, kind, &c2, &[&mount], "");
    let ids = consumers(env, &v);
    match kind {
        Kind::Docker => assert_eq!(ids.len(), 2, "{ids:?}"),
        Kind::Podman => assert_eq!(ids.len(), 1, "{ids:?}"),
    }
    assert!(is_mounted(env, &v));
    env.engine(kind, &["rm", "-f", &c1]);
    assert!(is_mounted(env, &v), "unmounted while {c2} still uses it");
    let out = env.engine(
        kind,
        &[
            "exec",
            &c2,
            "sh",
            "-c",
            "echo still here > /d/f && cat /d/f",
        ],
    );
    assert_eq!(out, "still here\n");
    assert_eq!(read(&mountpoint(env, &v).join("f")), "still here\n");
    env.engine(kind, &["rm", "-f", &c2]);
    wait_released(env, &v);
    remove_volume(env, kind, &v);
}

/// A volume whose directory vanished behind Stowage's back fails the
/// container start clearly, and no other directory is handed out.
pub fn missing_backing_directory(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "vanishing");
    create(env, kind, &v, &[]);
    let id = mountpoint(env, &v).file_name().unwrap().to_owned();
    std::fs::remove_dir_all(env.base.join("data/volumes").join(&id)).unwrap();
    let err = env.engine_fails(
        kind,
        &run(
            &["--rm", "-v", &format!("{v}:/d")],
            &["sh", "-c", "echo leaked > /d/f"],
        ),
    );
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(
        err.contains("bind-mount"),
        "the error names Stowage's failing step: {err}"
    );
    assert!(consumers(env, &v).is_empty());
    assert!(!is_mounted(env, &v));
    assert!(!env.base.join("data/volumes").join(&id).exists());
    remove_volume(env, kind, &v);
}

/// Neither engine nor Stowage removes a volume a container uses.
pub fn volume_in_use_is_refused(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "busy");
    create(env, kind, &v, &[]);
    let c = unique(kind, "busy-user");
    sleeper(env, kind, &c, &[&format!("{v}:/d")], "echo mine > /d/f;");
    let err = env.engine_fails(kind, &["volume", "rm", &v]);
    assert!(
        err.contains("in use") || err.contains("being used"),
        "{err}"
    );
    let out = env.stowage_raw(&["volume", "rm", &v]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by"));
    assert_eq!(env.engine(kind, &["exec", &c, "cat", "/d/f"]), "mine\n");
    env.engine(kind, &["rm", "-f", &c]);
    wait_released(env, &v);
    remove_volume(env, kind, &v);
}

/// With Stowage stopped, a new container start fails clearly while running
/// containers keep their data; a restart brings everything back.
pub fn stowage_stopped_mid_run(env: &Env, kind: Kind) {
    let _alone = env.exclusive.write().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "midrun");
    create(env, kind, &v, &[]);
    let mount = format!("{v}:/d");
    let c = unique(kind, "midrun-user");
    sleeper(env, kind, &c, &[&mount], "echo before > /d/f;");
    assert_eq!(env.engine(kind, &["exec", &c, "cat", "/d/f"]), "before\n");

    // A volume nobody has mounted needs Stowage to start a container.
    let idle = unique(kind, "midrun-idle");
    create(env, kind, &idle, &[]);

    env.stowage.lock().unwrap_or_else(|e| e.into_inner()).stop();
    let idle_mount = format!("{idle}:/d");
    let err = env.engine_fails(kind, &run(&["--rm", "-v", &idle_mount], &["true"]));
    assert!(err.contains("connection refused"), "{err}");
    // The running container keeps its data.
    assert_eq!(env.engine(kind, &["exec", &c, "cat", "/d/f"]), "before\n");

    env.stowage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .spawn();
    let out = env.engine(kind, &run(&["--rm", "-v", &mount], &["cat", "/d/f"]));
    assert_eq!(out, "before\n");
    let out = env.engine(kind, &run(&["--rm", "-v", &idle_mount], &["ls", "/d"]));
    assert_eq!(out, "");
    env.engine(kind, &["rm", "-f", &c]);
    wait_released(env, &v);
    remove_volume(env, kind, &v);
    remove_volume(env, kind, &idle);
}

/// Restarting Stowage (kill -9) and the engine under a running container:
/// the container keeps its data and later runs still work.
pub fn restart_engine_and_stowage(env: &Env, kind: Kind) {
    let _alone = env.exclusive.write().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "keeper");
    create(env, kind, &v, &[]);
    let mount = format!("{v}:/d");
    let c = unique(kind, "keeper-user");
    sleeper(env, kind, &c, &[&mount], "echo alive > /d/a;");
    assert_eq!(env.engine(kind, &["exec", &c, "cat", "/d/a"]), "alive\n");

    {
        let mut stowage = env.stowage.lock().unwrap_or_else(|e| e.into_inner());
        stowage.kill9();
        stowage.spawn();
    }
    if kind == Kind::Docker {
        let mut dockerd = env.dockerd.lock().unwrap_or_else(|e| e.into_inner());
        dockerd.stop();
        dockerd.start();
    }
    env.engine(kind, &["exec", &c, "sh", "-c", "echo again >> /d/a"]);
    // Docker forgets a volume whose Get fails after its restart.
    let known = env.engine(kind, &["volume", "inspect", "--format", "{{.Name}}", &v]);
    assert_eq!(known.trim(), v, "{v} forgotten after restart");
    if kind == Kind::Docker {
        let listed = env.engine(kind, &["volume", "ls", "-q"]);
        assert!(
            listed.lines().any(|l| l == v),
            "{v} not listed after restart:\n{listed}"
        );
    }
    let out = env.engine(kind, &run(&["--rm", "-v", &mount], &["cat", "/d/a"]));
    assert_eq!(out, "alive\nagain\n");
    assert!(is_mounted(env, &v));
    env.engine(kind, &["rm", "-f", &c]);
    wait_released(env, &v);
    remove_volume(env, kind, &v);
}

/// `--mount type=volume,volume-driver=...` creates the volume on first use
/// (Docker). Podman 4.3 refuses the option; nothing is created then.
pub fn implicit_create(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "implicit");
    let spec = format!(
        "type=volume,src={v},dst=/data,volume-driver={},volume-opt=uid=184",
        env.plugin
    );
    let script = "echo made > /data/f && stat -c %u /data";
    match kind {
        Kind::Docker => {
            let out = env.engine(
                kind,
                &run(&["--rm", "--mount", &spec], &["sh", "-c", script]),
            );
            assert_eq!(out, "184\n");
            let info = env.inspect(&v);
            assert_eq!(info["options"]["uid"], "184");
            let host = env.stowage(&["volume", "mount", &v, "--consumer", "host-check"]);
            assert_eq!(read(&PathBuf::from(host.trim()).join("f")), "made\n");
            env.stowage(&["volume", "unmount", &v, "--consumer", "host-check"]);
            remove_volume(env, kind, &v);
        }
        Kind::Podman => {
            let err = env.engine_fails(kind, &run(&["--rm", "--mount", &spec], &["true"]));
            assert!(err.contains("volume-driver"), "{err}");
            assert!(!env.stowage_raw(&["volume", "inspect", &v]).status.success());
        }
    }
}

/// A host directory owned by an unrelated user, made for `owner`.
fn host_dir(env: &Env, kind: Kind, name: &str) -> PathBuf {
    let dir = env.base.join("srv").join(unique(kind, name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("collection.wt"), "record from the host\n").unwrap();
    for p in [dir.clone(), dir.join("collection.wt")] {
        std::os::unix::fs::chown(&p, Some(15149), Some(15149)).unwrap();
    }
    dir
}

/// The seeds' MongoDB case: the data belongs to host user 15149, the
/// container runs as 184:998, nothing is chowned.
pub fn owner_maps_a_host_directory(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let dir = host_dir(env, kind, "mongodb");
    let v = unique(kind, "mongo-owned");
    create(
        env,
        kind,
        &v,
        &[
            "driver=bind",
            &format!("path={}", dir.display()),
            "owner=184:998",
        ],
    );
    let mount = format!("{v}:/var/lib/mongodb");
    let script = "cat /var/lib/mongodb/collection.wt \
        && echo 'record from mongod' > /var/lib/mongodb/journal \
        && stat -c '%u:%g' /var/lib/mongodb /var/lib/mongodb/collection.wt /var/lib/mongodb/journal";
    let out = env.engine(
        kind,
        &run(
            &["--rm", "--user", "184:998", "-v", &mount],
            &["sh", "-c", script],
        ),
    );
    assert_eq!(out, "record from the host\n184:998\n184:998\n184:998\n");
    // On disk, everything still belongs to 15149.
    for f in ["", "collection.wt", "journal"] {
        assert_eq!(owner(&dir.join(f)), (15149, 15149), "{f}");
    }
    let info = env.inspect(&v);
    assert_eq!(
        info["presentation"]["ownership"]["method"], "idmap",
        "{info}"
    );
    remove_volume(env, kind, &v);
    assert!(
        dir.join("journal").exists(),
        "removing a bind volume keeps the data"
    );
}

/// Two containers running as different uids share one host directory,
/// each through a volume with its own `owner`.
pub fn two_uids_share_a_directory_through_their_own_owner(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let dir = host_dir(env, kind, "shared");
    let path = format!("path={}", dir.display());
    let (a, b) = (
        unique(kind, "shared-as-1000"),
        unique(kind, "shared-as-2000"),
    );
    create(env, kind, &a, &["driver=bind", &path, "owner=1000:1000"]);
    create(env, kind, &b, &["driver=bind", &path, "owner=2000:2000"]);
    let writer = unique(kind, "writer-1000");
    let mount_a = format!("{a}:/data");
    let flags = [
        "-d",
        "--name",
        &writer,
        "--user",
        "1000:1000",
        "-v",
        &mount_a,
    ];
    let script = "echo from-1000 > /data/a && sleep 600";
    env.engine(kind, &run(&flags, &["sh", "-c", script]));
    let mount_b = format!("{b}:/data");
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = env.engine_raw(
            kind,
            &run(
                &["--rm", "--user", "2000:2000", "-v", &mount_b],
                &[
                    "sh",
                    "-c",
                    "cat /data/a && echo from-2000 > /data/b && stat -c '%u' /data/a /data/b",
                ],
            ),
        );
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-1000\n2000\n2000\n"
    );
    assert_eq!(
        env.engine(kind, &["exec", &writer, "cat", "/data/b"]),
        "from-2000\n"
    );
    for f in ["a", "b"] {
        assert_eq!(owner(&dir.join(f)), (15149, 15149), "{f}");
    }
    env.engine(kind, &["rm", "-f", &writer]);
    for v in [&a, &b] {
        wait_released(env, v);
        remove_volume(env, kind, v);
    }
}

/// Podman's own user namespaces: `--userns=auto` with `:idmap` on crun
/// gives the container's uid its access to a Stowage volume. (The kernel
/// does not idmap an idmapped mount again, so this is for volumes without
/// `owner`; the README says so.)
pub fn podman_userns_auto_with_idmap(env: &Env, kind: Kind) {
    assert_eq!(kind, Kind::Podman, "a Podman feature");
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    env.prepare_userns_auto();
    let v = unique(kind, "userns");
    create(env, kind, &v, &["uid=184", "gid=998"]);
    let mount = format!("{v}:/data:idmap");
    let out = env.engine(
        kind,
        &run(&["--rm", "--runtime", "crun", "--userns=auto", "--user", "184:998", "-v", &mount], &["sh", "-c", "cat /proc/self/uid_map && echo in-userns > /data/f && stat -c '%u:%g' /data /data/f"]),
    );
    let mut lines = out.lines();
    let uid_map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(uid_map[0], "0");
    assert_ne!(
        uid_map[1], "0",
        "the container runs in its own user namespace: {out}"
    );
    assert_eq!(lines.collect::<Vec<_>>(), ["184:998", "184:998"], "{out}");
    let file = mountpoint_on_disk(env, &v).join("f");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "in-userns\n");
    assert_eq!(
        owner(&file),
        (184, 998),
        "writes land as the volume's owner"
    );
    remove_volume(env, kind, &v);
}

/// A local volume's directory under the data root.
fn mountpoint_on_disk(env: &Env, name: &str) -> PathBuf {
    let id = mountpoint(env, name).file_name().unwrap().to_owned();
    env.base.join("data/volumes").join(id)
}

/// `--owner-from-image` asks the engine's API who owns a path in an image
/// and sets `owner` from it.
pub fn owner_from_image(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let (service, host) = match kind {
        Kind::Docker => (None, env.docker_host()),
        Kind::Podman => {
            let (child, host) = env.podman_service();
            (Some(child), host)
        }
    };
    let v = unique(kind, "from-image");
    let spec = format!("{IMAGE}:/seed");
    let out = env.stowage_raw(&[
        "volume",
        "create",
        &v,
        "--owner-from-image",
        &spec,
        "--engine",
        kind.name(),
        "--engine-host",
        &host,
    ]);
    let missing = env.stowage_raw(&[
        "volume",
        "create",
        "never",
        "--owner-from-image",
        &format!("{IMAGE}:/no/such/dir"),
        "--engine",
        kind.name(),
        "--engine-host",
        &host,
    ]);
    if let Some(mut child) = service {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/seed in stowage-e2e-bb:latest belongs to 184:998"));
    assert_eq!(env.inspect(&v)["options"]["owner"], "184:998");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
    assert!(!env
        .stowage_raw(&["volume", "inspect", "never"])
        .status
        .success());
    // No helper container is left behind.
    let left = env.engine(kind, &["ps", "-a", "--filter", "status=created", "-q"]);
    assert_eq!(left.trim(), "", "helper containers left: {left}");
    env.stowage(&["volume", "rm", &v]);
}

/// A sized XFS block volume made through the engine's `volume create -o`,
/// used by a container, filled to ENOSPC inside it, snapshotted through
/// Stowage and restored through the engine.
pub fn block_volume_through_the_plugin(env: &Env, kind: Kind) {
    let _shared = env.exclusive.read().unwrap_or_else(|e| e.into_inner());
    let v = unique(kind, "blk");
    create(env, kind, &v, &["driver=block", "size=320M", "fs=xfs"]);
    let inspected = env.inspect(&v);
    assert_eq!(inspected["driver"], "block");
    assert_eq!(inspected["size_bytes"], 320u64 << 20);
    let out = env.engine_raw(
        kind,
        &run(&["--rm", "-v", &format!("{v}:/data")], &["sh", "-c", "echo kept > /data/kept; dd if=/dev/zero of=/data/fill bs=1M count=400 2>&1; df -k /data | tail -1"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No space left on device"), "{text}");
    wait_released(env, &v);
    let snap = unique(kind, "blk-snap");
    env.stowage(&["snapshot", "create", &v, &snap]);
    // Restored through the engine, which only knows volumes it created
    // (Podman 4.3 caches the plugin's list).
    let restored = unique(kind, "blk-restored");
    create(env, kind, &restored, &[&format!("from-snapshot={snap}")]);
    assert_eq!(env.inspect(&restored)["driver"], "block");
    assert_eq!(
        env.engine(
            kind,
            &run(
                &["--rm", "-v", &format!("{restored}:/r")],
                &["cat", "/r/kept"]
            )
        ),
        "kept\n"
    );
    wait_released(env, &restored);
    env.stowage(&["snapshot", "rm", &snap]);
    remove_volume(env, kind, &restored);
    remove_volume(env, kind, &v);
}

/// How many times the storm kills Stowage.
const STORM_KILLS: usize = 12;

/// Docker and Podman start and stop containers on volumes of every driver
/// while Stowage is killed with SIGKILL at random instants and started
/// again. Each volume holds a marker with its own name: every container
/// reads it, so a container given another volume's directory (or an empty
/// one) is caught, and the long-running ones are read again after every
/// restart. Afterwards both engines still know every volume, every
/// consumer is released once its container is gone, nothing of these
/// volumes is left mounted, and removing them leaves no loop device.
///
/// The sockets are held across restarts, as systemd's socket units hold
/// them: without that, an Unmount that Podman sends while Stowage is down
/// is refused and never retried, and the volume keeps a consumer whose
/// container is gone (seen in this storm before the sockets were held).
pub fn kill9_storm(env: &Env) {
    let _alone = env.exclusive.write().unwrap_or_else(|e| e.into_inner());
    restart_stowage(env, |d| d.hold_sockets());
    // The scenarios after this one expect sockets of Stowage's own, even
    // if this one fails.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| storm(env)));
    restart_stowage(env, |d| d.release_sockets());
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn storm(env: &Env) {
    let mut volumes: Vec<(Kind, String)> = Vec::new();
    let mut keepers: Vec<(Kind, String, String)> = Vec::new();
    for kind in [Kind::Docker, Kind::Podman] {
        let bind_dir = host_dir(env, kind, "storm-bind");
        let drivers: [(&str, String); 4] = [
            ("local", String::new()),
            // Held by its keeper throughout: a tmpfs forgets its data when
            // its last consumer goes.
            ("tmpfs", "size=16m".into()),
            ("bind", format!("path={}", bind_dir.display())),
            ("block", "size=64M".into()),
        ];
        for (driver, extra) in drivers {
            let v = unique(kind, &format!("storm-{driver}"));
            let driver_opt = format!("driver={driver}");
            let mut opts = vec![driver_opt.as_str()];
            if !extra.is_empty() {
                opts.push(&extra);
            }
            create(env, kind, &v, &opts);
            // A keeper holds the local and tmpfs volumes, so that some
            // mounts are shared; the others are mounted afresh by every
            // container.
            if driver == "local" || driver == "tmpfs" {
                let keeper = unique(kind, &format!("storm-keep-{driver}"));
                sleeper(
                    env,
                    kind,
                    &keeper,
                    &[&format!("{v}:/d")],
                    &format!("echo {v} > /d/marker;"),
                );
                keepers.push((kind, keeper, v.clone()));
            } else {
                let mount = format!("{v}:/d");
                let mark = format!("echo {v} > /d/marker");
                env.engine(kind, &run(&["--rm", "-v", &mount], &["sh", "-c", &mark]));
                wait_released(env, &v);
            }
            volumes.push((kind, v));
        }
    }
    // Every keeper has written its marker before the first run reads it.
    for (kind, keeper, v) in &keepers {
        let marked = || {
            env.engine_raw(*kind, &["exec", keeper, "cat", "/d/marker"])
                .stdout
                == format!("{v}\n").as_bytes()
        };
        wait_until(
            &format!("{keeper} writes its marker"),
            Duration::from_secs(20),
            marked,
        );
    }

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|s| {
        let workers: Vec<_> = [Kind::Docker, Kind::Podman]
            .into_iter()
            .map(|kind| {
                let mine: Vec<&String> = volumes
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, v)| v)
                    .collect();
                let stop = &stop;
                s.spawn(move || storm_worker(env, kind, &mine, stop))
            })
            .collect();
        for _ in 0..STORM_KILLS {
            std::thread::sleep(Duration::from_millis(200 + fastrand::u64(..1300)));
            let mut stowage = env.stowage.lock().unwrap_or_else(|e| e.into_inner());
            stowage.kill9();
            // Down for a moment: calls meanwhile wait in the held sockets.
            std::thread::sleep(Duration::from_millis(fastrand::u64(..400)));
            stowage.spawn();
            drop(stowage);
            for (kind, keeper, v) in &keepers {
                let seen = env.engine(*kind, &["exec", keeper, "cat", "/d/marker"]);
                assert_eq!(seen.trim(), v, "{keeper} lost its volume across a restart");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut totals = (0, 0);
        for w in workers {
            let (ok, failed) = w.join().unwrap();
            totals = (totals.0 + ok, totals.1 + failed);
        }
        totals
    });
    println!(
        "storm: {STORM_KILLS} kills, {ok} containers ran, {failed} failed to start (a call cut by a kill)"
    );
    assert!(
        ok >= 20,
        "too few containers ran for the storm to mean anything: {ok}"
    );

    for kind in [Kind::Docker, Kind::Podman] {
        // Runs refused mid-way may leave created containers behind.
        let left = env.engine(kind, &["ps", "-aq", "--filter", "label=stowage-storm"]);
        for id in left.split_whitespace() {
            env.engine(kind, &["rm", "-f", id]);
        }
    }
    for (kind, keeper, _) in &keepers {
        env.engine(*kind, &["rm", "-f", keeper]);
    }
    let run_root = env.base.join("run");
    // Podman counts its users itself and mounts with one constant id; it
    // does not resend a Mount or Unmount whose connection a kill cut, and
    // counts as if the call had failed. Docker resends. So after a cut call
    // Podman and Stowage may disagree on whether a Podman volume is in use;
    // each such volume is counted and put right as an operator would.
    let (mut both_hold, mut stowage_holds, mut podman_holds) = (0, 0, 0);
    for (kind, v) in &volumes {
        let known = env.engine(*kind, &["volume", "inspect", "--format", "{{.Name}}", v]);
        assert_eq!(known.trim(), v, "{} forgot {v}", kind.name());
        if *kind == Kind::Podman {
            let stowage_held = !released_within(env, v, Duration::from_secs(5));
            let count = env.engine(
                *kind,
                &["volume", "inspect", "--format", "{{.MountCount}}", v],
            );
            let podman_held = count.trim() != "0";
            if stowage_held {
                assert_eq!(consumers(env, v).len(), 1, "{v}: {:?}", consumers(env, v));
            }
            match (stowage_held, podman_held) {
                (false, false) => {}
                // Podman's own unmount sends the Unmount it did not resend.
                (true, true) => {
                    env.engine(*kind, &["volume", "unmount", v]);
                    both_hold += 1;
                }
                (false, true) => {
                    env.engine(*kind, &["volume", "unmount", v]);
                    podman_holds += 1;
                }
                // Podman's next use mounts with the same id and lets go.
                (true, false) => {
                    let mount = format!("{v}:/d");
                    env.engine(*kind, &run(&["--rm", "-v", &mount], &["true"]));
                    stowage_holds += 1;
                }
            }
        }
        wait_released(env, v);
        let record = env.inspect(v);
        assert_eq!(record["status"], "ready", "{record}");
        assert!(!mounts_under(&run_root).contains(&mountpoint(env, v)));
    }
    let images: Vec<PathBuf> = volumes
        .iter()
        .filter(|(_, v)| v.starts_with("storm-block"))
        .map(|(_, v)| {
            let id = mountpoint(env, v).file_name().unwrap().to_owned();
            env.base.join("data/images").join(id)
        })
        .collect();
    println!(
        "storm: Podman volumes left in use after a cut call: {both_hold} by Podman and Stowage, \
         {podman_holds} by Podman alone, {stowage_holds} by Stowage alone"
    );
    assert!(
        both_hold + podman_holds + stowage_holds <= STORM_KILLS,
        "more disagreements than kills"
    );
    for (kind, v) in &volumes {
        remove_volume(env, *kind, v);
    }
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    for image in &images {
        let name = image.file_name().unwrap().to_string_lossy();
        assert!(
            !loops.contains(name.as_ref()),
            "a loop device outlived {}:\n{loops}",
            image.display()
        );
    }
}

/// Whether `name` has no consumer within `limit`.
fn released_within(env: &Env, name: &str, limit: Duration) -> bool {
    holds_within(limit, || consumers(env, name).is_empty())
}

/// Stops Stowage, applies `change` to it, and starts it again.
fn restart_stowage(env: &Env, change: impl FnOnce(&mut stowage_testkit::Daemon)) {
    let mut stowage = env.stowage.lock().unwrap_or_else(|e| e.into_inner());
    stowage.stop();
    change(&mut stowage);
    stowage.spawn();
}

/// Runs short containers on `volumes` in turn until `stop`, each reading
/// the volume's marker. Returns how many ran and how many failed to start
/// (a call a kill cut); a run that started must have read the right marker.
fn storm_worker(
    env: &Env,
    kind: Kind,
    volumes: &[&String],
    stop: &std::sync::atomic::AtomicBool,
) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for v in volumes.iter().cycle() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let mount = format!("{v}:/d");
        let out = env.engine_raw(
            kind,
            &run(
                &["--rm", "--label", "stowage-storm", "-v", &mount],
                &["cat", "/d/marker"],
            ),
        );
        if out.status.success() {
            let seen = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                seen.trim(),
                v.as_str(),
                "a {} container saw the wrong directory",
                kind.name()
            );
            ok += 1;
        } else {
            failed += 1;
            let err = String::from_utf8_lossy(&out.stderr);
            println!("storm: a {} run failed: {}", kind.name(), err.trim());
        }
    }
    (ok, failed)
}
