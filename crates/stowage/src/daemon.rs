//! `stowage serve`: configuration, the data-root lock, start-up
//! reconciliation, and the doors' listeners.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation};
use serde::Deserialize;
use stowage_core::secret::SealingKey;
use stowage_core::store::Store;
use stowage_core::{CallerPaths, Layout, NetworkAttach, NodeInfo, SpacePolicy, VolumeService};
use stowage_store::{EtcdConfig, EtcdStore, EtcdTls, SqliteStore};
use stowage_sys::LinuxSys;
use tokio::net::UnixListener;
use tracing::info;

use crate::activation::Inherited;
use crate::cli::ServeArgs;

/// The daemon's settings, from the config file and then the flags.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_root: PathBuf,
    pub run_root: PathBuf,
    pub plugin_dir: PathBuf,
    /// Name under which to register with Docker through a spec file.
    pub docker_spec: Option<String>,
    /// The CSI socket, written as a `unix://` URL; under the run root if
    /// unset.
    pub csi_endpoint: Option<CsiEndpoint>,
    /// The node id given to orchestrators; the hostname if unset.
    pub node_id: Option<String>,
    /// Directories CSI staging and target paths must lie beneath; any
    /// path outside Stowage's roots and the system's trees if empty.
    pub csi_allowed_paths: Vec<PathBuf>,
    /// How far sizes may be promised past the data root's room (1: not).
    pub overcommit_ratio: f64,
    /// Space never promised to volumes, as `parse_size` reads it.
    pub space_reserve: Option<String>,
    /// Seconds between checks of the sized volumes' space; 0: none.
    pub space_check_interval: u64,
    /// `etcd://HOST:PORT[,...]`: the cluster's shared store; the embedded
    /// SQLite store if unset.
    pub store: Option<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    /// Where other nodes reach this one.
    pub advertise: Option<String>,
    /// What placement's node selectors match.
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// Seconds the node's lease lasts without renewal.
    pub node_ttl: u64,
    /// The key file sealing the secrets kept in the cluster's store.
    pub sealing_key_file: Option<PathBuf>,
}

/// Where Stowage's keys live in etcd.
const ETCD_PREFIX: &str = "/stowage/";
/// The deadline of every etcd request: a write that misses it is
/// reported as indeterminate, never as failed.
const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// The plugin socket's file name; Docker names the driver after it.
pub const PLUGIN_SOCKET: &str = "stowage.sock";
/// Where Docker looks for plugin spec files.
const DOCKER_SPEC_DIR: &str = "/etc/docker/plugins";

impl Default for Config {
    fn default() -> Self {
        Config {
            data_root: "/var/lib/stowage".into(),
            run_root: "/run/stowage".into(),
            plugin_dir: "/run/docker/plugins".into(),
            docker_spec: None,
            csi_endpoint: None,
            node_id: None,
            csi_allowed_paths: Vec::new(),
            overcommit_ratio: 1.0,
            space_reserve: None,
            space_check_interval: 30,
            store: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            advertise: None,
            node_labels: Default::default(),
            node_ttl: 10,
            sealing_key_file: None,
        }
    }
}

