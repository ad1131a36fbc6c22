//! The shared environment: one Stowage daemon, one private dockerd, a
//! private Podman configuration, and a busybox image in both engines.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::daemon::{mounts_under, Daemon};

/// The image every scenario runs: busybox, a `mongodb` user (184:998) and
/// a `/seed` directory owned by it for the copy-up scenario.
pub const IMAGE: &str = "stowage-e2e-bb:latest";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Docker,
    Podman,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Podman => "podman",
        }
    }

    /// The client binary. Docker's is the docker.io one that matches the
    /// dockerd under test (a newer client may sit first on PATH).
    pub fn program(self) -> &'static str {
        match self {
            Kind::Docker => "/usr/bin/docker",
            Kind::Podman => "podman",
        }
    }
}

pub struct Env {
    pub base: PathBuf,
    /// The Docker driver name, registered through a spec file.
    pub plugin: String,
    pub stowage: Mutex<Daemon>,
    stowage_host: String,
    stowage_bin: PathBuf,
    pub dockerd: Mutex<Dockerd>,
    podman: Podman,
    /// Scenarios that stop a daemon take this for writing.
    pub exclusive: RwLock<()>,
}

impl Env {
    /// Starts Stowage (`bin`), a private dockerd and Podman's private
    /// configuration, and imports the test image into both engines.
    pub fn start(bin: &str) -> Env {
        let plugin = format!("stowage-e2e-{}", std::process::id());
        let stowage = Daemon::start_with(bin, &["--docker-spec", &plugin]);
        let base = stowage.base();
        let stowage_host = format!("unix://{}", stowage.socket().display());
        let stowage_bin = stowage.bin.clone();
        let plugin_socket = base.join("plugins/stowage.sock");

        let mut dockerd = Dockerd {
            dir: base.join("docker"),
            child: None,
        };
        dockerd.start();

        let podman = Podman::configure(&base.join("podman"), &plugin, &plugin_socket);

        let env = Env {
            base,
            plugin,
            stowage: Mutex::new(stowage),
            stowage_host,
            stowage_bin,
            dockerd: Mutex::new(dockerd),
            podman,
            exclusive: RwLock::new(()),
        };
        let tar = build_image(&env.base);
        for kind in [Kind::Docker, Kind::Podman] {
            env.engine(kind, &["import", tar.to_str().unwrap(), IMAGE]);
        }
        env
    }

