//! btrfs subvolumes: directories that snapshot in constant time and take
//! a size limit (a qgroup limit), for `local` volumes on a btrfs data root.
//!
//! The ioctls are declared here by hand: neither libc nor rustix defines
//! them, and the btrfs crates bind libbtrfsutil, a C library the host
//! would need installed. The structures are fixed by the kernel's stable
//! `<linux/btrfs.h>` ABI (the request numbers were checked against the
//! header with a C program).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, OFlags};

use crate::block::{ioctl_check, usage_of};
use crate::linux::open_nofollow;
use crate::{tree, Usage};

/// The inode number of every subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;
const QUOTA_TREE_OBJECTID: u64 = 8;
const QGROUP_INFO_KEY: u32 = 242;
const QGROUP_LIMIT_KEY: u32 = 244;

const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940E;
const IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940F;
const IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
const IOC_TREE_SEARCH: libc::c_ulong = 0xD000_9411;
const IOC_INO_LOOKUP: libc::c_ulong = 0xD000_9412;
const IOC_QUOTA_CTL: libc::c_ulong = 0xC010_9428;
const IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942B;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
const SUBVOL_RDONLY: u64 = 1 << 1;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused_more: [u64; 4],
}

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - std::mem::size_of::<SearchKey>()],
}

/// Bytes of the header before each item in a search result.
const SEARCH_HEADER_LEN: usize = 32;

fn is_btrfs(fd: &OwnedFd) -> io::Result<bool> {
    Ok(rfs::fstatfs(fd)?.f_type == libc::BTRFS_SUPER_MAGIC)
}

/// Whether `dir` is on btrfs.
pub(crate) fn on_btrfs(dir: &Path) -> io::Result<bool> {
    is_btrfs(&open_nofollow(dir, OFlags::PATH | OFlags::DIRECTORY)?)
}

/// Whether `path` is the root of a subvolume.
pub(crate) fn is_subvolume(path: &Path) -> io::Result<bool> {
    let fd = open_nofollow(path, OFlags::PATH | OFlags::DIRECTORY)?;
    Ok(rfs::fstat(&fd)?.st_ino == FIRST_FREE_OBJECTID && is_btrfs(&fd)?)
}

/// Opens the parent of `path`, never following a symlink, and returns it
/// with the last component, which the subvolume ioctls take by name.
fn parent_and_name(path: &Path) -> io::Result<(OwnedFd, &OsStr)> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no parent directory", path.display()),
        ));
    };
    Ok((
        open_nofollow(parent, OFlags::RDONLY | OFlags::DIRECTORY)?,
        name,
    ))
}

/// Copies `name` into a NUL-terminated ioctl name field.
fn fill_name(field: &mut [u8], name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.len() >= field.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn create_subvolume(path: &Path) -> io::Result<()> {
    let (parent, name) = parent_and_name(path)?;
    // SAFETY: all-zero bytes are a valid VolArgs (integers and arrays).
    let mut args: VolArgs = unsafe { std::mem::zeroed() };
    fill_name(&mut args.name, name)?;
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads one VolArgs at the pointer,
    // which lives across the call; the name is NUL-terminated.
    ioctl_check(unsafe { libc::ioctl(parent.as_raw_fd(), IOC_SUBVOL_CREATE, &args) })?;
    Ok(())
}

pub(crate) fn snapshot_subvolume(src: &Path, dst: &Path, read_only: bool) -> io::Result<()> {
    let source = open_nofollow(src, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let (parent, name) = parent_and_name(dst)?;
    // SAFETY: all-zero bytes are a valid VolArgsV2 (integers and arrays).
    let mut args: VolArgsV2 = unsafe { std::mem::zeroed() };
    args.fd = i64::from(source.as_raw_fd());
    args.flags = if read_only { SUBVOL_RDONLY } else { 0 };
    fill_name(&mut args.name, name)?;
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 reads one VolArgsV2 at the pointer,
    // which lives across the call, as does the source descriptor in it.
    ioctl_check(unsafe { libc::ioctl(parent.as_raw_fd(), IOC_SNAP_CREATE_V2, &args) })?;
    Ok(())
}

/// Deletes the subvolume at `path`. One holding subvolumes of its own
/// (a consumer may make them) is emptied first by a tree removal, whose
/// `rmdir` deletes each nested subvolume root.
pub(crate) fn delete_subvolume(path: &Path) -> io::Result<()> {
    let (parent, name) = parent_and_name(path)?;
    // SAFETY: all-zero bytes are a valid VolArgs (integers and arrays).
    let mut args: VolArgs = unsafe { std::mem::zeroed() };
    fill_name(&mut args.name, name)?;
    // SAFETY: BTRFS_IOC_SNAP_DESTROY reads one VolArgs at the pointer,
    // which lives across the call; the name is NUL-terminated.
    match ioctl_check(unsafe { libc::ioctl(parent.as_raw_fd(), IOC_SNAP_DESTROY, &args) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => std::fs::remove_dir_all(path),
        other => other.map(drop),
    }
}

/// The id of the subvolume whose root is `dir`, which is also the id of
/// its qgroup.
fn subvolume_id(dir: &OwnedFd) -> io::Result<u64> {
    // SAFETY: all-zero bytes are a valid InoLookupArgs.
    let mut args: InoLookupArgs = unsafe { std::mem::zeroed() };
    args.objectid = FIRST_FREE_OBJECTID;
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes one InoLookupArgs at
    // the pointer, which lives across the call. Tree id 0 means "the
    // subvolume of this descriptor", which the kernel writes back.
    ioctl_check(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_INO_LOOKUP, &mut args) })?;
    Ok(args.treeid)
}

/// Limits the bytes the subvolume at `path` refers to, turning quota
/// accounting on for its filesystem first (it stays on).
pub(crate) fn limit_subvolume(path: &Path, bytes: u64) -> io::Result<()> {
    let dir = open_nofollow(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let mut ctl = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: BTRFS_IOC_QUOTA_CTL reads and writes one QuotaCtlArgs at the
    // pointer, which lives across the call. Enabling quotas that are on
    // already succeeds and changes nothing.
    ioctl_check(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_QUOTA_CTL, &mut ctl) })?;
    let args = QgroupLimitArgs {
        qgroupid: subvolume_id(&dir)?,
        flags: QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads one QgroupLimitArgs at the
    // pointer, which lives across the call.
    ioctl_check(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_QGROUP_LIMIT, &args) })?;
    Ok(())
}

