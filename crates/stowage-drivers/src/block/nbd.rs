//! The network block transport this machine runs: NBD with TLS-PSK.
//!
//! The home node serves the image with `nbdkit` (the `file` plugin, the
//! `exportname` filter refusing every name but the export's), on the
//! cluster address only, with `--tls=require` and the attachment's key.
//! The consuming node runs a second `nbdkit` (the `nbd` plugin) as the TLS
//! client on a Unix socket of its own, because `nbdfuse` reads no key file
//! from a URI; `nbdfuse -C 4` makes four connections through it and shows
//! the export as a file, for a loop device. Every process daemonizes (or
//! is started in a session of its own) so that it outlives a restart of
//! Stowage as mounts do, and is found again by its pid file and command
//! line, which names the attachment's own directory.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stowage_core::{Error, Layout, Result};
use stowage_sys::parse_mountinfo;
use tracing::{info, warn};

use stowage_core::transport::{
    export_name, valid_id, AttachSpec, Endpoint, ExportSpec, Running, Transport,
};

/// Connections `nbdfuse` makes to the export (multi-conn).
const CONNECTIONS: u32 = 4;
/// How long a process may take to come up, or to go once asked.
const START_WITHIN: Duration = Duration::from_secs(10);
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// Tries at a free port, which another process may take between our probe
/// and nbdkit's bind.
const PORT_TRIES: usize = 8;

pub struct Nbd {
    layout: Layout,
    dir: PathBuf,
}

impl Nbd {
    /// A transport keeping its keys, sockets and pid files in the
    /// layout's network directory.
    pub fn new(layout: &Layout) -> Nbd {
        Nbd {
            layout: layout.clone(),
            dir: layout.network_dir(),
        }
    }

