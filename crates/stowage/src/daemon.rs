//! `stowage serve`: configuration, the data-root lock, start-up
//! reconciliation, and the doors' listeners.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation};
use serde::Deserialize;
use stowage_core::{Layout, VolumeService};
use stowage_store::SqliteStore;
use stowage_sys::LinuxSys;
use tokio::net::UnixListener;
use tracing::info;

use crate::cli::ServeArgs;

/// The daemon's settings, from the config file and then the flags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_root: PathBuf,
    pub run_root: PathBuf,
    pub plugin_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_root: "/var/lib/stowage".into(),
            run_root: "/run/stowage".into(),
            plugin_dir: "/run/docker/plugins".into(),
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

/// Takes an exclusive lock on `dir/stowage.lock`, held for the life of the
/// process, so two daemons never share a root.
fn lock_root(dir: &Path, what: &str) -> Result<File> {
    let path = dir.join("stowage.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
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
    let layout = Layout::new(
        prepare_dir(&config.data_root, 0o700)?,
        prepare_dir(&config.run_root, 0o755)?,
    );
    let _locks = (
        lock_root(&layout.data_root, "data root")?,
        lock_root(&layout.run_root, "run root")?,
    );
    info!(data_root = %layout.data_root.display(), run_root = %layout.run_root.display(),
          plugin_dir = %config.plugin_dir.display(), "starting stowage");

    let store = SqliteStore::open(&layout.database())
        .with_context(|| format!("opening the store {}", layout.database().display()))?;
    let sys = Arc::new(LinuxSys);
    let drivers = stowage_drivers::builtin(sys.clone(), &layout);
    let service = Arc::new(VolumeService::new(
        Arc::new(store),
        drivers,
        sys,
        layout.clone(),
    ));
    let reconciler = service.clone();
    let report = tokio::task::spawn_blocking(move || reconciler.reconcile())
        .await?
        .context("reconciling the store with the mount table")?;
    if !report.failures.is_empty() {
        tracing::warn!(failures = ?report.failures, "some volumes could not be reconciled");
    }

    let socket = layout.socket();
    match fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o660))?;
    info!(socket = %socket.display(), "REST API listening");

    stowage_api::rest::serve(listener, service, shutdown_signal()).await?;
    info!("stopped; volumes stay mounted for their consumers");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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
    fn a_second_lock_on_a_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_root(dir.path(), "data root").unwrap();
        let err = lock_root(dir.path(), "data root").unwrap_err().to_string();
        assert!(err.contains("another stowage daemon"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }
}
