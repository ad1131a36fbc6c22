//! Image files, loop devices and filesystems on them: the kernel side of
//! block volumes.
//!
//! The loop ioctls are declared here by hand: neither libc nor rustix
//! defines them, and the loop-device crates generate their bindings with
//! bindgen, which needs libclang at build time. The structures are fixed
//! by the kernel's stable `<linux/loop.h>` ABI.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, OFlags};
use rustix::mount::{self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags};

use crate::linux::{attach, open_nofollow, set_idmap};
use crate::UserNamespace;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to an image file. It is configured to clear itself
/// (autoclear): once this handle is dropped and no mount holds the device,
/// the kernel detaches it. So a process killed at any instant leaks no
/// device, and unmounting the filesystem releases it.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    /// Whether the device reads and writes the image with direct I/O,
    /// bypassing the host's page cache (a second copy of every block).
    pub direct_io: bool,
    /// Held open so the device stays bound until a mount holds it too;
    /// `None` for devices simulated by the recording layer.
    pub(crate) _fd: Option<OwnedFd>,
}

/// Capacity and use of a mounted filesystem, as `statvfs` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_used: u64,
}

/// What a filesystem looks like from its root, read from a private mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsInfo {
    pub root_uid: u32,
    pub root_gid: u32,
    pub usage: Usage,
}

/// How an image was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// FICLONE: the copy shares every block with its source, in constant
    /// time.
    Reflink,
    /// Only the allocated ranges were copied, holes stay holes.
    SparseCopy,
    /// A btrfs snapshot of a subvolume: constant time, shares every block.
    Subvolume,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::SparseCopy => "sparse-copy",
            CopyMethod::Subvolume => "subvolume",
        }
    }
}

pub(crate) fn ioctl_check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Creates a sparse image file of `size` bytes; it must not exist.
pub(crate) fn create_image(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_len(size)?;
    file.sync_all()?;
    sync_parent(path)
}

/// Allocates the blocks of the image file `path` up to `size` bytes,
/// keeping its length (blocks past the end wait for it to grow), and
/// syncs it.
pub(crate) fn preallocate(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size)?;
    file.sync_all()
}

/// Grows an image file to `size` bytes; a larger file is left alone.
pub(crate) fn grow_image(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if file.metadata()?.len() < size {
        file.set_len(size)?;
        file.sync_all()?;
    }
    Ok(())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    File::open(parent)?.sync_all()
}

/// Copies `src` to the new file `dst`: a reflink where the filesystem
/// shares blocks, otherwise the allocated ranges only. Reports progress as
/// (bytes done, bytes to copy).
pub(crate) fn copy_image(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<CopyMethod> {
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)?;
    let result = (|| {
        // SAFETY: FICLONE takes the source descriptor as its argument; both
        // descriptors are open for the duration of the call.
        let cloned = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
        let method = if cloned {
            let len = from.metadata()?.len();
            progress(len, len);
            CopyMethod::Reflink
        } else {
            sparse_copy(&from, &to, progress)?;
            CopyMethod::SparseCopy
        };
        to.sync_all()?;
        sync_parent(dst)?;
        Ok(method)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

/// Copies the data ranges of `from` (found with SEEK_DATA/SEEK_HOLE) to the
/// same offsets of `to`, which ends up as long as `from`.
fn sparse_copy(from: &File, to: &File, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match rfs::seek(from, rfs::SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rfs::seek(from, rfs::SeekFrom::Hole(start))?;
        ranges.push((start, end));
        pos = end;
    }
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    let mut done = 0u64;
    progress(0, total);
    for (start, end) in ranges {
        let mut off = start;
        while off < end {
            let chunk = (end - off).min(64 << 20) as usize;
            let (mut src_off, mut dst_off) = (off, off);
            let n = rfs::copy_file_range(from, Some(&mut src_off), to, Some(&mut dst_off), chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "image shrank while being copied",
                ));
            }
            off += n as u64;
            done += n as u64;
            progress(done, total);
        }
    }
    Ok(())
}

/// Finds the loop device already backed by `image`, if any.
pub(crate) fn loop_backing(image: &Path) -> io::Result<Option<PathBuf>> {
    let canonical = std::fs::canonicalize(image)?;
    Ok(loop_devices_backing(&canonical)?.into_iter().next())
}

/// The loop devices whose backing file is `path` or lies under it, as the
/// kernel names it: canonical, so `path` must be too.
pub fn loop_devices_backing(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block")? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("loop") {
            continue;
        }
        let backing = Path::new("/sys/block")
            .join(&*name)
            .join("loop/backing_file");
        if let Ok(text) = std::fs::read_to_string(backing) {
            if Path::new(text.trim_end_matches('\n')).starts_with(path) {
                found.push(Path::new("/dev").join(&*name));
            }
        }
    }
    Ok(found)
}

