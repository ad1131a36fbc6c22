//! A [`Sys`] that records calls and simulates directories and mounts in
//! memory, for unit tests of the logic above the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{
    CopyMethod, DirInfo, FileId, FsInfo, IdMapping, LoopDevice, MountAttrs, MountEntry, Sys,
    TmpfsOptions, TreeStats, Usage, UserNamespace,
};

/// One call made through [`RecordingSys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    CreateDir(PathBuf),
    RemoveDir(PathBuf),
    RemoveTree(PathBuf),
    SetOwnerMode(PathBuf, u32, u32, u32),
    BindMount {
        source: PathBuf,
        target: PathBuf,
        recursive: bool,
        idmap: Option<IdMapping>,
    },
    BindWith {
        source: PathBuf,
        target: PathBuf,
        attrs: MountAttrs,
        idmap: Option<IdMapping>,
    },
    MountTmpfs {
        target: PathBuf,
        opts: TmpfsOptions,
        idmap: Option<IdMapping>,
    },
    Unmount(PathBuf),
    MakeReadOnly(PathBuf),
    UserNamespace(IdMapping),
    ChownTree(PathBuf, IdMapping),
    RelabelTree(PathBuf, String),
    CreateImage(PathBuf, u64),
    GrowImage(PathBuf, u64),
    Preallocate(PathBuf, u64),
    CreateFile(PathBuf),
    RemoveFile(PathBuf),
    CopyImage(PathBuf, PathBuf),
    AttachLoop {
        image: PathBuf,
        read_only: bool,
    },
    KeepLoop(PathBuf),
    DetachLoop(PathBuf),
    RefreshLoop(PathBuf),
    MountDevice {
        device: PathBuf,
        fs_type: String,
        options: Vec<String>,
        target: PathBuf,
        idmap: Option<IdMapping>,
    },
    InspectDevice(PathBuf),
    Freeze(PathBuf, bool),
    RunTool(String, Vec<String>),
    CreateSubvolume(PathBuf),
    SnapshotSubvolume {
        src: PathBuf,
        dst: PathBuf,
        read_only: bool,
    },
    DeleteSubvolume(PathBuf),
    LimitSubvolume(PathBuf, u64),
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    dirs: BTreeSet<PathBuf>,
    /// Owner and mode per directory, where set.
    owners: BTreeMap<PathBuf, (u32, u32, u32)>,
    /// Regular files (images) and their sizes.
    files: BTreeMap<PathBuf, u64>,
    /// Bytes preallocated per file.
    preallocated: BTreeMap<PathBuf, u64>,
    /// Mount stack per target, bottom first: the source of each mount.
    mounts: BTreeMap<PathBuf, Vec<String>>,
    selinux: bool,
    /// Loop devices attached so far.
    loops: usize,
    /// Whether directories may be subvolumes (a simulated btrfs).
    subvolumes_supported: bool,
    /// Subvolumes and their size limits.
    subvolumes: BTreeMap<PathBuf, Option<u64>>,
    /// Failures to inject: the next call whose debug form contains the key
    /// fails with the errno.
    failures: Vec<(String, i32)>,
}

/// Records every call; directories and mounts live in memory.
#[derive(Default)]
pub struct RecordingSys {
    state: Mutex<State>,
}