    /// Runs an engine command; panics with its output if it fails.
    pub fn engine(&self, kind: Kind, args: &[&str]) -> String {
        let out = self.engine_raw(kind, args);
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}{}",
            kind.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn engine_raw(&self, kind: Kind, args: &[&str]) -> Output {
        let mut cmd = match kind {
            Kind::Docker => {
                let mut cmd = Command::new(kind.program());
                cmd.env("DOCKER_HOST", self.docker_host());
                cmd
            }
            Kind::Podman => self.podman.command(),
        };
        cmd.args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs an engine command that must fail; returns its stderr.
    pub fn engine_fails(&self, kind: Kind, args: &[&str]) -> String {
        let out = self.engine_raw(kind, args);
        assert!(
            !out.status.success(),
            "{} {args:?} succeeded: {}",
            kind.name(),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs the stowage CLI; panics if it fails.
    pub fn stowage(&self, args: &[&str]) -> String {
        let out = self.stowage_raw(args);
        assert!(
            out.status.success(),
            "stowage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn stowage_raw(&self, args: &[&str]) -> Output {
        Command::new(&self.stowage_bin)
            .env("STOWAGE_HOST", &self.stowage_host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `stowage volume inspect NAME`, as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.stowage(&["volume", "inspect", name])).unwrap();
        v[0].clone()
    }

    /// Starts Podman's API service (the Docker-compatible one) on a socket
    /// of its own; the caller stops the returned child.
    pub fn podman_service(&self) -> (Child, String) {
        let socket = self
            .base
            .join(format!("podman-{}.sock", std::process::id()));
        let host = format!("unix://{}", socket.display());
        let child = (self.podman.command())
            .args(["system", "service", "--time=0", &host])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "podman system service did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, host)
    }

    /// The Docker API socket of the private dockerd.
    pub fn docker_host(&self) -> String {
        self.dockerd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .host()
    }

    /// What `podman run --userns=auto` with crun needs on this machine:
    /// subordinate ids for the `containers` user and a cgroup v1 hugetlb
    /// hierarchy (see DESIGN.md). Idempotent.
    pub fn prepare_userns_auto(&self) {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with("containers:")) {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .unwrap();
                std::io::Write::write_all(&mut f, b"containers:2147483647:2147483648\n").unwrap();
            }
        }
        let hugetlb = Path::new("/sys/fs/cgroup/hugetlb");
        let mounted = mounts_under(Path::new("/sys/fs/cgroup"))
            .iter()
            .any(|m| m == hugetlb);
        if !mounted {
            std::fs::create_dir_all(hugetlb).unwrap();
            let status = Command::new("mount")
                .args(["-t", "cgroup", "-o", "hugetlb", "cgroup"])
                .arg(hugetlb)
                .status()
                .unwrap();
            assert!(status.success(), "mounting the hugetlb cgroup");
        }
    }

    pub fn teardown(&self) {
        for kind in [Kind::Docker, Kind::Podman] {
            let ids = self.engine_raw(kind, &["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                self.engine_raw(kind, &["rm", "-f", id]);
            }
        }
        self.dockerd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
        self.stowage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill9();
        let _ = std::fs::remove_file(format!("/etc/docker/plugins/{}.spec", self.plugin));
        for m in mounts_under(&self.base).iter().rev() {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
        // The environment is never dropped (the trials borrow it for
        // 'static), so its temporary directory goes here.
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("cannot remove {}: {e}", self.base.display());
        }
    }
}

/// Podman with a private configuration: storage of its own under a
/// directory, runc, and Stowage's plugin socket under a driver name.
pub struct Podman {
    conf: PathBuf,
    storage: PathBuf,
}

impl Podman {
    /// Writes the configuration under `dir`: `plugin` is the driver name
    /// of the plugin socket at `socket`.
    pub fn configure(dir: &Path, plugin: &str, socket: &Path) -> Podman {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=10000:10000", "nproc=1000:1000"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{p}/events.log"
tmp_dir = "{p}/tmp"
volume_path = "{p}/volumes"

[engine.volume_plugins]
{plugin} = "{socket}"
"#,
                p = dir.display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let storage = dir.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{p}/root\"\nrunroot = \"{p}/runroot\"\n",
                p = dir.display()
            ),
        )
        .unwrap();
        Podman { conf, storage }
    }

    /// `podman` with this configuration.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(Kind::Podman.program());
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage);
        cmd
    }

    /// Runs `podman ARGS`; panics with its output if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Imports the test image ([`IMAGE`]), built under `dir`.
    pub fn import_image(&self, dir: &Path) {
        let tar = build_image(dir);
        self.ok(&["import", tar.to_str().unwrap(), IMAGE]);
    }

    /// Removes every container and image of this configuration.
    pub fn clean(&self) {
        let _ = self.command().args(["rm", "-af"]).output();
        let _ = self.command().args(["rmi", "-af"]).output();
    }
}

/// Builds the image's root filesystem as a tar archive.
fn build_image(base: &Path) -> PathBuf {
    let root = base.join("image");
    for d in ["bin", "etc", "tmp", "seed"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let applets = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(applets.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nmongodb:x:184:998:mongodb:/var/lib/mongodb:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nmongodb:x:998:\n").unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let seed = root.join("seed");
    std::fs::write(seed.join("config.txt"), "seeded by the image\n").unwrap();
    std::fs::create_dir(seed.join("sub")).unwrap();
    std::fs::write(seed.join("sub/nested.txt"), "nested\n").unwrap();
    for p in [
        seed.join("config.txt"),
        seed.join("sub/nested.txt"),
        seed.join("sub"),
        seed.clone(),
    ] {
        std::os::unix::fs::chown(&p, Some(184), Some(998)).unwrap();
    }
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o750)).unwrap();
    let tar = base.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tar
}

/// A private dockerd, with the flags DESIGN.md records for this machine,
/// plus `--live-restore` so containers outlive a dockerd restart.
pub struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let d = &self.dir;
        std::fs::create_dir_all(d).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .arg("-H")
            .arg(self.host())
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=overlay2",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--live-restore",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd (is docker.io installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(Kind::Docker.program())
                .env("DOCKER_HOST", self.host())
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

/// Reads a file on the host, panicking with the path on failure.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