/// Binds a free loop device to `image` with autoclear, a 4 KiB logical
/// block size and direct I/O where the image's filesystem allows it;
/// read-only if asked, so that the kernel refuses every write.
pub(crate) fn attach_loop(image: &Path, read_only: bool) -> io::Result<LoopDevice> {
    // Two devices on one image would be two independent caches of one
    // filesystem, and corrupt it.
    if let Some(dev) = loop_backing(image)? {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{} is already attached as {}",
                image.display(),
                dev.display()
            ),
        ));
    }
    let backing: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(image)?
        .into();
    let control = rfs::open(
        "/dev/loop-control",
        OFlags::RDWR | OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )?;
    // Another process may take the free device between the two calls.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = ioctl_check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev: OwnedFd = rfs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, rfs::Mode::empty())?;
        let mut last = None;
        let base = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
        for flags in [base | LO_FLAGS_DIRECT_IO, base] {
            // SAFETY: all-zero bytes are a valid LoopConfig (integers and
            // byte arrays only).
            let mut config: LoopConfig = unsafe { std::mem::zeroed() };
            config.fd = backing.as_raw_fd() as u32;
            config.block_size = 4096;
            config.info.flags = flags;
            // SAFETY: LOOP_CONFIGURE reads one LoopConfig at the pointer,
            // which lives across the call; the backing fd is open.
            let rc = unsafe {
                libc::ioctl(
                    dev.as_raw_fd(),
                    LOOP_CONFIGURE,
                    &config as *const LoopConfig,
                )
            };
            if rc == 0 {
                let direct_io = direct_io_enabled(n);
                return Ok(LoopDevice {
                    path,
                    direct_io,
                    _fd: Some(dev),
                });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) || flags & LO_FLAGS_DIRECT_IO == 0 {
                last = Some(err);
                break;
            }
        }
        match last {
            Some(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Some(e) => return Err(e),
            None => unreachable!("the loop either returns or records an error"),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "no free loop device after 16 attempts",
    ))
}

/// Makes `device` stay bound without a handle or a mount (clears
/// autoclear), for raw block use; [`detach_loop`] releases it.
pub(crate) fn keep_loop(device: &LoopDevice) -> io::Result<()> {
    let fd = (device._fd.as_ref())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "simulated loop device"))?;
    // SAFETY: all-zero bytes are a valid LoopInfo64 (integers and arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one LoopInfo64 at the pointer, which
    // lives across the call.
    ioctl_check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    })?;
    info.flags &= !LO_FLAGS_AUTOCLEAR;
    // SAFETY: LOOP_SET_STATUS64 reads one LoopInfo64 at the pointer; only
    // the clearable autoclear flag differs from what the kernel reported.
    ioctl_check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            LOOP_SET_STATUS64,
            &info as *const LoopInfo64,
        )
    })?;
    Ok(())
}

/// Unbinds the loop device at `device`. One still open elsewhere is set to
/// clear itself at its last close instead, which the kernel does for us.
pub(crate) fn detach_loop(device: &Path) -> io::Result<()> {
    let dev = open_nofollow(device, OFlags::RDONLY)?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    match ioctl_check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) }) {
        // ENXIO: not bound (any more).
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        other => other.map(drop),
    }
}

fn direct_io_enabled(n: i32) -> bool {
    std::fs::read_to_string(format!("/sys/block/loop{n}/loop/dio"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// Makes the loop device at `device` see its image's current size.
pub(crate) fn refresh_loop(device: &Path) -> io::Result<()> {
    let dev = open_nofollow(device, OFlags::RDONLY)?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    ioctl_check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0) })?;
    Ok(())
}

/// Creates a filesystem context for `fs_type` on `device` with `options`
/// (`key` or `key=value`), and returns its detached mount.
fn open_filesystem(device: &Path, fs_type: &str, options: &[String]) -> io::Result<OwnedFd> {
    let fs = rmount::fsopen(fs_type, FsOpenFlags::FSOPEN_CLOEXEC)?;
    rmount::fsconfig_set_string(&fs, "source", device)?;
    for option in options {
        match option.split_once('=') {
            Some((k, v)) => rmount::fsconfig_set_string(&fs, k, v)?,
            None => rmount::fsconfig_set_flag(&fs, option.as_str())?,
        }
    }
    rmount::fsconfig_create(&fs)?;
    Ok(rmount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?)
}

pub(crate) fn mount_device(
    device: &Path,
    fs_type: &str,
    options: &[String],
    target: &Path,
    idmap: Option<&UserNamespace>,
) -> io::Result<()> {
    let mount = open_filesystem(device, fs_type, options)?;
    if let Some(userns) = idmap {
        set_idmap(&mount, userns, false)?;
    }
    attach(&mount, target)
}