    fn export_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(self.dir.join("exports").join(checked(id)?))
    }

    /// An attachment's directory: the one holding its file's mountpoint.
    fn attach_dir(&self, id: &str) -> Result<PathBuf> {
        let file = self.layout.attached_image(checked(id)?);
        Ok(file
            .parent()
            .and_then(Path::parent)
            .expect("an attached image lies two levels down")
            .to_path_buf())
    }

    /// Starts the exporting nbdkit on a free port of `spec.listen`.
    fn serve(&self, spec: &ExportSpec<'_>, dir: &Path, name: &str) -> Result<SocketAddr> {
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let address = free_port(spec.listen).map_err(Error::io("find a free port on", dir))?;
            let mut cmd = Command::new("nbdkit");
            cmd.arg("-i")
                .arg(spec.listen.to_string())
                .arg("-p")
                .arg(address.port().to_string())
                .arg("-P")
                .arg(dir.join("pid"))
                .arg("--tls=require")
                .arg(format!("--tls-psk={}", dir.join("psk").display()))
                .arg("--filter=exportname");
            if spec.read_only {
                cmd.arg("-r");
            }
            cmd.arg("file")
                .arg(format!("file={}", spec.image.display()))
                .arg("cache=none")
                .arg(format!("exportname={name}"))
                .args(["exportname-strict=true", "exportname-list=explicit"]);
            // nbdkit daemonizes once it listens: its exit says whether it
            // does.
            match run(&mut cmd) {
                Ok(()) => return Ok(address),
                Err(e) if e.to_string().contains("in use") => last = Some(e),
                Err(e) => return Err(Error::io("export", spec.image)(e)),
            }
        }
        Err(Error::io("export", spec.image)(
            last.unwrap_or_else(|| io::Error::other("no free port")),
        ))
    }

    /// Starts the TLS client for an attachment, on a Unix socket in `dir`.
    fn relay(&self, spec: &AttachSpec<'_>, dir: &Path) -> Result<()> {
        let address = spec.endpoint.address;
        let mut cmd = Command::new("nbdkit");
        cmd.arg("-U")
            .arg(dir.join("relay.sock"))
            .arg("-P")
            .arg(dir.join("relay.pid"));
        if spec.read_only {
            cmd.arg("-r");
        }
        cmd.arg("nbd")
            .arg(format!("hostname={}", address.ip()))
            .arg(format!("port={}", address.port()))
            .arg(format!("export={}", spec.endpoint.name))
            .arg("tls=require")
            .arg(format!("tls-psk={}", dir.join("psk").display()))
            .arg(format!("tls-username={}", spec.psk.identity));
        run(&mut cmd).map_err(Error::io("start the NBD client in", dir))
    }

    /// Starts `nbdfuse` through the relay and waits until it serves.
    fn show_as_file(&self, spec: &AttachSpec<'_>, dir: &Path) -> Result<PathBuf> {
        let file = self.layout.attached_image(spec.id);
        let mountpoint = file.parent().expect("a file lies in a directory");
        make_private_dir(mountpoint).map_err(Error::io("create", mountpoint))?;
        let log = dir.join("nbdfuse.log");
        let pidfile = dir.join("nbdfuse.pid");
        let mut cmd = Command::new("nbdfuse");
        cmd.arg("-C")
            .arg(CONNECTIONS.to_string())
            .arg("-P")
            .arg(&pidfile);
        if spec.read_only {
            cmd.arg("-r");
        }
        cmd.arg(&file).arg(format!(
            "nbd+unix:///?socket={}",
            dir.join("relay.sock").display()
        ));
        let logged = fs::File::create(&log).map_err(Error::io("create", &log))?;
        // nbdfuse stays in the foreground: a session of its own keeps it
        // out of the daemon's signals, and a thread reaps it if it ends
        // while the daemon lives (after a restart, init does).
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logged)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("run nbdfuse for", dir)(e))?;
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if pidfile.exists() && file.exists() {
                std::thread::spawn(move || child.wait());
                return Ok(file);
            }
            let ended = child
                .try_wait()
                .map_err(Error::io("wait for nbdfuse in", dir))?;
            if ended.is_some() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let said = fs::read_to_string(&log).unwrap_or_default();
                let how = ended.map_or("did not start in time".to_string(), |s| s.to_string());
                return Err(Error::io("attach over the network", dir)(io::Error::other(
                    format!(
                        "no connection to the export at {} with this attachment's key (a wrong \
                         or revoked key, or an export that is gone): nbdfuse {how}: {}",
                        spec.endpoint.address,
                        said.trim()
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Transport for Nbd {
    fn name(&self) -> &'static str {
        "nbd"
    }

    fn export(&self, spec: &ExportSpec<'_>) -> Result<Endpoint> {
        let dir = self.export_dir(spec.id)?;
        if alive(&dir.join("pid"), &dir).is_some() {
            if let Some(endpoint) = read_endpoint(&dir) {
                return Ok(endpoint);
            }
        }
        self.unexport(spec.id)?;
        make_private_dir(&dir).map_err(Error::io("create", &dir))?;
        write_secret(&dir.join("psk"), &spec.psk.file_line())
            .map_err(Error::io("write the key in", &dir))?;
        let name = export_name()?;
        let address = self.serve(spec, &dir, &name)?;
        let endpoint = Endpoint { address, name };
        let record = format!("{} {}\n", endpoint.address, endpoint.name);
        write_secret(&dir.join("endpoint"), &record).map_err(Error::io("write", &dir))?;
        info!(id = spec.id, %address, "exporting a block volume");
        Ok(endpoint)
    }

    fn unexport(&self, id: &str) -> Result<()> {
        let dir = self.export_dir(id)?;
        stop(&dir.join("pid"), &dir)?;
        remove_dir(&dir)
    }

    fn attach(&self, spec: &AttachSpec<'_>) -> Result<PathBuf> {
        let dir = self.attach_dir(spec.id)?;
        let file = self.layout.attached_image(spec.id);
        if alive(&dir.join("nbdfuse.pid"), &dir).is_some() && file.exists() {
            return Ok(file);
        }
        self.detach(spec.id)?;
        make_private_dir(&dir).map_err(Error::io("create", &dir))?;
        write_secret(&dir.join("psk"), &spec.psk.file_line())
            .map_err(Error::io("write the key in", &dir))?;
        let attached = self
            .relay(spec, &dir)
            .and_then(|()| self.show_as_file(spec, &dir));
        if attached.is_err() {
            if let Err(e) = self.detach(spec.id) {
                warn!(id = spec.id, error = %e, "cannot clear a failed attachment");
            }
        }
        attached
    }

    fn sever(&self, id: &str) -> Result<()> {
        // The TLS client carries every connection: without it nbdfuse
        // fails each request.
        let dir = self.attach_dir(id)?;
        stop(&dir.join("relay.pid"), &dir)?;
        let _ = fs::remove_file(dir.join("psk"));
        Ok(())
    }

    fn detach(&self, id: &str) -> Result<()> {
        let dir = self.attach_dir(id)?;
        let file = self.layout.attached_image(id);
        let mountpoint = file.parent().expect("a file lies in a directory");
        if let Some(pid) = alive(&dir.join("nbdfuse.pid"), &dir) {
            // Unmounting ends nbdfuse cleanly; a signal is the fallback.
            let _ = run(Command::new("fusermount3").arg("-u").arg(mountpoint));
            if !gone_within(pid, STOP_WITHIN) {
                stop(&dir.join("nbdfuse.pid"), &dir)?;
            }
        }
        // A FUSE mount whose server died stays behind as a dead mount.
        if is_mountpoint(mountpoint) {
            let _ = run(Command::new("fusermount3").arg("-uz").arg(mountpoint));
        }
        stop(&dir.join("relay.pid"), &dir)?;
        remove_dir(&dir)
    }

    fn running(&self) -> Result<Running> {
        let list = |kind: &str, pidfile: &str| -> Vec<String> {
            let Ok(entries) = fs::read_dir(self.dir.join(kind)) else {
                return Vec::new();
            };
            let mut ids: Vec<String> = entries
                .flatten()
                .filter(|e| alive(&e.path().join(pidfile), &e.path()).is_some())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            ids.sort();
            ids
        };
        Ok(Running {
            exports: list("exports", "pid"),
            attachments: list("attachments", "nbdfuse.pid"),
        })
    }
}

fn checked(id: &str) -> Result<&str> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(Error::InvalidRequest(format!(
            "{id:?} is no attachment id: letters, digits, - and _, at most 64"
        )))
    }
}

/// Runs a command that daemonizes or ends at once; its standard error is
/// the reason when it fails.
fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{:?} failed ({}): {}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A port of `ip` that nothing listens on now.
fn free_port(ip: IpAddr) -> io::Result<SocketAddr> {
    TcpListener::bind((ip, 0))?.local_addr()
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes a file only its owner reads.
fn write_secret(path: &Path, text: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn read_endpoint(dir: &Path) -> Option<Endpoint> {
    let text = fs::read_to_string(dir.join("endpoint")).ok()?;
    let (address, name) = text.trim().split_once(' ')?;
    Some(Endpoint {
        address: address.parse().ok()?,
        name: name.to_string(),
    })
}

/// The process named by `pidfile`, if it runs and its command line names
/// `dir` (a pid reused by another process is not ours).
fn alive(pidfile: &Path, dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let marker = dir.as_os_str().as_encoded_bytes();
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg.windows(marker.len()).any(|w| w == marker))
        .then_some(pid)
}

fn gone_within(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A process that ended and waits for its parent to reap it.
fn zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Ends the process of `pidfile` if it is ours: asked first, then killed.
fn stop(pidfile: &Path, dir: &Path) -> Result<()> {
    let Some(pid) = alive(pidfile, dir) else {
        return Ok(());
    };
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        // SAFETY: kill takes a pid and a signal number and touches no memory.
        unsafe { libc::kill(pid, signal) };
        if gone_within(pid, STOP_WITHIN) {
            return Ok(());
        }
    }
    Err(Error::io("stop process", pidfile)(io::Error::other(
        format!("process {pid} did not end"),
    )))
}

fn is_mountpoint(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|t| parse_mountinfo(&t).iter().any(|m| m.mount_point == path))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", dir)(e)),
        _ => Ok(()),
    }
}