/// One item of the quota tree, found by key type and offset (the qgroup
/// id); its little-endian `u64` fields.
fn quota_item(dir: &OwnedFd, key_type: u32, qgroup: u64) -> io::Result<Option<Vec<u64>>> {
    // SAFETY: all-zero bytes are a valid SearchArgs.
    let mut args: SearchArgs = unsafe { std::mem::zeroed() };
    args.key = SearchKey {
        tree_id: QUOTA_TREE_OBJECTID,
        min_objectid: 0,
        max_objectid: 0,
        min_offset: qgroup,
        max_offset: qgroup,
        min_transid: 0,
        max_transid: u64::MAX,
        min_type: key_type,
        max_type: key_type,
        nr_items: 1,
        unused: 0,
        unused_more: [0; 4],
    };
    // SAFETY: BTRFS_IOC_TREE_SEARCH reads the key and writes at most
    // `buf.len()` bytes of results into the SearchArgs at the pointer,
    // which lives across the call.
    ioctl_check(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_TREE_SEARCH, &mut args) })?;
    if args.key.nr_items == 0 {
        return Ok(None);
    }
    let len = u32::from_ne_bytes(args.buf[28..32].try_into().expect("4 bytes")) as usize;
    let item = args
        .buf
        .get(SEARCH_HEADER_LEN..SEARCH_HEADER_LEN + len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short quota tree item"))?;
    Ok(Some(
        item.chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
    ))
}

/// Capacity and use of a subvolume: its qgroup limit and the bytes it
/// refers to (as of the last transaction commit), and the entries in it,
/// counted by a walk. btrfs makes inodes on demand, so like `statvfs` on
/// btrfs it reports an inode capacity of 0.
pub(crate) fn subvolume_usage(path: &Path) -> io::Result<Usage> {
    let dir = open_nofollow(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let qgroup = subvolume_id(&dir)?;
    let no_quota = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} has no qgroup: quotas are off on its filesystem",
                path.display()
            ),
        )
    };
    // btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr.
    let info = quota_item(&dir, QGROUP_INFO_KEY, qgroup)?.ok_or_else(no_quota)?;
    // btrfs_qgroup_limit_item: flags, max_rfer, max_excl, rsv_rfer, rsv_excl.
    let limit = quota_item(&dir, QGROUP_LIMIT_KEY, qgroup)?.ok_or_else(no_quota)?;
    let (used, max) = (info[1], limit[1]);
    let capacity = if limit[0] & QGROUP_LIMIT_MAX_RFER != 0 {
        max
    } else {
        u64::MAX
    };
    let fs = usage_of(&dir)?;
    let entries = tree::walk(path, tree::parallelism(), &|_, _, _| Ok(false))?.entries;
    Ok(Usage {
        capacity_bytes: capacity.min(fs.capacity_bytes),
        used_bytes: used,
        available_bytes: capacity.saturating_sub(used).min(fs.available_bytes),
        inodes: fs.inodes,
        inodes_used: entries,
    })
}