impl Config {
    pub fn load(args: &ServeArgs) -> Result<Self> {
        let mut config = match &args.config {
            Some(path) => {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(p) = &args.data_root {
            config.data_root = p.clone();
        }
        if let Some(p) = &args.run_root {
            config.run_root = p.clone();
        }
        if let Some(p) = &args.plugin_dir {
            config.plugin_dir = p.clone();
        }
        if let Some(name) = &args.docker_spec {
            config.docker_spec = Some(name.clone());
        }
        if let Some(url) = &args.csi_endpoint {
            config.csi_endpoint = Some(url.clone());
        }
        if let Some(id) = &args.node_id {
            config.node_id = Some(id.clone());
        }
        if !args.csi_allowed_paths.is_empty() {
            config.csi_allowed_paths = args.csi_allowed_paths.clone();
        }
        if let Some(r) = args.overcommit_ratio {
            config.overcommit_ratio = r;
        }
        if let Some(r) = &args.space_reserve {
            config.space_reserve = Some(r.clone());
        }
        if let Some(s) = args.space_check_interval {
            config.space_check_interval = s;
        }
        for (flag, value) in [
            (&args.store, &mut config.store),
            (&args.advertise, &mut config.advertise),
        ] {
            if let Some(v) = flag {
                *value = Some(v.clone());
            }
        }
        for (flag, value) in [
            (&args.etcd_ca, &mut config.etcd_ca),
            (&args.etcd_cert, &mut config.etcd_cert),
            (&args.etcd_key, &mut config.etcd_key),
            (&args.sealing_key_file, &mut config.sealing_key_file),
        ] {
            if let Some(v) = flag {
                *value = Some(v.clone());
            }
        }
        config.node_labels.extend(args.node_labels.iter().cloned());
        stowage_core::options::check_map_limits(
            stowage_core::options::MapKind::Labels,
            &config.node_labels,
        )
        .map_err(|e| anyhow::anyhow!("node labels: {e}"))?;
        if let Some(t) = args.node_ttl {
            config.node_ttl = t;
        }
        if !(2..=3600).contains(&config.node_ttl) {
            bail!(
                "the node TTL must be between 2 and 3600 seconds, got {}",
                config.node_ttl
            );
        }
        config.etcd()?;
        if !(config.overcommit_ratio >= 1.0 && config.overcommit_ratio.is_finite()) {
            bail!(
                "the overcommit ratio must be a number of at least 1, got {}",
                config.overcommit_ratio
            );
        }
        config.space_policy()?;
        if let Some(p) = config.csi_allowed_paths.iter().find(|p| !p.is_absolute()) {
            bail!("CSI allowed paths must be absolute, got {}", p.display());
        }
        for (what, p) in [
            ("data root", &config.data_root),
            ("run root", &config.run_root),
            ("plugin dir", &config.plugin_dir),
        ] {
            if !p.is_absolute() {
                bail!("the {what} must be an absolute path, got {}", p.display());
            }
        }
        Ok(config)
    }
}

impl Config {
    /// How to reach etcd, when the cluster's store is etcd.
    pub fn etcd(&self) -> Result<Option<EtcdConfig>> {
        let Some(url) = &self.store else {
            if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
                bail!("etcd certificates are given, but no etcd store (--store etcd://...)");
            }
            return Ok(None);
        };
        let tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
            (Some(ca), cert, key) => {
                if cert.is_some() != key.is_some() {
                    bail!("an etcd client certificate needs its key, and a key its certificate");
                }
                Some(EtcdTls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            (None, None, None) => None,
            (None, _, _) => bail!("an etcd client certificate needs the CA (--etcd-ca) too"),
        };
        let endpoints =
            EtcdConfig::parse_endpoints(url, tls.is_some()).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(EtcdConfig {
            endpoints,
            tls,
            prefix: ETCD_PREFIX.into(),
            timeout: ETCD_TIMEOUT,
        }))
    }

    /// How far the data root may be promised.
    pub fn space_policy(&self) -> Result<SpacePolicy> {
        let reserve_bytes = match &self.space_reserve {
            Some(text) => Some(
                stowage_core::options::parse_size("space reserve", text)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            None => None,
        };
        Ok(SpacePolicy {
            overcommit_ratio: self.overcommit_ratio,
            reserve_bytes,
        })
    }
}

/// Where to serve CSI: the socket path of a `unix://` endpoint URL
/// (`unix:///abs/path`, or `unix:/abs/path` as some orchestrators write
/// it), checked when the flag or the config file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CsiEndpoint(pub PathBuf);

impl CsiEndpoint {
    pub fn parse(url: &str) -> Result<CsiEndpoint> {
        let path = url
            .strip_prefix("unix://")
            .or_else(|| url.strip_prefix("unix:"))
            .with_context(|| format!("the CSI endpoint must be a unix:// URL, got {url:?}"))?;
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            bail!("the CSI endpoint must name an absolute path, got {url:?}");
        }
        Ok(CsiEndpoint(path))
    }
}

impl TryFrom<String> for CsiEndpoint {
    type Error = anyhow::Error;
    fn try_from(url: String) -> Result<CsiEndpoint> {
        CsiEndpoint::parse(&url)
    }
}

/// The host's name, as the node id orchestrators know it by.
fn hostname() -> Result<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(name.trim().to_string())
}

/// Creates `dir` (and parents) with `mode` if missing; returns its
/// canonical path.
fn prepare_dir(dir: &Path, mode: u32) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// [`prepare_dir`] for a directory only root may enter: an existing one
/// with a wider mode is tightened, and the change logged.
fn prepare_private_dir(dir: &Path) -> Result<PathBuf> {
    let dir = prepare_dir(dir, 0o700)?;
    let mode = fs::metadata(&dir)?.permissions().mode() & 0o7777;
    if mode != 0o700 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display()))?;
        tracing::warn!(dir = %dir.display(), was = format!("{mode:o}"), "tightened to 0700");
    }
    Ok(dir)
}

