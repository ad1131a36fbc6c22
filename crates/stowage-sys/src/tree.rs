//! A parallel walk over a directory tree that never follows a symlink, and
//! the two recursive operations built on it: ownership change (the
//! fallback where idmapped mounts are refused) and SELinux relabelling.
//!
//! Written here rather than taken from a crate: the walkers on crates.io
//! (walkdir, jwalk, ignore) yield paths, and acting on a path re-resolves it,
//! which a symlink swapped in mid-walk can redirect. Here every directory
//! is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the
//! root's descriptor and every entry is acted on relative to its parent's.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Stat, CWD};

use crate::IdMapping;

/// What a tree operation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Entries visited, the root included.
    pub entries: u64,
    /// Entries changed.
    pub changed: u64,
}

/// How many threads a tree walk uses: one per core.
pub fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Acts on one entry: `name` relative to `dir`, or `dir` itself when
/// `name` is empty. Returns whether it changed something.
type Action<'a> = dyn Fn(BorrowedFd<'_>, &CStr, &Stat) -> io::Result<bool> + Sync + 'a;

struct Queue {
    /// Directories still to read, relative to the root.
    pending: Vec<PathBuf>,
    /// Directories being read right now.
    active: usize,
    failed: Option<io::Error>,
}

/// Visits `root` and everything below it on `threads` threads.
pub(crate) fn walk(root: &Path, threads: usize, action: &Action<'_>) -> io::Result<TreeStats> {
    let root_fd = rfs::openat2(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    )?;
    let entries = AtomicU64::new(1);
    let changed = AtomicU64::new(u64::from(action(
        root_fd.as_fd(),
        c"",
        &rfs::fstat(&root_fd)?,
    )?));
    let queue = Mutex::new(Queue {
        pending: vec![PathBuf::from(".")],
        active: 0,
        failed: None,
    });
    let wake = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| worker(&root_fd, &queue, &wake, action, &entries, &changed));
        }
    });
    let queue = queue.into_inner().unwrap_or_else(|e| e.into_inner());
    match queue.failed {
        Some(e) => Err(e),
        None => Ok(TreeStats {
            entries: entries.into_inner(),
            changed: changed.into_inner(),
        }),
    }
}

fn worker(
    root: &OwnedFd,
    queue: &Mutex<Queue>,
    wake: &Condvar,
    action: &Action<'_>,
    entries: &AtomicU64,
    changed: &AtomicU64,
) {
    loop {
        let dir = {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.failed.is_some() {
                    return;
                }
                if let Some(d) = q.pending.pop() {
                    q.active += 1;
                    break d;
                }
                if q.active == 0 {
                    wake.notify_all();
                    return;
                }
                q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut found = Vec::new();
        let result = read_dir(root, &dir, action, entries, changed, &mut found);
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        q.active -= 1;
        match result {
            Ok(()) => q.pending.extend(found),
            Err(e) => {
                q.failed.get_or_insert(e);
            }
        }
        wake.notify_all();
    }
}

/// Acts on every entry of one directory and collects its subdirectories.
fn read_dir(
    root: &OwnedFd,
    rel: &Path,
    action: &Action<'_>,
    entries: &AtomicU64,
    changed: &AtomicU64,
    subdirs: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let fd = match rfs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(fd) => fd,
        // Removed or replaced since it was listed: nothing to do there.
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return Ok(())
        }
        Err(e) => return Err(e.into()),
    };
    let mut dir = rfs::Dir::read_from(&fd)?;
    // Counted locally and added once per directory: two threads bumping
    // shared counters per entry would bounce one cache line between cores.
    let (mut seen, mut changes) = (0, 0);
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = match rfs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        seen += 1;
        if action(fd.as_fd(), name, &st)? {
            changes += 1;
        }
        if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory {
            subdirs.push(rel.join(std::ffi::OsStr::from_bytes(name.to_bytes())));
        }
    }
    entries.fetch_add(seen, Ordering::Relaxed);
    changed.fetch_add(changes, Ordering::Relaxed);
    Ok(())
}

/// Maps each covered owner through `mapping`; `AT_SYMLINK_NOFOLLOW` changes
/// a symlink itself, never its target.
pub(crate) fn chown_tree(
    root: &Path,
    mapping: &IdMapping,
    threads: usize,
) -> io::Result<TreeStats> {
    walk(root, threads, &|dir, name, st| {
        let uid = mapping.uid_to_container(st.st_uid);
        let gid = mapping.gid_to_container(st.st_gid);
        let new_uid = uid.filter(|u| *u != st.st_uid);
        let new_gid = gid.filter(|g| *g != st.st_gid);
        if new_uid.is_none() && new_gid.is_none() {
            return Ok(false);
        }
        let flags = if name.is_empty() {
            AtFlags::EMPTY_PATH
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        rfs::chownat(
            dir,
            name,
            new_uid.map(rfs::Uid::from_raw),
            new_gid.map(rfs::Gid::from_raw),
            flags,
        )?;
        Ok(true)
    })
}

/// Sets `security.selinux` on every entry. The attribute is set through
/// `/proc/self/fd/N` of an `O_PATH | O_NOFOLLOW` descriptor: that reaches the
/// entry itself, a symlink included, without resolving its name again.
pub(crate) fn relabel_tree(root: &Path, context: &str, threads: usize) -> io::Result<TreeStats> {
    let value = context.as_bytes();
    walk(root, threads, &|dir, name, _st| {
        let fd = if name.is_empty() {
            rfs::openat(dir, c".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?
        } else {
            rfs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?
        };
        let link = CString::new(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .expect("no NUL in a number");
        // Already labelled: leave it (and its ctime) alone.
        let mut current = [0u8; 256];
        if let Ok(n) = rfs::getxattr(link.as_c_str(), c"security.selinux", &mut current[..]) {
            if strip_nul(&current[..n]) == value {
                return Ok(false);
            }
        }
        rfs::setxattr(
            link.as_c_str(),
            c"security.selinux",
            value,
            rfs::XattrFlags::empty(),
        )?;
        Ok(true)
    })
}

/// Labels may be stored with a trailing NUL.
fn strip_nul(v: &[u8]) -> &[u8] {
    v.strip_suffix(b"\0").unwrap_or(v)
}
