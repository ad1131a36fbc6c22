//! The real implementation of [`Sys`], on the new mount API.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags,
};

use crate::{parse_mountinfo, DirInfo, FileId, MountEntry, Sys, TmpfsOptions};

/// Talks to the running Linux kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

/// Opens `path` with no symlink allowed in any component, the last one
/// included (`ELOOP`).
fn open_nofollow(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rfs::openat2(
        CWD,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Attaches the detached mount `mount` onto the directory at `target`.
fn attach(mount: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = open_nofollow(target, OFlags::PATH | OFlags::DIRECTORY)?;
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
        })
    }

    fn bind_mount(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        let source = open_nofollow(source, OFlags::PATH | OFlags::DIRECTORY)?;
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH;
        if recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = rmount::open_tree(&source, "", flags)?;
        attach(&tree, target)
    }

    fn mount_tmpfs(&self, source_name: &str, target: &Path, opts: &TmpfsOptions) -> io::Result<()> {
        let fs = rmount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
        rmount::fsconfig_set_string(&fs, "source", source_name)?;
        if let Some(size) = &opts.size {
            rmount::fsconfig_set_string(&fs, "size", size.as_str())?;
        }
        rmount::fsconfig_set_string(&fs, "mode", format!("{:o}", opts.mode).as_str())?;
        rmount::fsconfig_set_string(&fs, "uid", opts.uid.to_string().as_str())?;
        rmount::fsconfig_set_string(&fs, "gid", opts.gid.to_string().as_str())?;
        rmount::fsconfig_create(&fs)?;
        let mount = rmount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
        )?;
        attach(&mount, target)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        rmount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
        Ok(())
    }

    fn mount_table(&self) -> io::Result<Vec<MountEntry>> {
        Ok(parse_mountinfo(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }
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
}