/// Runs `f` with the process's umask set to `mask`. Only for start-up,
/// while no other thread creates files.
fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(mask));
    let out = f();
    rustix::process::umask(old);
    out
}

/// Raises the soft limit on open files to the hard one: every door may
/// hold its full count of connections, beside the descriptors that mounts,
/// loop devices and user namespaces keep open.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => info!(from = ?before, to = ?limit.maximum, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        }
    }
}

/// Refuses one directory given for two roots: each holds its own lock
/// and `stowage.sock`, so they would collide (and the second lock would
/// be reported as another daemon).
fn refuse_shared_dirs(dirs: &[(&str, &Path)]) -> Result<()> {
    for (i, (a, pa)) in dirs.iter().enumerate() {
        for (b, pb) in &dirs[i + 1..] {
            if pa == pb {
                bail!(
                    "the {a} and the {b} must be different directories, both are {}",
                    pa.display()
                );
            }
        }
    }
    Ok(())
}

/// Takes an exclusive lock on `dir/stowage.lock`, held for the life of the
/// process, so two daemons never share a root.
fn lock_root(dir: &Path, what: &str) -> Result<File> {
    let path = dir.join("stowage.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another stowage daemon (pid {}) is already using the {what} {}",
            holder.trim(),
            dir.display()
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = Config::load(&args)?;
    raise_open_files_limit();
    let layout = Layout::new(
        prepare_private_dir(&config.data_root)?,
        prepare_dir(&config.run_root, 0o755)?,
    );
    let plugin_dir = prepare_dir(&config.plugin_dir, 0o755)?;
    refuse_shared_dirs(&[
        ("data root", &layout.data_root),
        ("run root", &layout.run_root),
        ("plugin dir", &plugin_dir),
    ])?;
    let _locks = (
        lock_root(&layout.data_root, "data root")?,
        lock_root(&layout.run_root, "run root")?,
    );
    info!(data_root = %layout.data_root.display(), run_root = %layout.run_root.display(),
          plugin_dir = %config.plugin_dir.display(), "starting stowage");

    let local: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&layout.database())
            .with_context(|| format!("opening the store {}", layout.database().display()))?,
    );
    let store: Arc<dyn Store> = match config.etcd()? {
        None => local.clone(),
        Some(etcd) => {
            let endpoints = etcd.endpoints.join(",");
            // The etcd client runs on a runtime of its own, started here.
            let connected = tokio::task::spawn_blocking(move || EtcdStore::connect(&etcd))
                .await?
                .with_context(|| format!("connecting to etcd at {endpoints}"))?;
            info!(endpoints = %endpoints, "the cluster's store is etcd");
            Arc::new(connected)
        }
    };
    let sys = Arc::new(LinuxSys);
    let drivers = stowage_drivers::builtin(sys.clone(), &layout);
    let node_id = match &config.node_id {
        Some(id) => id.clone(),
        None => hostname()?,
    };
    let csi_socket = match &config.csi_endpoint {
        Some(endpoint) => endpoint.0.clone(),
        None => layout.csi_socket(),
    };
    let mut caller_paths = CallerPaths::new(&layout)
        .allowing(config.csi_allowed_paths.clone())
        .protecting(config.plugin_dir.clone());
    if let Some(dir) = csi_socket.parent() {
        caller_paths = caller_paths.protecting(dir.to_path_buf());
    }
    let mut service = VolumeService::new(store, drivers, sys, layout.clone())
        .with_local_store(local)
        .with_node_id(node_id)
        .with_caller_paths(caller_paths)
        .with_space_policy(config.space_policy()?);
    if let Some(network) = network_attach(&config, &layout)? {
        service = service.with_network_attach(network);
    }
    let service = Arc::new(service);
    let reconciler = service.clone();
    let report = tokio::task::spawn_blocking(move || reconciler.reconcile())
        .await?
        .context("reconciling the store with the mount table")?;
    if !report.failures.is_empty() {
        tracing::warn!(failures = ?report.failures, "some volumes could not be reconciled");
    }

    // Installed before any socket is bound: a SIGTERM sent as soon as the
    // daemon answers must stop it cleanly, not kill it.
    let shutdown = shutdown_signal()?;
    let _plugin_lock = lock_root(&plugin_dir, "plugin dir")?;
    let mut inherited = Inherited::from_env()?;
    let plugin_socket = plugin_dir.join(PLUGIN_SOCKET);
    let plugin = listen(&plugin_socket, &mut inherited)?;
    if let Some(name) = &config.docker_spec {
        write_docker_spec(Path::new(DOCKER_SPEC_DIR), name, &plugin_socket)?;
    }
    if let Some(dir) = csi_socket.parent() {
        prepare_dir(dir, 0o755)?;
    }
    let csi = listen(&csi_socket, &mut inherited)?;
    // Bound last: whoever reaches the REST socket finds every door open.
    let rest = listen(&layout.socket(), &mut inherited)?;
    inherited.warn_unused();
    info!(rest = %layout.socket().display(), docker_plugin = %plugin_socket.display(),
          csi = %csi_socket.display(), node = service.node_id(), "listening");

    // Joined before the doors open: a node that answers is listed.
    let ttl = Duration::from_secs(config.node_ttl);
    let info = NodeInfo {
        address: config.advertise.clone(),
        labels: config.node_labels.clone(),
    };
    let joining = service.clone();
    tokio::task::spawn_blocking(move || joining.join(info, ttl))
        .await?
        .context("joining the cluster")?;
    tokio::spawn(keep_membership(service.clone(), ttl));
    // Makes the volumes other nodes place here, for the life of the daemon.
    let agent_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (agent, stop_agent) = (service.clone(), agent_stop.clone());
    let agent = std::thread::Builder::new()
        .name("placement-agent".into())
        .spawn(move || agent.run_agent(&stop_agent))
        .context("starting the placement agent")?;

    // Serves the network attachments other nodes ask of volumes homed here.
    let exporter = match config.sealing_key_file.is_some() {
        true => {
            let (agent, stop) = (service.clone(), agent_stop.clone());
            let thread = std::thread::Builder::new()
                .name("export-agent".into())
                .spawn(move || agent.run_export_agent(&stop))
                .context("starting the export agent")?;
            Some(thread)
        }
        false => None,
    };

    if config.space_check_interval > 0 {
        tokio::spawn(watch_space(
            service.clone(),
            Duration::from_secs(config.space_check_interval),
        ));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::try_join!(
        stowage_api::serve(
            "rest",
            rest,
            stowage_api::rest::router(service.clone()),
            until_stopped(stopped.clone())
        ),
        stowage_api::serve(
            "docker-plugin",
            plugin,
            stowage_api::docker::router(service.clone()),
            until_stopped(stopped.clone())
        ),
        stowage_api::csi::serve(csi, service.clone(), until_stopped(stopped)),
    )?;
    // Joined (it stops within a second), so that the last reference to
    // the store goes here and the store closes cleanly.
    agent_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (name, thread) in [("placement", Some(agent)), ("export", exporter)] {
        let Some(thread) = thread else { continue };
        if tokio::task::spawn_blocking(move || thread.join())
            .await?
            .is_err()
        {
            tracing::warn!("the {name} agent panicked");
        }
    }
    // The others see this node down now, not when its lease would end.
    if let Err(e) = tokio::task::spawn_blocking(move || service.leave()).await? {
        tracing::warn!(error = %e, "leaving the cluster failed; the node's lease ends by itself");
    }
    info!("stopped; volumes stay mounted for their consumers");
    Ok(())
}

