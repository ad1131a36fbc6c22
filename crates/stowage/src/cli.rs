//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_HOST: &str = "unix:///run/stowage/stowage.sock";

/// Stowage: storage for containers that outlives them.
///
/// `stowage serve` runs the daemon; every other command is a client that
/// talks to it over its unix socket.
#[derive(Parser, Debug)]
#[command(name = "stowage", version, propagate_version = true)]
pub struct Cli {
    /// Daemon socket to talk to, as unix:///path/to.sock.
    #[arg(long, global = true, env = "STOWAGE_HOST", default_value = DEFAULT_HOST)]
    pub host: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Stowage daemon in the foreground.
    Serve(Box<ServeArgs>),
    /// Create, list, inspect, mount and remove volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage snapshots: point-in-time copies of volumes.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List the nodes of the cluster, cordon them and remove them.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the client's and the daemon's versions.
    Version,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with data_root, run_root, plugin_dir, docker_spec,
    /// csi_endpoint, csi_allowed_paths, node_id, overcommit_ratio,
    /// space_reserve, space_check_interval, store, etcd_ca, etcd_cert,
    /// etcd_key, advertise, node_labels, node_ttl and sealing_key_file;
    /// flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where volumes' data and the state database live [default: /var/lib/stowage].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Where the API socket and the volumes' mountpoints live [default: /run/stowage].
    #[arg(long, value_name = "DIR")]
    pub run_root: Option<PathBuf>,
    /// Where plugin doors (Docker volume plugin) put their sockets
    /// [default: /run/docker/plugins].
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Also write /etc/docker/plugins/NAME.spec pointing at the plugin
    /// socket, so Docker finds it as driver NAME outside /run/docker/plugins.
    #[arg(long, value_name = "NAME")]
    pub docker_spec: Option<String>,
    /// Where to serve CSI: unix:///path.sock, as Kubernetes sidecars pass
    /// it [default: unix://RUN_ROOT/csi.sock].
    #[arg(long, value_name = "URL", env = "CSI_ENDPOINT", value_parser = crate::daemon::CsiEndpoint::parse)]
    pub csi_endpoint: Option<crate::daemon::CsiEndpoint>,
    /// The name orchestrators know this host by [default: the hostname].
    #[arg(long, value_name = "ID", env = "STOWAGE_NODE_ID")]
    pub node_id: Option<String>,
    /// Directories CSI staging and target paths must lie beneath, for
    /// example kubelet's /var/lib/kubelet (comma-separated or repeated).
    /// Without it any path is taken except Stowage's own roots, the
    /// system's trees (/etc, /usr, /proc, /dev, /run, ...) and directories
    /// the whole host shares (/, /tmp, /home, ...).
    #[arg(long, value_name = "DIR", value_delimiter = ',')]
    pub csi_allowed_paths: Vec<PathBuf>,
    /// How far the sizes of block volumes, sized local volumes and their
    /// snapshots may add up past the space the data root holds for them:
    /// 1 (the default) promises no more than there is, 2 twice as much.
    /// Thin volumes past it may fail with I/O errors when the data root fills.
    #[arg(long, value_name = "RATIO")]
    pub overcommit_ratio: Option<f64>,
    /// Space on the data root never promised to volumes, kept for the
    /// store and metadata (512M, 2G) [default: 5% of the data root, at most 1G].
    #[arg(long, value_name = "SIZE")]
    pub space_reserve: Option<String>,
    /// How often every sized volume is checked against the data root's
    /// free space, so that the log says when one comes to be at risk of
    /// I/O errors (and when it stops); 0 never [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub space_check_interval: Option<u64>,
    /// The state shared by the nodes of a cluster:
    /// etcd://HOST:PORT[,HOST:PORT...], one endpoint per etcd member.
    /// Without it the node keeps everything in its embedded SQLite store
    /// and is a cluster of one. Each node keeps its own mounts in SQLite
    /// under its data root either way.
    #[arg(long, value_name = "URL", env = "STOWAGE_STORE")]
    pub store: Option<String>,
    /// The CA certificate etcd's certificate is signed by (PEM): etcd is
    /// then reached over TLS.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// This node's client certificate for etcd (PEM), when etcd asks for one.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The address other nodes reach this one at (HOST or HOST:PORT),
    /// shown by `node ls`.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// The key file (64 hex digits, mode 0600, the same on every node)
    /// that seals the secrets Stowage keeps in the cluster's store. With
    /// it and --advertise, block volumes are attached over the network
    /// (NBD with TLS-PSK) on nodes other than their home.
    #[arg(long, value_name = "FILE")]
    pub sealing_key_file: Option<PathBuf>,
    /// A label of this node, KEY=VALUE, repeatable: what placement's
    /// node selectors match.
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = label)]
    pub node_labels: Vec<(String, String)>,
    /// Seconds this node's lease lasts without renewal: a node silent for
    /// longer is down, and its exclusive attachments are released [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub node_ttl: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume; creating it again with the same options succeeds.
    Create(Box<CreateArgs>),
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show volumes in detail, as JSON.
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Grow a block volume, online if it is in use (XFS; ext4 when the
    /// daemon holds CAP_SYS_RESOURCE). Shrinking is refused.
    Resize {
        name: String,
        /// The new size: bytes, or with a unit (20G, 512M; powers of 1024).
        #[arg(long)]
        size: String,
    },
    /// Mount a volume for a consumer and print the host path.
    Mount(MountArgs),
    /// Release a consumer's mount; the last one out unmounts.
    Unmount(MountArgs),
    /// Remove volumes.
    #[command(visible_alias = "remove")]
    Rm {
        /// Remove even while consumers have it mounted (unmounts it first).
        #[arg(short, long)]
        force: bool,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume that no consumer has mounted.
    Prune {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot a volume, consistently even while it is in use; by reflink
    /// in constant time where the data root allows it.
    Create {
        volume: String,
        /// Snapshot name [default: VOLUME-YYYYMMDDTHHMMSSZ].
        name: Option<String>,
    },
    /// List snapshots.
    #[command(visible_alias = "list")]
    Ls {
        /// Only the snapshots of this volume.
        #[arg(long)]
        volume: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show snapshots in detail, as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove snapshots. Volumes made from them stay.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List every node: its state (ready, cordoned, down), address, last
    /// heartbeat, version, labels, space and volume count.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show nodes in detail, as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop placing new volumes on a node; those there stay.
    Cordon { name: String },
    /// Place new volumes on a cordoned node again.
    Uncordon { name: String },
    /// Forget a node that is down.
    #[command(visible_alias = "remove")]
    Rm {
        /// Also forget the volumes whose data is on it (the data stays on
        /// its disk); they are named.
        #[arg(short, long)]
        force: bool,
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Volume name: [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 bytes.
    pub name: String,
    /// Driver: local (a directory; a subvolume on btrfs), tmpfs (memory), bind (an existing host
    /// directory), block (a loop-backed filesystem of a fixed size)
    /// [default: local, or the source's driver for a copy].
    #[arg(short, long)]
    pub driver: Option<String>,
    /// Driver option KEY=VALUE, repeatable.
    /// local: uid, gid, mode, and size on a btrfs data root (a qgroup limit).
    /// tmpfs: size (64m, 1g, 50%), mode, uid, gid.
    /// bind: path (absolute, no symlinks).
    /// block: size (required: 512M, 10G), fs=ext4|xfs, inode-ratio=BYTES,
    /// inode-size=BYTES, reserved=PERCENT. Every driver: owner=UID:GID,
    /// uidmap=DISK:CONTAINER:COUNT[,...] and gidmap=... (repeatable),
    /// ownership=auto|idmap|chown, allow-root=true, label=shared|private|CONTEXT.
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE", value_parser = key_value)]
    pub opts: Vec<(String, String)>,
    /// Label KEY=VALUE (or KEY), repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    pub labels: Vec<(String, String)>,
    /// Create the volume as a copy of this snapshot (same driver and
    /// options unless given).
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "clone_of")]
    pub from_snapshot: Option<String>,
    /// Create the volume as a copy of this volume, consistent even while
    /// it is in use.
    #[arg(long, value_name = "VOLUME")]
    pub clone_of: Option<String>,
    /// The node whose storage holds the volume (local, tmpfs, bind and
    /// block are node-local), or `any`: the ready node with the most free
    /// space among those --node-selector matches [default: this node].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// With --node any: only nodes with this label KEY=VALUE, repeatable.
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = key_value)]
    pub node_selector: Vec<(String, String)>,
    /// Who in the cluster may use it at once: rwo (one node; the default
    /// for node-local drivers), rwop (one consumer in the cluster), rox
    /// (many nodes, read-only), rwx (many nodes read-write: only storage
    /// every node reaches, such as bind with scope=cluster, its default).
    #[arg(long, value_name = "MODE", value_parser = ["rwo", "rwop", "rox", "rwx"])]
    pub access: Option<String>,
    /// Set owner= to the uid:gid that owns PATH in IMAGE, as the engine's
    /// API reports it (for example mongo:/data/db).
    #[arg(long, value_name = "IMAGE:PATH")]
    pub owner_from_image: Option<String>,
    /// Which engine to ask for --owner-from-image.
    #[arg(long, value_enum, default_value_t = EngineKind::Docker)]
    pub engine: EngineKind,
    /// The engine's API socket [default: $DOCKER_HOST or
    /// unix:///var/run/docker.sock; for podman $CONTAINER_HOST or
    /// unix:///run/podman/podman.sock, served by `podman system service`].
    #[arg(long, value_name = "unix:///PATH")]
    pub engine_host: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Filter: driver=NAME, label=KEY, label=KEY=VALUE, dangling=true|false. Repeatable.
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print only the names.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Volume name.
    pub name: String,
    /// Who uses the mount (a container ID, say); each consumer counts once.
    #[arg(long, value_name = "ID")]
    pub consumer: String,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(_) => key_value(s),
        None if !s.is_empty() => Ok((s.to_string(), String::new())),
        None => Err("a label needs a key".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_options_and_labels() {
        assert_eq!(key_value("size=1g").unwrap(), ("size".into(), "1g".into()));
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
        assert_eq!(label("env").unwrap(), ("env".into(), String::new()));
    }
}