impl RecordingSys {
    pub fn new() -> Self {
        Self::default()
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls (the simulated state stays).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Pretends SELinux is enabled (or not).
    pub fn set_selinux(&self, enabled: bool) {
        self.lock().selinux = enabled;
    }

    /// Pretends `path` exists as a directory (a host directory to import).
    pub fn add_dir(&self, path: impl Into<PathBuf>) {
        self.lock().dirs.insert(path.into());
    }

    /// Pretends the data root is on btrfs, where directories may be
    /// subvolumes (or not).
    pub fn set_subvolumes(&self, supported: bool) {
        self.lock().subvolumes_supported = supported;
    }

    /// The size limit of a simulated subvolume: `None` if there is no
    /// such subvolume, `Some(None)` if it has no limit.
    pub fn subvolume_limit(&self, path: &Path) -> Option<Option<u64>> {
        self.lock().subvolumes.get(path).copied()
    }

    /// Whether the simulated `path` exists.
    pub fn dir_exists(&self, path: &Path) -> bool {
        self.lock().dirs.contains(path)
    }

    /// Makes the next call whose `Debug` form contains `needle` fail with
    /// `errno`.
    pub fn fail_next(&self, needle: &str, errno: i32) {
        self.lock().failures.push((needle.to_string(), errno));
    }

    /// How many injected failures have not fired yet.
    pub fn armed_failures(&self) -> usize {
        self.lock().failures.len()
    }

    /// Disarms every injected failure that has not fired.
    pub fn disarm(&self) {
        self.lock().failures.clear();
    }

    /// The size of a simulated file, if it exists.
    pub fn file_size(&self, path: &Path) -> Option<u64> {
        self.lock().files.get(path).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, call: Call) -> io::Result<std::sync::MutexGuard<'_, State>> {
        let mut state = self.lock();
        let text = format!("{call:?}");
        if let Some(i) = state.failures.iter().position(|(n, _)| text.contains(n)) {
            let (_, errno) = state.failures.remove(i);
            return Err(io::Error::from_raw_os_error(errno));
        }
        state.calls.push(call);
        Ok(state)
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Sys for RecordingSys {
    fn create_dir(&self, path: &Path, _mode: u32) -> io::Result<()> {
        let mut s = self.record(Call::CreateDir(path.into()))?;
        if !s.dirs.insert(path.into()) {
            return Err(errno(libc::EEXIST));
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.record(Call::RemoveDir(path.into()))?;
        if s.mounts.get(path).is_some_and(|m| !m.is_empty()) {
            return Err(errno(libc::EBUSY));
        }
        if !s.dirs.remove(path) {
            return Err(errno(libc::ENOENT));
        }
        Ok(())
    }

    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        let mut s = self.record(Call::RemoveTree(path.into()))?;
        if !s.dirs.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        s.dirs.retain(|d| !d.starts_with(path));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        if !s.dirs.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        Ok(s.dirs
            .iter()
            .filter(|d| d.parent() == Some(path))
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn set_owner_mode(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        let mut s = self.record(Call::SetOwnerMode(path.into(), uid, gid, mode))?;
        if !s.dirs.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        s.owners.insert(path.into(), (uid, gid, mode));
        Ok(())
    }

    fn inspect_nofollow(&self, path: &Path) -> io::Result<DirInfo> {
        let s = self.lock();
        if !s.dirs.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        // A stable fake identity: the index of the path in sorted order.
        let ino = s.dirs.iter().position(|d| d == path).unwrap_or(0) as u64 + 1;
        let (uid, gid, mode) = s.owners.get(path).copied().unwrap_or((0, 0, 0o755));
        Ok(DirInfo {
            id: FileId { dev: 1, ino },
            is_dir: true,
            uid,
            gid,
            mode,
        })
    }

    fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        recursive: bool,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let mut s = self.record(Call::BindMount {
            source: source.into(),
            target: target.into(),
            recursive,
            idmap: idmap.map(|u| u.mapping.clone()),
        })?;
        if !s.dirs.contains(source) || !s.dirs.contains(target) {
            return Err(errno(libc::ENOENT));
        }
        let src = source.display().to_string();
        s.mounts.entry(target.into()).or_default().push(src);
        Ok(())
    }

    fn bind_with(
        &self,
        source: &Path,
        target: &Path,
        attrs: MountAttrs,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let mut s = self.record(Call::BindWith {
            source: source.into(),
            target: target.into(),
            attrs,
            idmap: idmap.map(|u| u.mapping.clone()),
        })?;
        let exists = |s: &State, p: &Path| s.dirs.contains(p) || s.files.contains_key(p);
        if !exists(&s, source) || !exists(&s, target) {
            return Err(errno(libc::ENOENT));
        }
        // A bind of a mountpoint shows what is mounted there.
        let src = match s.mounts.get(source).and_then(|stack| stack.last()) {
            Some(top) => top.clone(),
            None => source.display().to_string(),
        };
        s.mounts.entry(target.into()).or_default().push(src);
        Ok(())
    }

    fn mount_tmpfs(
        &self,
        source_name: &str,
        target: &Path,
        opts: &TmpfsOptions,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let mut s = self.record(Call::MountTmpfs {
            target: target.into(),
            opts: opts.clone(),
            idmap: idmap.map(|u| u.mapping.clone()),
        })?;
        if !s.dirs.contains(target) {
            return Err(errno(libc::ENOENT));
        }
        s.mounts
            .entry(target.into())
            .or_default()
            .push(source_name.to_string());
        Ok(())
    }

    fn make_read_only(&self, target: &Path) -> io::Result<()> {
        let s = self.record(Call::MakeReadOnly(target.into()))?;
        match s.mounts.get(target).is_some_and(|m| !m.is_empty()) {
            true => Ok(()),
            false => Err(errno(libc::EINVAL)),
        }
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut s = self.record(Call::Unmount(target.into()))?;
        let stack = s.mounts.entry(target.into()).or_default();
        if stack.pop().is_none() {
            return Err(errno(libc::EINVAL));
        }
        Ok(())
    }

    fn user_namespace(&self, mapping: &IdMapping) -> io::Result<UserNamespace> {
        drop(self.record(Call::UserNamespace(mapping.clone()))?);
        Ok(UserNamespace::recorded(mapping.clone()))
    }

    fn chown_tree(
        &self,
        root: &Path,
        mapping: &IdMapping,
        _threads: usize,
    ) -> io::Result<TreeStats> {
        let mut s = self.record(Call::ChownTree(root.into(), mapping.clone()))?;
        if !s.dirs.contains(root) {
            return Err(errno(libc::ENOENT));
        }
        let (uid, gid, mode) = s.owners.get(root).copied().unwrap_or((0, 0, 0o755));
        let new_uid = mapping.uid_to_container(uid).unwrap_or(uid);
        let new_gid = mapping.gid_to_container(gid).unwrap_or(gid);
        s.owners.insert(root.into(), (new_uid, new_gid, mode));
        Ok(TreeStats {
            entries: 1,
            changed: u64::from((new_uid, new_gid) != (uid, gid)),
        })
    }

    fn relabel_tree(&self, root: &Path, context: &str, _threads: usize) -> io::Result<TreeStats> {
        drop(self.record(Call::RelabelTree(root.into(), context.to_string()))?);
        Ok(TreeStats {
            entries: 1,
            changed: 1,
        })
    }

    fn selinux_enabled(&self) -> bool {
        self.lock().selinux
    }

    /// A path under no simulated mount lies in the host's root
    /// filesystem, device `0:1` like every recorded mount.
    fn mount_containing(&self, path: &Path) -> io::Result<MountEntry> {
        let table = self.mount_table()?;
        Ok(match crate::containing_mount(&table, path) {
            Some(m) => m.clone(),
            None => MountEntry {
                mount_id: 1,
                parent_id: 1,
                device: "0:1".into(),
                root: "/".into(),
                mount_point: "/".into(),
                read_only: false,
                fs_type: "recorded".into(),
                source: "/".into(),
            },
        })
    }

    fn mount_table(&self) -> io::Result<Vec<MountEntry>> {
        let s = self.lock();
        let mut id = 100;
        let mut out = Vec::new();
        for (target, stack) in &s.mounts {
            for source in stack {
                id += 1;
                // The source stands for the root: binds of one mount share
                // it. A device node's bind shows as the kernel shows it.
                let (fs_type, root) = match source.strip_prefix("/dev") {
                    Some(node) => ("devtmpfs", node.into()),
                    None => ("recorded", source.into()),
                };
                out.push(MountEntry {
                    mount_id: id,
                    parent_id: 1,
                    device: "0:1".into(),
                    root,
                    mount_point: target.clone(),
                    read_only: false,
                    fs_type: fs_type.into(),
                    source: source.clone(),
                });
            }
        }
        Ok(out)
    }

    fn create_image(&self, path: &Path, size: u64) -> io::Result<()> {
        let mut s = self.record(Call::CreateImage(path.into(), size))?;
        if s.files.contains_key(path) {
            return Err(errno(libc::EEXIST));
        }
        s.files.insert(path.into(), size);
        Ok(())
    }

    fn grow_image(&self, path: &Path, size: u64) -> io::Result<()> {
        let mut s = self.record(Call::GrowImage(path.into(), size))?;
        let len = s.files.get_mut(path).ok_or_else(|| errno(libc::ENOENT))?;
        *len = (*len).max(size);
        Ok(())
    }

    fn create_file(&self, path: &Path, _mode: u32) -> io::Result<()> {
        let mut s = self.record(Call::CreateFile(path.into()))?;
        if s.dirs.contains(path) || s.files.contains_key(path) {
            return Err(errno(libc::EEXIST));
        }
        s.files.insert(path.into(), 0);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.record(Call::RemoveFile(path.into()))?;
        s.files
            .remove(path)
            .map(drop)
            .ok_or_else(|| errno(libc::ENOENT))
    }

    fn copy_image(
        &self,
        src: &Path,
        dst: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<CopyMethod> {
        let mut s = self.record(Call::CopyImage(src.into(), dst.into()))?;
        let len = *s.files.get(src).ok_or_else(|| errno(libc::ENOENT))?;
        if s.files.contains_key(dst) {
            return Err(errno(libc::EEXIST));
        }
        s.files.insert(dst.into(), len);
        progress(len, len);
        Ok(CopyMethod::SparseCopy)
    }

    fn attach_loop(&self, image: &Path, read_only: bool) -> io::Result<LoopDevice> {
        let mut s = self.record(Call::AttachLoop {
            image: image.into(),
            read_only,
        })?;
        if !s.files.contains_key(image) {
            return Err(errno(libc::ENOENT));
        }
        s.loops += 1;
        Ok(LoopDevice {
            path: format!("/dev/loop{}", s.loops - 1).into(),
            direct_io: true,
            _fd: None,
        })
    }

    fn keep_loop(&self, device: &LoopDevice) -> io::Result<()> {
        drop(self.record(Call::KeepLoop(device.path.clone()))?);
        Ok(())
    }

    fn detach_loop(&self, device: &Path) -> io::Result<()> {
        drop(self.record(Call::DetachLoop(device.into()))?);
        Ok(())
    }

    fn loop_device_of(&self, _image: &Path) -> io::Result<Option<PathBuf>> {
        Ok(None)
    }

    /// A simulated file takes the blocks of its length once preallocated,
    /// none before.
    fn allocated_bytes(&self, path: &Path) -> io::Result<u64> {
        let s = self.lock();
        match s.files.get(path) {
            Some(_) => Ok(s.preallocated.get(path).copied().unwrap_or(0)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn preallocate(&self, path: &Path, size: u64) -> io::Result<()> {
        let mut s = self.record(Call::Preallocate(path.into(), size))?;
        if !s.files.contains_key(path) {
            return Err(errno(libc::ENOENT));
        }
        s.preallocated.insert(path.into(), size);
        Ok(())
    }

    /// Loop devices are not tied to their images here.
    fn loop_devices_under(&self, _dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn refresh_loop(&self, device: &Path) -> io::Result<()> {
        drop(self.record(Call::RefreshLoop(device.into()))?);
        Ok(())
    }

    fn mount_device(
        &self,
        device: &Path,
        fs_type: &str,
        options: &[String],
        target: &Path,
        idmap: Option<&UserNamespace>,
    ) -> io::Result<()> {
        let mut s = self.record(Call::MountDevice {
            device: device.into(),
            fs_type: fs_type.into(),
            options: options.to_vec(),
            target: target.into(),
            idmap: idmap.map(|u| u.mapping.clone()),
        })?;
        if !s.dirs.contains(target) {
            return Err(errno(libc::ENOENT));
        }
        let source = device.display().to_string();
        s.mounts.entry(target.into()).or_default().push(source);
        Ok(())
    }

    fn inspect_device(
        &self,
        device: &Path,
        _fs_type: &str,
        _options: &[String],
    ) -> io::Result<FsInfo> {
        drop(self.record(Call::InspectDevice(device.into()))?);
        Ok(FsInfo {
            root_uid: 0,
            root_gid: 0,
            usage: Usage::default(),
        })
    }

    fn fs_usage(&self, _path: &Path) -> io::Result<Usage> {
        // A simulated filesystem of 1 TiB, all of it free.
        Ok(Usage {
            capacity_bytes: 1 << 40,
            available_bytes: 1 << 40,
            ..Usage::default()
        })
    }

    fn freeze(&self, mountpoint: &Path, frozen: bool) -> io::Result<()> {
        drop(self.record(Call::Freeze(mountpoint.into(), frozen))?);
        Ok(())
    }

    fn run_tool(&self, program: &str, args: &[String], _ok: &[i32]) -> io::Result<()> {
        drop(self.record(Call::RunTool(program.into(), args.to_vec()))?);
        Ok(())
    }

    fn has_capability(&self, _cap: u32) -> bool {
        true
    }

    fn supports_subvolumes(&self, _dir: &Path) -> io::Result<bool> {
        Ok(self.lock().subvolumes_supported)
    }

    fn is_subvolume(&self, path: &Path) -> io::Result<bool> {
        Ok(self.lock().subvolumes.contains_key(path))
    }

    fn create_subvolume(&self, path: &Path) -> io::Result<()> {
        let mut s = self.record(Call::CreateSubvolume(path.into()))?;
        if !s.subvolumes_supported {
            return Err(errno(libc::ENOTTY));
        }
        if !s.dirs.insert(path.into()) {
            return Err(errno(libc::EEXIST));
        }
        s.subvolumes.insert(path.into(), None);
        Ok(())
    }

    fn snapshot_subvolume(&self, src: &Path, dst: &Path, read_only: bool) -> io::Result<()> {
        let mut s = self.record(Call::SnapshotSubvolume {
            src: src.into(),
            dst: dst.into(),
            read_only,
        })?;
        if !s.subvolumes.contains_key(src) {
            return Err(errno(libc::EINVAL));
        }
        if !s.dirs.insert(dst.into()) {
            return Err(errno(libc::EEXIST));
        }
        s.subvolumes.insert(dst.into(), None);
        Ok(())
    }

    fn delete_subvolume(&self, path: &Path) -> io::Result<()> {
        let mut s = self.record(Call::DeleteSubvolume(path.into()))?;
        if s.subvolumes.remove(path).is_none() {
            return Err(errno(libc::ENOENT));
        }
        s.dirs.remove(path);
        Ok(())
    }

    fn limit_subvolume(&self, path: &Path, bytes: u64) -> io::Result<()> {
        let mut s = self.record(Call::LimitSubvolume(path.into(), bytes))?;
        match s.subvolumes.get_mut(path) {
            Some(limit) => {
                *limit = Some(bytes);
                Ok(())
            }
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn subvolume_usage(&self, path: &Path) -> io::Result<Usage> {
        match self.lock().subvolumes.get(path) {
            Some(limit) => Ok(Usage {
                capacity_bytes: limit.unwrap_or(0),
                available_bytes: limit.unwrap_or(0),
                ..Usage::default()
            }),
            None => Err(errno(libc::ENOENT)),
        }
    }
}