/// Renews the node's lease three times per TTL, so that one lost renewal
/// does not make the node look down.
async fn keep_membership(service: Arc<VolumeService>, ttl: Duration) {
    let mut ticks = tokio::time::interval(ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let service = service.clone();
        match tokio::task::spawn_blocking(move || service.heartbeat()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing this node's lease failed"),
            Err(e) => tracing::warn!(error = %e, "renewing this node's lease panicked"),
        }
    }
}

/// Checks the sized volumes' space every `interval`, for the log.
async fn watch_space(service: Arc<VolumeService>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let service = service.clone();
        match tokio::task::spawn_blocking(move || service.watch_space()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "checking the volumes' space failed"),
            Err(e) => tracing::warn!(error = %e, "checking the volumes' space panicked"),
        }
    }
}

/// The socket at `path`: the one a service manager passed, or else a
/// fresh one.
fn listen(path: &Path, inherited: &mut Inherited) -> Result<UnixListener> {
    match inherited.take(path)? {
        Some(listener) => Ok(listener),
        None => bind_socket(path),
    }
}

/// Binds a fresh unix socket at `path` (replacing a stale one: the root
/// locks prove no live daemon owns it), readable and writable by root only.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    stowage_sys::missing_ok(fs::remove_file(path))
        .with_context(|| format!("removing stale {}", path.display()))?;
    // Made 0600 from the start: with the caller's umask, it would be
    // open to anyone until the chmod below.
    let listener = with_umask(0o177, || UnixListener::bind(path))
        .with_context(|| format!("listening on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Writes `<dir>/<name>.spec` pointing Docker at the plugin socket, so that
/// `docker volume create -d <name>` finds a socket outside
/// `/run/docker/plugins`. Written to a temporary file and renamed, so
/// Docker never reads half a file.
fn write_docker_spec(dir: &Path, name: &str, socket: &Path) -> Result<()> {
    stowage_core::VolumeName::parse(name).map_err(|e| {
        anyhow::anyhow!(
            "invalid --docker-spec name: {}",
            e.to_string().replace("volume name", "name")
        )
    })?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = dir.join(format!("{name}.spec"));
    let tmp = dir.join(format!(".{name}.spec.tmp"));
    fs::write(&tmp, format!("unix://{}\n", socket.display()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &spec).with_context(|| format!("writing {}", spec.display()))?;
    info!(spec = %spec.display(), "wrote docker plugin spec");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, and resolves when
/// either signal arrives.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// What network attachments need, when the daemon is given a sealing key
/// file: the transport, the key, and the address exports listen on (the
/// advertised one, which the cluster reaches).
fn network_attach(config: &Config, layout: &Layout) -> Result<Option<NetworkAttach>> {
    let Some(file) = &config.sealing_key_file else {
        return Ok(None);
    };
    let sealing = SealingKey::from_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let advertised = config.advertise.as_deref().context(
        "--sealing-key-file needs --advertise: exports listen on the address other nodes reach",
    )?;
    let listen = advertised_ip(advertised)?;
    Ok(Some(NetworkAttach {
        transport: Arc::new(stowage_drivers::Nbd::new(layout)),
        sealing: Arc::new(sealing),
        listen,
    }))
}

/// The IP address of `--advertise`: HOST, HOST:PORT, [V6]:PORT or a bare
/// V6 address.
fn advertised_ip(advertised: &str) -> Result<std::net::IpAddr> {
    let host = match advertised.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None if advertised.matches(':').count() == 1 => {
            advertised.split(':').next().unwrap_or_default()
        }
        None => advertised,
    };
    host.parse()
        .with_context(|| format!("--advertise {advertised}: exports need an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stowage.toml");
        fs::write(&file, "data_root = \"/srv/a\"\nrun_root = \"/run/a\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            run_root: Some("/run/b".into()),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.data_root, PathBuf::from("/srv/a"));
        assert_eq!(c.run_root, PathBuf::from("/run/b"));
        assert_eq!(c.plugin_dir, PathBuf::from("/run/docker/plugins"));

        fs::write(&file, "data_rot = \"/x\"\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
        let rel = ServeArgs {
            data_root: Some("rel".into()),
            ..Default::default()
        };
        assert!(Config::load(&rel).is_err());
    }

    #[test]
    fn csi_endpoints_are_unix_urls_to_absolute_paths() {
        for (url, path) in [
            ("unix:///csi/csi.sock", "/csi/csi.sock"),
            ("unix:/csi/csi.sock", "/csi/csi.sock"),
        ] {
            assert_eq!(CsiEndpoint::parse(url).unwrap().0, PathBuf::from(path));
        }
        for bad in ["tcp://127.0.0.1:1234", "unix://relative.sock", "/csi.sock"] {
            assert!(CsiEndpoint::parse(bad).is_err(), "{bad}");
            let toml = format!("csi_endpoint = {bad:?}");
            assert!(toml::from_str::<Config>(&toml).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_spec_points_at_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = Path::new("/run/x/stowage.sock");
        write_docker_spec(dir.path(), "stowage-test", sock).unwrap();
        let text = fs::read_to_string(dir.path().join("stowage-test.spec")).unwrap();
        assert_eq!(text, "unix:///run/x/stowage.sock\n");
        let err = write_docker_spec(dir.path(), "../evil", sock).unwrap_err();
        assert!(
            err.to_string().contains("invalid --docker-spec name"),
            "{err}"
        );
        assert!(!dir.path().join("../evil.spec").exists());
    }

    #[test]
    fn a_second_lock_on_a_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_root(dir.path(), "data root").unwrap();
        let err = lock_root(dir.path(), "data root").unwrap_err().to_string();
        assert!(err.contains("another stowage daemon"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }

    #[test]
    fn exports_listen_on_the_advertised_ip() {
        for (given, ip) in [
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.1:7000", "10.0.0.1"),
            ("[fd00::1]:7000", "fd00::1"),
            ("fd00::1", "fd00::1"),
        ] {
            assert_eq!(advertised_ip(given).unwrap().to_string(), ip, "{given}");
        }
        assert!(advertised_ip("node-a.example").is_err());
    }
}
