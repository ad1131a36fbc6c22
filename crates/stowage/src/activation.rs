//! Listening sockets handed over by a service manager: systemd's socket
//! activation protocol (`LISTEN_PID`, `LISTEN_FDS`, descriptors from 3),
//! read by the `listenfd` crate. A manager that holds the sockets keeps
//! them open while the daemon restarts, so Docker, Podman and kubelet
//! calls made meanwhile wait in the backlog instead of being refused:
//! Podman does not retry a refused Unmount, and the volume would keep a
//! consumer whose container is gone.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::net::UnixListener;
use tracing::{info, warn};

/// The unix sockets passed to this process, by the path each is bound to.
#[derive(Default)]
pub struct Inherited(HashMap<PathBuf, StdListener>);

impl Inherited {
    /// The sockets the environment names for this process (none when it
    /// was not socket-activated).
    pub fn from_env() -> Result<Self> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = HashMap::new();
        for i in 0..fds.len() {
            let listener = match fds.take_unix_listener(i) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    warn!(index = i, error = %e, "a passed descriptor is not a listening unix socket; ignored");
                    continue;
                }
            };
            // Not passed on to the tools Stowage runs.
            rustix::io::fcntl_setfd(listener.as_fd(), rustix::io::FdFlags::CLOEXEC)
                .context("marking a passed socket close-on-exec")?;
            let addr = listener
                .local_addr()
                .context("reading a passed socket's address")?;
            match addr.as_pathname() {
                Some(path) => {
                    out.insert(path.to_path_buf(), listener);
                }
                None => warn!("a passed unix socket has no path; ignored"),
            }
        }
        Ok(Inherited(out))
    }

    /// The passed socket bound at `path`, ready for tokio.
    pub fn take(&mut self, path: &Path) -> Result<Option<UnixListener>> {
        let Some(listener) = self.0.remove(path) else {
            return Ok(None);
        };
        listener.set_nonblocking(true)?;
        info!(socket = %path.display(), "using the socket passed by the service manager");
        Ok(Some(UnixListener::from_std(listener)?))
    }

    /// Warns about passed sockets that no door took: their paths are not
    /// the ones configured.
    pub fn warn_unused(&self) {
        for path in self.0.keys() {
            warn!(socket = %path.display(), "a passed socket matches no configured socket path; ignored");
        }
    }
}
