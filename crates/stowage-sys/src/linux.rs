//! The real implementation of [`Sys`], on the new mount API.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags,
};

use std::os::fd::AsRawFd;

use crate::{
    block, btrfs, parse_mountinfo, statmount, top_mount, tree, CopyMethod, DirInfo, FileId, FsInfo,
    IdMapping, LoopDevice, MountAttrs, MountEntry, Sys, TmpfsOptions, TreeStats, Usage,
    UserNamespace,
};

/// Talks to the running Linux kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

/// Opens `path` with no symlink allowed in any component, the last one
/// included (`ELOOP`).
pub(crate) fn open_nofollow(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rfs::openat2(
        CWD,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Turns a raw syscall return into `io::Result`.
fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Idmaps the detached mount `mount` (and its submounts if `recursive`)
/// through `userns`. rustix has no wrapper for mount_setattr(2).
pub(crate) fn set_idmap(
    mount: &OwnedFd,
    userns: &UserNamespace,
    recursive: bool,
) -> io::Result<()> {
    let userns_fd = userns
        .fd
        .as_ref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "recorded namespace"))?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns_fd.as_raw_fd() as u64,
    };
    mount_setattr(mount, &attr, recursive)
}

/// Makes the detached mount `mount` (and its submounts if `recursive`)
/// private: a clone of a shared mount would otherwise stay in its peer
/// group, and whatever is mounted at the source later, by anyone, would
/// appear inside the volume too, past every check.
fn make_private(mount: &OwnedFd, recursive: bool) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    mount_setattr(mount, &attr, recursive)
}

/// Sets `attrs` on the detached mount `mount` (not its submounts).
fn set_attrs(mount: &OwnedFd, attrs: MountAttrs) -> io::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    for (wanted, flag) in [
        (attrs.read_only, libc::MOUNT_ATTR_RDONLY),
        (attrs.no_exec, libc::MOUNT_ATTR_NOEXEC),
        (attrs.no_suid, libc::MOUNT_ATTR_NOSUID),
        (attrs.no_dev, libc::MOUNT_ATTR_NODEV),
    ] {
        if wanted {
            attr.attr_set |= flag;
        }
    }
    if attrs.no_atime {
        // The atime modes are one field: clear it, then set the one wanted.
        attr.attr_clr |= libc::MOUNT_ATTR__ATIME;
        attr.attr_set |= libc::MOUNT_ATTR_NOATIME;
    }
    if attr.attr_set == 0 {
        return Ok(());
    }
    mount_setattr(mount, &attr, false)
}

