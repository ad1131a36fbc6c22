//! Where Stowage keeps things on the host.

use std::path::{Path, PathBuf};

/// The directories of one daemon. Both roots are canonical absolute paths
/// (no symlink), so paths built under them can be opened with
/// `RESOLVE_NO_SYMLINKS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub data_root: PathBuf,
    pub run_root: PathBuf,
}

impl Layout {
    pub fn new(data_root: impl Into<PathBuf>, run_root: impl Into<PathBuf>) -> Self {
        Layout {
            data_root: data_root.into(),
            run_root: run_root.into(),
        }
    }

    /// Parent of the local volumes' directories.
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_root.join("volumes")
    }

    /// The data directory of a `local` volume.
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.volumes_dir().join(id)
    }

    /// Parent of the block volumes' image files.
    pub fn images_dir(&self) -> PathBuf {
        self.data_root.join("images")
    }

    /// The image file of a block volume.
    pub fn image(&self, id: &str) -> PathBuf {
        self.images_dir().join(format!("{id}.img"))
    }

    /// Parent of the snapshots' data.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_root.join("snapshots")
    }

    /// The data of one snapshot: an image file or a directory, by driver.
    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.snapshots_dir().join(id)
    }

    /// Parent of the published mount points.
    pub fn mounts_dir(&self) -> PathBuf {
        self.run_root.join("mounts")
    }

    /// The stable path where a volume is presented while it has consumers.
    pub fn mountpoint(&self, id: &str) -> PathBuf {
        self.mounts_dir().join(id)
    }

    /// Where the network block transport keeps its keys, sockets and pid
    /// files (under the run root: a tmpfs, so keys never reach a disk).
    pub fn network_dir(&self) -> PathBuf {
        self.run_root.join("nbd")
    }

    /// The file through which a volume homed elsewhere is reached here,
    /// while it is attached over the network.
    pub fn attached_image(&self, id: &str) -> PathBuf {
        self.network_dir()
            .join("attachments")
            .join(id)
            .join("fuse")
            .join("disk")
    }

    pub fn database(&self) -> PathBuf {
        self.data_root.join("stowage.db")
    }

    pub fn socket(&self) -> PathBuf {
        self.run_root.join("stowage.sock")
    }

    /// The CSI socket, unless the daemon is told another endpoint.
    pub fn csi_socket(&self) -> PathBuf {
        self.run_root.join("csi.sock")
    }

    /// Whether `path` is the data root, the run root, or inside either.
    pub fn contains(&self, path: &Path) -> bool {
        path.starts_with(&self.data_root) || path.starts_with(&self.run_root)
    }
}
