//! Every Linux syscall Stowage makes goes through the [`Sys`] trait.
//!
//! [`LinuxSys`] is the real implementation; [`RecordingSys`] records the
//! calls and simulates the mount table, so the lifecycle logic above can be
//! unit-tested without root. Paths handed to mount operations are resolved
//! with `openat2(RESOLVE_NO_SYMLINKS)`: a symlink swapped into any component
//! makes the call fail instead of mounting somewhere else.

mod block;
mod btrfs;
mod idmap;
mod linux;
mod mountinfo;
mod recording;
mod statmount;
mod tree;

use std::io;
use std::path::{Path, PathBuf};

pub use block::{loop_devices_backing, CopyMethod, FsInfo, LoopDevice, Usage};
pub use idmap::{IdMapping, IdRange, UserNamespace};
pub use linux::LinuxSys;
pub use mountinfo::{parse_mountinfo, MountEntry};
pub use recording::{Call, RecordingSys};
pub use statmount::decode as decode_statmount;
pub use tree::{parallelism, TreeStats};

/// Identity of a file: device and inode, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What `stat` says about a directory opened without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirInfo {
    pub id: FileId,
    pub is_dir: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Options of a tmpfs mount, already validated by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmpfsOptions {
    /// Passed to the kernel as `size=` (bytes, `k`/`m`/`g` suffix or `N%`).
    pub size: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// SELinux `context=` mount option, already validated.
    pub context: Option<String>,
}

/// Per-mount attributes a caller may ask for on a published bind mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttrs {
    pub read_only: bool,
    pub no_exec: bool,
    pub no_suid: bool,
    pub no_dev: bool,
    pub no_atime: bool,
}

