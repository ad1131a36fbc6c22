//! Starts a daemon on temporary directories and drives it through the CLI.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the end-to-end tests mount filesystems and must run as root"
    );
}

pub struct Daemon {
    /// The `stowage` binary under test.
    pub bin: PathBuf,
    /// Removed (with everything in it) when the daemon is dropped.
    _dir: tempfile::TempDir,
    /// The run root's own directory, when it lives apart from `_dir`.
    _run_dir: Option<tempfile::TempDir>,
    pub data: PathBuf,
    pub run: PathBuf,
    /// Extra arguments of `stowage serve`.
    extra: Vec<String>,
    /// What the daemon runs in: empty, or `nsenter` into a test host.
    prefix: Vec<String>,
    child: Option<Child>,
    /// The doors' sockets while this process holds them for the daemon,
    /// as a service manager does (see [`Daemon::hold_sockets`]).
    held: Vec<std::os::unix::net::UnixListener>,
}

impl Daemon {
    /// Starts `bin serve` on fresh temporary roots.
    pub fn start(bin: &str) -> Daemon {
        Daemon::start_with(bin, &[])
    }

    /// Starts a daemon with extra `serve` arguments.
    pub fn start_with(bin: &str, extra: &[&str]) -> Daemon {
        Daemon::start_in(bin, &std::env::temp_dir(), extra)
    }

    /// Starts a daemon whose roots live under `parent` (benches put them
    /// on the root filesystem, where fsync costs what it costs for a real
    /// data root).
    pub fn start_in(bin: &str, parent: &Path, extra: &[&str]) -> Daemon {
        require_root();
        Daemon::launch(bin, tempfile::tempdir_in(parent).unwrap(), None, extra)
    }

    /// Starts a daemon whose data root lives under `data_parent` and run
    /// root under `run_parent`, as `serve` puts them by default under
    /// /var/lib and /run (a tmpfs on most hosts).
    pub fn start_apart(bin: &str, data_parent: &Path, run_parent: &Path) -> Daemon {
        require_root();
        let run_dir = tempfile::tempdir_in(run_parent).unwrap();
        let dir = tempfile::tempdir_in(data_parent).unwrap();
        Daemon::launch(bin, dir, Some(run_dir), &[])
    }

    /// Starts a daemon on a test host of [`crate::netns`]: its network is
    /// the host's, its mounts are the machine's.
    pub fn start_on(bin: &str, host: &crate::netns::Host, extra: &[&str]) -> Daemon {
        require_root();
        let mut d = Daemon::launch_stopped(bin, tempfile::tempdir().unwrap(), None, extra);
        d.prefix = host.prefix();
        d.spawn();
        d
    }

    /// Starts `bin serve` with its data root in `dir` and its run root in
    /// `run_dir`, or beside the data root if none is given.
    fn launch(
        bin: &str,
        dir: tempfile::TempDir,
        run_dir: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Daemon {
        let mut d = Daemon::launch_stopped(bin, dir, run_dir, extra);
        d.spawn();
        d
    }

    fn launch_stopped(
        bin: &str,
        dir: tempfile::TempDir,
        run_dir: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Daemon {
        let base = dir.path().canonicalize().unwrap();
        let run = match &run_dir {
            Some(r) => r.path().canonicalize().unwrap(),
            None => base.join("run"),
        };
        Daemon {
            bin: bin.into(),
            data: base.join("data"),
            run,
            _dir: dir,
            _run_dir: run_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            prefix: Vec::new(),
            child: None,
            held: Vec::new(),
        }
    }

    pub fn base(&self) -> PathBuf {
        self.data.parent().unwrap().to_path_buf()
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("stowage.sock")
    }

    /// The CSI socket at its default place under the run root.
    pub fn csi_socket(&self) -> PathBuf {
        self.run.join("csi.sock")
    }

    /// `stowage serve` on this daemon's roots, logging to its log file.
    fn serve_command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base().join("daemon.log"))
            .unwrap();
        let mut cmd = self.command_with_held_sockets();
        cmd.arg("serve")
            .arg("--data-root")
            .arg(&self.data)
            .arg("--run-root")
            .arg(&self.run)
            .arg("--plugin-dir")
            .arg(self.base().join("plugins"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// From now on binds the doors' sockets here and passes them to every
    /// daemon started, by systemd's socket activation protocol, as a
    /// service manager holding them would: they stay open while the daemon
    /// is down, and calls made meanwhile wait instead of being refused.
    /// The daemon must be stopped.
    pub fn hold_sockets(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        assert!(self.child.is_none(), "the daemon must be stopped");
        let paths = [
            self.base().join("plugins/stowage.sock"),
            self.csi_socket(),
            self.socket(),
        ];
        self.held = paths
            .iter()
            .map(|p| {
                let _ = std::fs::remove_file(p);
                let l = std::os::unix::net::UnixListener::bind(p).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660)).unwrap();
                l
            })
            .collect();
    }

    /// Stops holding the sockets: later daemons bind their own. The
    /// daemon must be stopped.
    pub fn release_sockets(&mut self) {
        assert!(self.child.is_none(), "the daemon must be stopped");
        self.held.clear();
    }

    /// The daemon's command: the binary itself, or, while sockets are
    /// held, a shell that sets `LISTEN_PID` to its own pid (which the
    /// binary keeps when the shell execs it) with the sockets at 3, 4, 5.
    fn command_with_held_sockets(&self) -> Command {
        use command_fds::{CommandFdExt, FdMapping};
        if self.held.is_empty() {
            let Some((first, rest)) = self.prefix.split_first() else {
                return Command::new(&self.bin);
            };
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(&self.bin);
            return cmd;
        }
        assert!(
            self.prefix.is_empty(),
            "sockets are held on the machine only"
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "export LISTEN_PID=$$ LISTEN_FDS={}; exec \"$0\" \"$@\"",
                self.held.len()
            ))
            .arg(&self.bin);
        let mappings = self
            .held
            .iter()
            .zip(3..)
            .map(|(l, child_fd)| FdMapping {
                parent_fd: std::os::fd::OwnedFd::from(l.try_clone().unwrap()),
                child_fd,
            })
            .collect();
        cmd.fd_mappings(mappings).unwrap();
        cmd
    }