/// mount_setattr(2) on a mount (detached, or the one a path's descriptor
/// is the root of); rustix has no wrapper for it.
fn mount_setattr(mount: &OwnedFd, attr: &libc::mount_attr, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads `size` bytes at `attr`, a live and fully
    // initialised mount_attr; the path is a NUL-terminated empty string;
    // the descriptors stay open for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `mount` onto the directory at `target`.
pub(crate) fn attach(mount: &OwnedFd, target: &Path) -> io::Result<()> {
    attach_to(mount, target, OFlags::DIRECTORY)
}

/// Attaches the detached mount `mount` onto `target`, opened with `kind`
/// (`DIRECTORY`, or empty for any entry).
fn attach_to(mount: &OwnedFd, target: &Path, kind: OFlags) -> io::Result<()> {
    let target = open_nofollow(target, OFlags::PATH | kind)?;
    rmount::move_mount(
        mount,
        "",
        &target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

impl Sys for LinuxSys {
    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        rfs::mkdirat(CWD, path, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        rfs::unlinkat(CWD, path, rfs::AtFlags::REMOVEDIR)?;
        Ok(())
    }

    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        // std's remove_dir_all walks by directory descriptors and never
        // follows symlinks (fixed for CVE-2022-21658), which is what we need.
        std::fs::remove_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(path)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn set_owner_mode(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        let dir = open_nofollow(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        rfs::fchown(
            &dir,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
        )?;
        // chown clears setuid/setgid bits, so the mode goes second.
        rfs::fchmod(&dir, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    fn inspect_nofollow(&self, path: &Path) -> io::Result<DirInfo> {
        let fd = open_nofollow(path, OFlags::PATH)?;
        let st = rfs::fstat(&fd)?;
        Ok(DirInfo {
            id: FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            },
            is_dir: rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory,
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        })
    }

    fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        recursive: bool,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let source = open_nofollow(source, OFlags::PATH | OFlags::DIRECTORY)?;
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH;
        if recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = rmount::open_tree(&source, "", flags)?;
        make_private(&tree, recursive)?;
        if let Some(userns) = idmap {
            set_idmap(&tree, userns, recursive)?;
        }
        attach(&tree, target)
    }

    fn bind_with(
        &self,
        source: &Path,
        target: &Path,
        attrs: MountAttrs,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let source = open_nofollow(source, OFlags::PATH)?;
        let flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH;
        let tree = rmount::open_tree(&source, "", flags)?;
        make_private(&tree, false)?;
        if let Some(userns) = idmap {
            set_idmap(&tree, userns, false)?;
        }
        set_attrs(&tree, attrs)?;
        attach_to(&tree, target, OFlags::empty())
    }

    fn mount_tmpfs(
        &self,
        source_name: &str,
        target: &Path,
        opts: &TmpfsOptions,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let fs = rmount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
        rmount::fsconfig_set_string(&fs, "source", source_name)?;
        if let Some(size) = &opts.size {
            rmount::fsconfig_set_string(&fs, "size", size.as_str())?;
        }
        rmount::fsconfig_set_string(&fs, "mode", format!("{:o}", opts.mode).as_str())?;
        rmount::fsconfig_set_string(&fs, "uid", opts.uid.to_string().as_str())?;
        rmount::fsconfig_set_string(&fs, "gid", opts.gid.to_string().as_str())?;
        if let Some(context) = &opts.context {
            rmount::fsconfig_set_string(&fs, "context", context.as_str())?;
        }
        rmount::fsconfig_create(&fs)?;
        let mount = rmount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
        )?;
        if let Some(userns) = idmap {
            set_idmap(&mount, userns, false)?;
        }
        attach(&mount, target)
    }

    fn make_read_only(&self, target: &Path) -> io::Result<()> {
        let mount = open_nofollow(target, OFlags::PATH | OFlags::DIRECTORY)?;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        mount_setattr(&mount, &attr, true)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        rmount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
        Ok(())
    }

    fn user_namespace(&self, mapping: &IdMapping) -> io::Result<UserNamespace> {
        let fd = new_user_namespace(mapping)?;
        Ok(UserNamespace {
            fd: Some(fd),
            mapping: mapping.clone(),
        })
    }

    fn chown_tree(
        &self,
        root: &Path,
        mapping: &IdMapping,
        threads: usize,
    ) -> io::Result<TreeStats> {
        tree::chown_tree(root, mapping, threads)
    }

    fn relabel_tree(&self, root: &Path, context: &str, threads: usize) -> io::Result<TreeStats> {
        tree::relabel_tree(root, context, threads)
    }

    fn selinux_enabled(&self) -> bool {
        Path::new("/sys/fs/selinux").exists()
    }

    fn mount_table(&self) -> io::Result<Vec<MountEntry>> {
        // A proc file reports no size, so `fs::read_to_string` would start
        // at 32 bytes and double: eight reads for a short table, each
        // one a trip into the kernel. Room for a few hundred mounts takes
        // one.
        let mut text = String::with_capacity(64 * 1024);
        File::open("/proc/self/mountinfo")?.read_to_string(&mut text)?;
        Ok(parse_mountinfo(&text))
    }

    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>> {
        match statmount::mount_at(path) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                Ok(top_mount(&self.mount_table()?, path).cloned())
            }
            found => found,
        }
    }

    fn mount_containing(&self, path: &Path) -> io::Result<MountEntry> {
        match statmount::mount_containing(path) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let table = self.mount_table()?;
                crate::containing_mount(&table, path)
                    .cloned()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
            }
            found => found,
        }
    }

    fn create_image(&self, path: &Path, size: u64) -> io::Result<()> {
        block::create_image(path, size)
    }

    fn grow_image(&self, path: &Path, size: u64) -> io::Result<()> {
        block::grow_image(path, size)
    }

    fn create_file(&self, path: &Path, mode: u32) -> io::Result<()> {
        rfs::openat(
            CWD,
            path,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        rfs::unlinkat(CWD, path, rfs::AtFlags::empty())?;
        Ok(())
    }

    fn copy_image(
        &self,
        src: &Path,
        dst: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<CopyMethod> {
        block::copy_image(src, dst, progress)
    }

    fn attach_loop(&self, image: &Path, read_only: bool) -> io::Result<LoopDevice> {
        block::attach_loop(image, read_only)
    }

    fn keep_loop(&self, device: &LoopDevice) -> io::Result<()> {
        block::keep_loop(device)
    }

    fn detach_loop(&self, device: &Path) -> io::Result<()> {
        block::detach_loop(device)
    }

    fn loop_device_of(&self, image: &Path) -> io::Result<Option<std::path::PathBuf>> {
        block::loop_backing(image)
    }

    fn allocated_bytes(&self, path: &Path) -> io::Result<u64> {
        let st = rfs::statat(CWD, path, rfs::AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(st.st_blocks as u64 * 512)
    }

    fn preallocate(&self, path: &Path, size: u64) -> io::Result<()> {
        block::preallocate(path, size)
    }

    fn loop_devices_under(&self, dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
        block::loop_devices_backing(&std::fs::canonicalize(dir)?)
    }

    fn refresh_loop(&self, device: &Path) -> io::Result<()> {
        block::refresh_loop(device)
    }

    fn mount_device(
        &self,
        device: &Path,
        fs_type: &str,
        options: &[String],
        target: &Path,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        block::mount_device(device, fs_type, options, target, idmap)
    }

    fn inspect_device(
        &self,
        device: &Path,
        fs_type: &str,
        options: &[String],
    ) -> io::Result<FsInfo> {
        block::inspect_device(device, fs_type, options)
    }

    fn fs_usage(&self, path: &Path) -> io::Result<Usage> {
        block::fs_usage(path)
    }

    fn freeze(&self, mountpoint: &Path, frozen: bool) -> io::Result<()> {
        block::freeze(mountpoint, frozen)
    }

    fn run_tool(&self, program: &str, args: &[String], ok: &[i32]) -> io::Result<()> {
        block::run_tool(program, args, ok)
    }

    fn supports_subvolumes(&self, dir: &Path) -> io::Result<bool> {
        btrfs::on_btrfs(dir)
    }

    fn is_subvolume(&self, path: &Path) -> io::Result<bool> {
        btrfs::is_subvolume(path)
    }

    fn create_subvolume(&self, path: &Path) -> io::Result<()> {
        btrfs::create_subvolume(path)
    }

    fn snapshot_subvolume(&self, src: &Path, dst: &Path, read_only: bool) -> io::Result<()> {
        btrfs::snapshot_subvolume(src, dst, read_only)
    }

    fn delete_subvolume(&self, path: &Path) -> io::Result<()> {
        btrfs::delete_subvolume(path)
    }

    fn limit_subvolume(&self, path: &Path, bytes: u64) -> io::Result<()> {
        btrfs::limit_subvolume(path, bytes)
    }

    fn subvolume_usage(&self, path: &Path) -> io::Result<Usage> {
        btrfs::subvolume_usage(path)
    }

    fn has_capability(&self, cap: u32) -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|set| cap < 64 && set & (1 << cap) != 0)
    }
}