/// The syscalls Stowage needs, at the granularity its callers think in.
pub trait Sys: Send + Sync + 'static {
    /// Creates one directory (not its parents). `AlreadyExists` if present.
    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Removes an empty directory. `NotFound` if absent.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory tree without following any symlink in it.
    /// `NotFound` if absent.
    fn remove_tree(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Sets owner and mode of a directory, refusing to follow a symlink.
    fn set_owner_mode(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<()>;
    /// Opens `path` with no symlink in any component and reports what it is.
    fn inspect_nofollow(&self, path: &Path) -> io::Result<DirInfo>;
    /// Bind-mounts `source` onto the directory `target`; both are resolved
    /// without following symlinks. `recursive` carries submounts along.
    /// With `idmap`, the mount presents owners through that namespace; a
    /// filesystem that refuses idmapping fails with `EINVAL`.
    fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        recursive: bool,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()>;
    /// Bind-mounts the file or directory `source` (not its submounts) onto
    /// `target`, an existing entry of the same kind, with `attrs` (and the
    /// idmapping, if given) set on the new mount before it becomes visible.
    /// Both paths are resolved without following symlinks.
    fn bind_with(
        &self,
        source: &Path,
        target: &Path,
        attrs: MountAttrs,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()>;
    /// Mounts a fresh tmpfs onto the directory `target`, idmapped if asked.
    fn mount_tmpfs(
        &self,
        source_name: &str,
        target: &Path,
        opts: &TmpfsOptions,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()>;
    /// Creates a user namespace holding `mapping`.
    fn user_namespace(&self, mapping: &IdMapping) -> io::Result<UserNamespace>;
    /// Changes the owner of every entry under `root` (itself included)
    /// whose owner `mapping` covers to the mapped id, never following a
    /// symlink, on `threads` threads.
    fn chown_tree(&self, root: &Path, mapping: &IdMapping, threads: usize)
        -> io::Result<TreeStats>;
    /// Sets the `security.selinux` attribute of every entry under `root`
    /// (itself included) to `context`, never following a symlink.
    fn relabel_tree(&self, root: &Path, context: &str, threads: usize) -> io::Result<TreeStats>;
    /// Detaches the topmost mount at `target` (never following a symlink).
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Makes the topmost mount at `target`, and every mount beneath it,
    /// read-only: no write reaches the data through it.
    fn make_read_only(&self, target: &Path) -> io::Result<()>;
    /// Whether SELinux is enabled on this host.
    fn selinux_enabled(&self) -> bool;
    /// The current mount table of this process's mount namespace.
    fn mount_table(&self) -> io::Result<Vec<MountEntry>>;
    /// The topmost mount at exactly `path`, if any: what the mount table
    /// shows there, without reading all of it where the kernel can say.
    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>> {
        Ok(top_mount(&self.mount_table()?, path).cloned())
    }
    /// The mount `path` lies in (the topmost one at `path` if something is
    /// mounted there), without following a final symlink.
    fn mount_containing(&self, path: &Path) -> io::Result<MountEntry> {
        containing_mount(&self.mount_table()?, path)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    /// Creates the sparse image file `path` of `size` bytes, durably. It
    /// must not exist.
    fn create_image(&self, path: &Path, size: u64) -> io::Result<()>;
    /// Grows an image file to `size` bytes, durably; never shrinks it.
    fn grow_image(&self, path: &Path, size: u64) -> io::Result<()>;
    /// Creates the empty regular file `path` (never following a symlink).
    /// `AlreadyExists` if something is there.
    fn create_file(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Removes a file (never following a symlink). `NotFound` if absent.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Copies the image `src` to the new file `dst`, by reflink where the
    /// filesystem can, reporting (bytes done, bytes to copy).
    fn copy_image(
        &self,
        src: &Path,
        dst: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<CopyMethod>;
    /// Attaches `image` to a free loop device that clears itself once
    /// neither the handle nor a mount holds it, read-only if asked.
    /// Refused if another loop device already backs onto the image.
    fn attach_loop(&self, image: &Path, read_only: bool) -> io::Result<LoopDevice>;
    /// Makes an attached loop device stay attached without a handle or a
    /// mount, until [`Sys::detach_loop`].
    fn keep_loop(&self, device: &LoopDevice) -> io::Result<()>;
    /// Detaches a loop device; one still open elsewhere goes at its last
    /// close. Detaching a device that is not attached succeeds.
    fn detach_loop(&self, device: &Path) -> io::Result<()>;
    /// The loop device backed by `image`, if one is.
    fn loop_device_of(&self, image: &Path) -> io::Result<Option<PathBuf>>;
    /// The loop devices whose backing files lie under the directory `dir`.
    fn loop_devices_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Makes a loop device take up its image's new size.
    fn refresh_loop(&self, device: &Path) -> io::Result<()>;
    /// Mounts the `fs_type` filesystem on `device` onto the directory
    /// `target`, nosuid and nodev, idmapped if asked. `options` are
    /// `key` or `key=value` filesystem options.
    fn mount_device(
        &self,
        device: &Path,
        fs_type: &str,
        options: &[String],
        target: &Path,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()>;
    /// Reads a filesystem's root owner and usage through a private mount
    /// that is attached nowhere and gone when the call returns.
    fn inspect_device(
        &self,
        device: &Path,
        fs_type: &str,
        options: &[String],
    ) -> io::Result<FsInfo>;
    /// The bytes of disk the file `path` takes (its allocated blocks, not
    /// its length), never following a symlink.
    fn allocated_bytes(&self, path: &Path) -> io::Result<u64>;
    /// Allocates every block of the file `path` up to `size` bytes, so
    /// that writing it never needs more space, without changing its
    /// length; durably.
    fn preallocate(&self, path: &Path, size: u64) -> io::Result<()>;
    /// Capacity and use of the filesystem holding `path`.
    fn fs_usage(&self, path: &Path) -> io::Result<Usage>;
    /// Freezes (`true`) or thaws the filesystem mounted at `mountpoint`.
    fn freeze(&self, mountpoint: &Path, frozen: bool) -> io::Result<()>;
    /// Runs an external tool (mkfs, resize2fs, ...) to completion. An exit
    /// code outside `ok` fails, with the tool's standard error as message.
    fn run_tool(&self, program: &str, args: &[String], ok: &[i32]) -> io::Result<()>;
    /// Whether this process holds the capability numbered `cap` (see
    /// capabilities(7)) in its effective set.
    fn has_capability(&self, cap: u32) -> bool;

    /// Whether directories made in `dir` can be subvolumes (btrfs): they
    /// snapshot in constant time and take a size limit.
    fn supports_subvolumes(&self, dir: &Path) -> io::Result<bool>;
    /// Whether `path` is the root directory of a subvolume.
    fn is_subvolume(&self, path: &Path) -> io::Result<bool>;
    /// Creates the subvolume `path` (its parent exists, and no component
    /// is a symlink). `AlreadyExists` if something is there.
    fn create_subvolume(&self, path: &Path) -> io::Result<()>;
    /// Makes the new subvolume `dst` a snapshot of the subvolume `src`,
    /// read-only if asked, in constant time; it shares every block.
    fn snapshot_subvolume(&self, src: &Path, dst: &Path, read_only: bool) -> io::Result<()>;
    /// Deletes the subvolume `path` with everything in it, subvolumes a
    /// consumer made inside included. `NotFound` if absent.
    fn delete_subvolume(&self, path: &Path) -> io::Result<()>;
    /// Limits the bytes the subvolume `path` may refer to, turning quota
    /// accounting on for its filesystem if it is off.
    fn limit_subvolume(&self, path: &Path, bytes: u64) -> io::Result<()>;
    /// Capacity (the limit) and use of the subvolume `path`.
    fn subvolume_usage(&self, path: &Path) -> io::Result<Usage>;
}

/// Treats "already there" as success, for idempotent creation.
pub fn exists_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Treats "already gone" as success, for idempotent removal.
pub fn missing_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whether an unmount failed because nothing is mounted there.
pub fn is_not_mounted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT))
}

/// Whether a path was refused because a component is a symlink, which
/// every mount operation resolves with `RESOLVE_NO_SYMLINKS`.
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// The topmost mount at exactly `path` in `table`: the last one mounted
/// there.
pub fn top_mount<'t>(table: &'t [MountEntry], path: &Path) -> Option<&'t MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// The mount of `table` that `path` lies in: the topmost one at the
/// longest mount point that is `path` or one of its ancestors.
pub fn containing_mount<'t>(table: &'t [MountEntry], path: &Path) -> Option<&'t MountEntry> {
    path.ancestors().find_map(|a| top_mount(table, a))
}

/// Where `path`, which lies in the mount `m`, is within `m`'s filesystem:
/// the mount's root joined with the rest of the path. Two paths show the
/// same files exactly when their filesystems' devices and these paths
/// agree, whatever mounts lead to them.
pub fn path_in_filesystem(m: &MountEntry, path: &Path) -> PathBuf {
    match path.strip_prefix(&m.mount_point) {
        Ok(rest) if !rest.as_os_str().is_empty() => m.root.join(rest),
        _ => m.root.clone(),
    }
}