    /// Whether the daemon answers on its REST socket: while the sockets
    /// are held a connection succeeds before the daemon runs, so a request
    /// must be answered.
    fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        if self.held.is_empty() {
            return true;
        }
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = s.write_all(b"GET /v1/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut first = [0u8; 1];
        matches!(s.read(&mut first), Ok(1))
    }

    /// Starts `stowage serve`, which must refuse to start; returns what it
    /// logged on this attempt.
    pub fn start_refused(&mut self) -> String {
        assert!(self.child.is_none());
        let before = self.log().len();
        let mut child = self.serve_command().spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if UnixStream::connect(self.socket()).is_ok() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon started:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            !status.success(),
            "the daemon exited cleanly:\n{}",
            self.log()
        );
        self.log()[before..].to_string()
    }

    /// Starts `stowage serve` and waits until its socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let child = self.serve_command().spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.answers() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status} at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "daemon exited with {status}");
        }
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .env(
                "STOWAGE_HOST",
                format!("unix://{}", self.socket().display()),
            )
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "stowage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "stowage {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["volume", "inspect", name])).unwrap();
        v[0].clone()
    }

    pub fn list(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["volume", "ls", "--format", "json"])).unwrap()
    }

    /// The names `volume ls` lists, in its order.
    pub fn names(&self) -> Vec<String> {
        let list = self.list();
        list.iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The mount points under this daemon's run root, one entry per mount
    /// (stacked mounts appear more than once).
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.run)
    }

    /// One call to the Docker plugin socket; the answer's body.
    pub fn plugin_call(&self, endpoint: &str, body: &str) -> Value {
        let mut s = UnixStream::connect(self.base().join("plugins/stowage.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let request = format!(
            "POST /VolumeDriver.{endpoint} HTTP/1.1\r\nhost: plugin\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (_, body) = out.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Sends raw bytes to the REST socket and returns the raw answer.
    pub fn raw(&self, request: &[u8]) -> String {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer and close before it has read everything.
        let _ = s.write_all(request);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // The log goes with the temporary directory: show its end.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "--- the end of {}:\n{tail}",
                self.base().join("daemon.log").display()
            );
        }
        // What the daemon started to outlive it (network block exports and
        // attachments) names its roots: it goes with the test.
        kill_processes_naming(&self.base());
        kill_processes_naming(&self.run);
        // Leave no mount behind for the temporary directories' removal.
        let apart = self._run_dir.as_ref().map(|_| self.run.clone());
        for dir in std::iter::once(self.base()).chain(apart) {
            for m in mounts_under(&dir).iter().rev() {
                let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// Kills every process whose command line names a path under `dir`.
fn kill_processes_naming(dir: &Path) {
    let marker = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(marker.len()).any(|w| w == marker) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    stowage_sys::parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

pub fn fs_type_at(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    stowage_sys::parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.fs_type)
}

/// The loop devices whose backing file is `path` or lies under it (`path`
/// as given if it cannot be made canonical, e.g. once removed).
pub fn loop_devices_backing(path: &Path) -> Vec<PathBuf> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    stowage_sys::loop_devices_backing(&path).unwrap()
}

/// Whether `cond` comes to hold within `within`, polled every 10 ms.
pub fn holds_within(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` once
/// `within` has passed.
pub fn wait_until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    assert!(holds_within(within, cond), "timed out waiting: {what}");
}

/// The owner (uid, gid) of `p` itself, a symlink included.
pub fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// Runs a command that must succeed; panics with its stderr otherwise.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