/// Reads the root owner and usage through a mount that is never attached
/// anywhere: it vanishes with its descriptor, even if the process dies.
pub(crate) fn inspect_device(
    device: &Path,
    fs_type: &str,
    options: &[String],
) -> io::Result<FsInfo> {
    let mount = open_filesystem(device, fs_type, options)?;
    let st = rfs::fstat(&mount)?;
    Ok(FsInfo {
        root_uid: st.st_uid,
        root_gid: st.st_gid,
        usage: usage_of(&mount)?,
    })
}

pub(crate) fn fs_usage(path: &Path) -> io::Result<Usage> {
    let dir = open_nofollow(path, OFlags::PATH | OFlags::DIRECTORY)?;
    usage_of(&dir)
}

pub(crate) fn usage_of(fd: impl AsFd) -> io::Result<Usage> {
    let st = rfs::fstatvfs(fd)?;
    let unit = st.f_frsize;
    Ok(Usage {
        capacity_bytes: st.f_blocks * unit,
        used_bytes: (st.f_blocks - st.f_bfree) * unit,
        available_bytes: st.f_bavail * unit,
        inodes: st.f_files,
        inodes_used: st.f_files - st.f_ffree,
    })
}

/// Freezes (`true`) or thaws the filesystem mounted at `mountpoint`.
/// Thawing a filesystem that is not frozen fails with `EINVAL`.
pub(crate) fn freeze(mountpoint: &Path, frozen: bool) -> io::Result<()> {
    let dir = open_nofollow(mountpoint, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let op = if frozen { FIFREEZE } else { FITHAW };
    // SAFETY: FIFREEZE and FITHAW ignore their argument.
    ioctl_check(unsafe { libc::ioctl(dir.as_raw_fd(), op, 0) })?;
    Ok(())
}

/// Runs an external tool, failing with its standard error unless its exit
/// code is in `ok`.
pub(crate) fn run_tool(program: &str, args: &[String], ok: &[i32]) -> io::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?;
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(io::Error::other(format!(
        "{program} failed ({}): {}",
        out.status,
        stderr.trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(dev: &Path) -> bool {
        let name = dev.file_name().unwrap().to_string_lossy().into_owned();
        Path::new("/sys/block")
            .join(name)
            .join("loop/backing_file")
            .exists()
    }

    #[test]
    fn kept_devices_stay_until_detached_and_read_only_ones_refuse_writes() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("raw.img");
        create_image(&image, 16 << 20).unwrap();
        let dev = attach_loop(&image, true).unwrap();
        keep_loop(&dev).unwrap();
        let path = dev.path.clone();
        drop(dev);
        assert!(attached(&path), "a kept device went with its handle");
        assert_eq!(loop_backing(&image).unwrap(), Some(path.clone()));
        let write = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"));
        assert!(write.is_err(), "a read-only device took a write");
        detach_loop(&path).unwrap();
        // The kernel finishes a detach at the last close; udev may be
        // probing the device.
        let mut waited = 0;
        while attached(&path) && waited < 500 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        assert!(!attached(&path));
        detach_loop(&path).unwrap();
    }

    #[test]
    fn loop_devices_clear_themselves_and_images_copy_sparsely() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.img");
        create_image(&image, 64 << 20).unwrap();
        run_tool(
            "mkfs.ext4",
            &["-q", "-F", "-b", "4096", image.to_str().unwrap()].map(String::from),
            &[0],
        )
        .unwrap();

        // A handle dropped before any mount leaves nothing attached.
        let dev = attach_loop(&image, false).unwrap();
        let path = dev.path.clone();
        assert!(attached(&path));
        assert!(
            attach_loop(&image, false).is_err(),
            "a second device on one image"
        );
        drop(dev);
        assert!(!attached(&path));

        let target = dir.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        let dev = attach_loop(&image, false).unwrap();
        mount_device(&dev.path, "ext4", &[], &target, None).unwrap();
        drop(dev);
        std::fs::write(target.join("f"), vec![7u8; 1 << 20]).unwrap();
        let usage = fs_usage(&target).unwrap();
        assert!(usage.capacity_bytes > 32 << 20 && usage.used_bytes >= 1 << 20);
        freeze(&target, true).unwrap();
        freeze(&target, false).unwrap();
        assert_eq!(
            freeze(&target, false).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        let path = crate::mountinfo::parse_mountinfo(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        )
        .into_iter()
        .find(|m| m.mount_point == target)
        .unwrap()
        .source;
        rmount::unmount(&target, rmount::UnmountFlags::empty()).unwrap();
        assert!(!attached(Path::new(&path)), "unmount releases the device");

        let copy = dir.path().join("b.img");
        copy_image(&image, &copy, &mut |_, _| {}).unwrap();
        assert_eq!(
            std::fs::read(&image).unwrap(),
            std::fs::read(&copy).unwrap()
        );
        let dev = attach_loop(&copy, false).unwrap();
        let info = inspect_device(&dev.path, "ext4", &[]).unwrap();
        assert_eq!((info.root_uid, info.root_gid), (0, 0));
        assert!(info.usage.used_bytes >= 1 << 20);
    }
}