/// Makes a user namespace holding `mapping` and returns a descriptor for
/// it. A forked child unshares its user namespace, says so through a pipe
/// and waits to be killed; the parent writes the child's uid and gid maps,
/// opens `/proc/PID/ns/user` and kills it. The descriptor keeps the
/// namespace alive.
fn new_user_namespace(mapping: &IdMapping) -> io::Result<OwnedFd> {
    if mapping.uids.is_empty() || mapping.gids.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a user namespace needs both uid and gid ranges",
        ));
    }
    let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: after fork only this thread exists in the child. It makes
    // only async-signal-safe system calls (unshare, write, pause, _exit) on
    // stack buffers and descriptors it owns, allocates nothing and takes no
    // lock, so no state held by the parent's other threads is observed.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; _exit never returns.
        unsafe {
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            let byte = [u8::from(ok)];
            libc::write(ready_w.as_raw_fd(), byte.as_ptr().cast(), 1);
            // The parent kills us once it holds the namespace; the loop
            // only guards against stray signals.
            loop {
                libc::pause();
            }
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(ready_w);
    let result = (|| {
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut std::fs::File::from(ready_r), &mut byte)?;
        if byte[0] != 1 {
            return Err(io::Error::other(
                "unshare(CLONE_NEWUSER) failed in the helper",
            ));
        }
        let proc = Path::new("/proc").join(pid.to_string());
        std::fs::write(proc.join("uid_map"), IdMapping::map_file(&mapping.uids))?;
        std::fs::write(proc.join("gid_map"), IdMapping::map_file(&mapping.gids))?;
        let ns = std::fs::File::open(proc.join("ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    let mut status = 0;
    // SAFETY: signalling and reaping our own child, with a valid status
    // pointer.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn inspect_refuses_symlink_in_any_component() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("inner")).unwrap();
        symlink(&real, dir.path().join("link")).unwrap();
        let sys = LinuxSys;
        assert!(sys.inspect_nofollow(&real.join("inner")).unwrap().is_dir);
        let err = sys
            .inspect_nofollow(&dir.path().join("link/inner"))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let err = sys.inspect_nofollow(&dir.path().join("link")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    fn tree(base: &Path) {
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::fs::write(base.join("a/f"), b"x").unwrap();
        std::fs::write(base.join("a/b/g"), b"y").unwrap();
        symlink("/etc/passwd", base.join("a/link")).unwrap();
        for p in ["", "a", "a/b", "a/f", "a/b/g"] {
            std::os::unix::fs::chown(base.join(p), Some(15149), Some(15149)).unwrap();
        }
    }

    fn owner(p: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    fn single(disk: u32, container: u32) -> IdMapping {
        let r = vec![crate::IdRange {
            disk,
            container,
            count: 1,
        }];
        IdMapping {
            uids: r.clone(),
            gids: r,
        }
    }

    #[test]
    fn idmapped_bind_mount_presents_owners_through_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        tree(&src);
        let sys = LinuxSys;
        let userns = sys.user_namespace(&single(15149, 184)).unwrap();
        sys.bind_mount(&src, &dst, false, Some(&userns)).unwrap();
        let seen = (owner(&dst), owner(&dst.join("a/b/g")));
        sys.unmount(&dst).unwrap();
        assert_eq!(seen, ((184, 184), (184, 184)));
        assert_eq!(owner(&src.join("a/b/g")), (15149, 15149), "disk unchanged");
    }

    #[test]
    fn chown_tree_maps_owners_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let passwd = owner(Path::new("/etc/passwd"));
        let stats = LinuxSys
            .chown_tree(dir.path(), &single(15149, 184), 2)
            .unwrap();
        for p in ["", "a", "a/b", "a/f", "a/b/g"] {
            assert_eq!(owner(&dir.path().join(p)), (184, 184), "{p}");
        }
        // The symlink belonged to root, outside the mapping: untouched, and
        // its target was never followed.
        assert_eq!(owner(&dir.path().join("a/link")), (0, 0));
        assert_eq!(owner(Path::new("/etc/passwd")), passwd);
        assert_eq!((stats.entries, stats.changed), (6, 5));
        let again = LinuxSys
            .chown_tree(dir.path(), &single(15149, 184), 2)
            .unwrap();
        assert_eq!(again.changed, 0);
    }

    #[test]
    fn relabel_tree_sets_the_selinux_attribute_on_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let ctx = "system_u:object_r:container_file_t:s0";
        let stats = LinuxSys.relabel_tree(dir.path(), ctx, 2).unwrap();
        assert_eq!((stats.entries, stats.changed), (6, 6));
        for p in ["", "a", "a/b", "a/f", "a/b/g", "a/link"] {
            let path = dir.path().join(p);
            let mut buf = [0u8; 256];
            let n = rfs::lgetxattr(&path, "security.selinux", &mut buf[..]).unwrap();
            assert_eq!(&buf[..n], ctx.as_bytes(), "{p}");
        }
        let again = LinuxSys.relabel_tree(dir.path(), ctx, 2).unwrap();
        assert_eq!(again.changed, 0);
    }
}
