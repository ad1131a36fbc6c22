//! `block`: a sparse image file under the data root, attached to a loop
//! device and formatted, mounted while the volume has consumers.
//!
//! Two steps, kept apart so that other ways of getting a device (network
//! block devices, cloud disks) can reuse the second: the device step
//! (image file and loop device, here) and the filesystem step
//! ([`filesystem`]). Loop devices clear themselves once unmounted, and a
//! device attached by a process that dies before mounting it clears
//! itself too, so a crash leaks none.

mod filesystem;
pub mod nbd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stowage_core::options::{self, check_known, Options};
use stowage_core::{
    DataIdentity, Driver, Error, Layout, MountSpec, Progress, Result, SnapshotRecord, Source,
    VolumeRecord,
};
use stowage_sys::{exists_ok, missing_ok, CopyMethod, FsInfo, LoopDevice, Sys, Usage};
use tracing::warn;

use filesystem::{Filesystem, MKFS_OPTIONS};

const OWN_OPTIONS: &[&str] = &["size", "fs", "provisioning"];
const EINVAL: i32 = libc::EINVAL;
/// A device in raw use has no filesystem Stowage can freeze, so a copy of
/// it could not be made consistent.
const RAW_COPY_ADVICE: &str = "it cannot be copied consistently: unstage it first";
/// How long an image may stay attached after its last unmount.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Block {
    sys: Arc<dyn Sys>,
    layout: Layout,
}

impl Block {
    pub fn new(sys: Arc<dyn Sys>, layout: Layout) -> Self {
        Block { sys, layout }
    }

    fn attach(&self, image: &Path, read_only: bool) -> Result<LoopDevice> {
        self.wait_released(image)?;
        self.sys
            .attach_loop(image, read_only)
            .map_err(Error::io("attach a loop device to", image))
    }

    /// Waits until no loop device backs `image`. After Stowage's (lazy)
    /// unmount, the filesystem lives on until every other mount namespace
    /// an engine copied the mount into lets go of it; until then the image
    /// is neither consistent on disk nor safe to attach again.
    fn wait_released(&self, image: &Path) -> Result<()> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            let device = self
                .sys
                .loop_device_of(image)
                .map_err(Error::io("look for the loop device of", image))?;
            let Some(device) = device else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(Error::io("use", image)(std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!(
                        "still attached as {}: its filesystem is still mounted outside \
                         Stowage; retry once the last user has gone",
                        device.display()
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The image a volume's device is made from: on a node that attached
    /// it over the network the file the transport shows, else its own
    /// image file (a node never holds both: the home node uses its image
    /// directly).
    fn image_of(&self, volume: &VolumeRecord) -> PathBuf {
        let attached = self.layout.attached_image(&volume.id);
        match self.sys.inspect_nofollow(&attached) {
            Ok(_) => attached,
            Err(_) => self.layout.image(&volume.id),
        }
    }

    /// Reads the root owner and usage of a volume that is not mounted,
    /// through a private mount that is attached nowhere.
    fn inspect_unmounted(&self, volume: &VolumeRecord) -> Result<FsInfo> {
        let fs = filesystem(volume)?;
        let device = self.attach(&self.image_of(volume), false)?;
        self.sys
            .inspect_device(&device.path, fs.name(), &fs.mount_options(None))
            .map_err(Error::io("inspect", &device.path))
    }

    /// The device the filesystem mounted at `mountpoint` comes from.
    fn device_at(&self, mountpoint: &Path) -> Result<PathBuf> {
        self.sys
            .mount_at(mountpoint)
            .map_err(Error::io("look up the mount at", mountpoint))?
            .map(|m| PathBuf::from(m.source))
            .ok_or_else(|| {
                Error::io("find the device mounted at", mountpoint)(
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                )
            })
    }

    /// Copies an image to `dst`, freezing the filesystem mounted at
    /// `mounted` for the copy so that it is consistent.
    fn copy(
        &self,
        src: &Path,
        mounted: Option<&Path>,
        dst: &Path,
        progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        match mounted {
            Some(mp) => self
                .sys
                .freeze(mp, true)
                .map_err(Error::io("freeze filesystem at", mp))?,
            None => self.wait_released(src)?,
        }
        let copied = self
            .sys
            .copy_image(src, dst, progress)
            .map_err(Error::io("copy image", src));
        if let Some(mp) = mounted {
            if let Err(e) = self.sys.freeze(mp, false) {
                // Reconcile thaws it at the next start at the latest.
                warn!(path = %mp.display(), error = %e, "cannot thaw filesystem");
            }
        }
        copied
    }

    /// Allocates all of a thick volume's image, up to `size` bytes.
    fn preallocate_if_thick(&self, volume: &VolumeRecord, image: &Path, size: u64) -> Result<()> {
        if !thick(&volume.options)? {
            return Ok(());
        }
        self.sys
            .preallocate(image, size)
            .map_err(Error::io("allocate image", image))
    }
}

/// Whether an image's blocks are allocated when it is made (`thick`: its
/// writers never need space from the data root) or as they are written
/// (`thin`, the default).
fn thick(opts: &Options) -> Result<bool> {
    match opts.get("provisioning").map(String::as_str) {
        None | Some("thin") => Ok(false),
        Some("thick") => Ok(true),
        Some(other) => Err(Error::invalid_option(
            "provisioning",
            other,
            "expected thin (blocks taken as written) or thick (all allocated at create)",
        )),
    }
}

fn filesystem(volume: &VolumeRecord) -> Result<Filesystem> {
    Filesystem::from_options(&volume.options)
}

impl Driver for Block {
    fn name(&self) -> &'static str {
        "block"
    }

    fn validate(&self, opts: &Options) -> Result<()> {
        let valid: Vec<&'static str> = OWN_OPTIONS.iter().chain(MKFS_OPTIONS).copied().collect();
        check_known(self.name(), opts, &valid)?;
        let size = options::size(opts, "size")?.ok_or_else(|| Error::MissingOption {
            driver: self.name().into(),
            option: "size (for example -o size=10G)".into(),
        })?;
        thick(opts)?;
        let fs = Filesystem::from_options(opts)?;
        if size < fs.min_size() {
            return Err(Error::invalid_option(
                "size",
                &opts["size"],
                format!(
                    "{} volumes need at least {}",
                    fs.name(),
                    options::format_size(fs.min_size())
                ),
            ));
        }
        if size % 4096 != 0 {
            return Err(Error::invalid_option(
                "size",
                &opts["size"],
                "must be a multiple of 4K",
            ));
        }
        fs.mkfs_command(Path::new("/dev/null"), opts).map(drop)
    }

    fn provisions_storage(&self) -> bool {
        true
    }

    fn requested_size(&self, opts: &Options) -> Result<Option<u64>> {
        options::size(opts, "size")
    }

    fn create(&self, volume: &VolumeRecord) -> Result<()> {
        let size = volume.size_bytes.ok_or_else(|| Error::MissingOption {
            driver: self.name().into(),
            option: "size".into(),
        })?;
        // The images directory is made at start, by reconcile.
        let image = self.layout.image(&volume.id);
        self.sys
            .create_image(&image, size)
            .map_err(Error::io("create image", &image))?;
        // mkfs writes the image file directly: no device is attached for
        // it, so a crash here leaves only the file, which rollback removes.
        let (program, args) = filesystem(volume)?.mkfs_command(&image, &volume.options)?;
        self.sys
            .run_tool(&program, &args, &[0])
            .map_err(Error::io("make filesystem on", &image))?;
        // After mkfs, which discards (punches out) every block it does not
        // write.
        self.preallocate_if_thick(volume, &image, size)
    }

    fn remove(&self, volume: &VolumeRecord) -> Result<()> {
        let image = self.layout.image(&volume.id);
        missing_ok(self.sys.remove_file(&image)).map_err(Error::io("remove", &image))
    }

    fn mount(&self, volume: &VolumeRecord, target: &Path, spec: MountSpec<'_>) -> Result<()> {
        let fs = filesystem(volume)?;
        let device = self.attach(&self.image_of(volume), false)?;
        self.sys
            .mount_device(
                &device.path,
                fs.name(),
                &fs.mount_options(spec.context),
                target,
                spec.idmap,
            )
            .map_err(Error::io("mount", &device.path))
        // The mount now holds the device; dropping our handle leaves it
        // attached until the unmount.
    }

    fn attach_device(&self, volume: &VolumeRecord, read_only: bool) -> Result<PathBuf> {
        let device = self.attach(&self.image_of(volume), read_only)?;
        self.sys
            .keep_loop(&device)
            .map_err(Error::io("keep attached", &device.path))?;
        // Dropping the handle now leaves the device attached.
        Ok(device.path.clone())
    }

    fn network_image(&self, volume: &VolumeRecord) -> Option<PathBuf> {
        Some(self.layout.image(&volume.id))
    }

    fn exports_images(&self) -> bool {
        true
    }

    fn attached_device(&self, volume: &VolumeRecord) -> Result<Option<PathBuf>> {
        let image = self.image_of(volume);
        match self.sys.loop_device_of(&image) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other.map_err(Error::io("look for the loop device of", &image)),
        }
    }

    fn allocated_bytes(&self, volume: &VolumeRecord) -> Result<u64> {
        let image = self.layout.image(&volume.id);
        match self.sys.allocated_bytes(&image) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            other => other.map_err(Error::io("inspect", &image)),
        }
    }

    fn preallocated_bytes(&self, opts: &Options, size: u64) -> Result<u64> {
        Ok(if thick(opts)? { size } else { 0 })
    }

    /// A filesystem mounted from the volume's loop device is its data.
    fn data_identity(&self, volume: &VolumeRecord) -> Result<Option<DataIdentity>> {
        Ok(self
            .attached_device(volume)?
            .map(|d| DataIdentity::Source(d.display().to_string())))
    }

    fn detach_device(&self, volume: &VolumeRecord) -> Result<()> {
        match self.attached_device(volume)? {
            Some(device) => self
                .sys
                .detach_loop(&device)
                .map_err(Error::io("detach", &device)),
            None => Ok(()),
        }
    }

    fn labels_by_mount_option(&self) -> bool {
        true
    }

    fn root_owner(&self, volume: &VolumeRecord) -> Result<(u32, u32)> {
        let info = self.inspect_unmounted(volume)?;
        Ok((info.root_uid, info.root_gid))
    }

    fn recover(&self, _volume: &VolumeRecord, mounted_at: &Path) -> Result<()> {
        // A snapshot interrupted by a crash may have left it frozen.
        match self.sys.freeze(mounted_at, false) {
            Ok(()) => {
                warn!(path = %mounted_at.display(), "thawed a filesystem left frozen");
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(EINVAL) => Ok(()),
            Err(e) => Err(Error::io("thaw", mounted_at)(e)),
        }
    }

    fn resize(&self, volume: &VolumeRecord, size: u64, mounted_at: Option<&Path>) -> Result<()> {
        // In raw use, the filesystem on the device (if any) is its user's
        // to grow; only the device grows here.
        let raw = volume.device.is_some();
        let fs = filesystem(volume)?;
        if !raw {
            fs.check_grow(self.sys.as_ref(), mounted_at.is_some())?;
        }
        let image = self.layout.image(&volume.id);
        self.sys
            .grow_image(&image, size)
            .map_err(Error::io("grow image", &image))?;
        self.preallocate_if_thick(volume, &image, size)?;
        if raw {
            return match self.attached_device(volume)? {
                Some(device) => self
                    .sys
                    .refresh_loop(&device)
                    .map_err(Error::io("refresh capacity of", &device)),
                None => Ok(()),
            };
        }
        if let Some(mp) = mounted_at {
            let device = self.device_at(mp)?;
            self.sys
                .refresh_loop(&device)
                .map_err(Error::io("refresh capacity of", &device))?;
            return fs.grow_online(self.sys.as_ref(), &device, mp);
        }
        if fs.grow_offline(self.sys.as_ref(), &image)? {
            return Ok(());
        }
        // The volume is mounted on its own mountpoint for the time of the
        // grow, without a consumer: if we crash meanwhile, reconcile
        // removes the mount.
        let mp = self.layout.mountpoint(&volume.id);
        exists_ok(self.sys.create_dir(&mp, 0o700)).map_err(Error::io("create mountpoint", &mp))?;
        let grown = self
            .mount(volume, &mp, MountSpec::default())
            .and_then(|()| {
                let device = self.device_at(&mp)?;
                let grown = fs.grow_online(self.sys.as_ref(), &device, &mp);
                let unmounted = self.sys.unmount(&mp).map_err(Error::io("unmount", &mp));
                grown.and(unmounted)
            });
        let _ = self.sys.remove_dir(&mp);
        grown
    }

    fn usage(&self, volume: &VolumeRecord, mounted_at: Option<&Path>) -> Result<Option<Usage>> {
        if volume.device.is_some() {
            // Its user owns the device's contents; mounting them to look
            // would race with the user's writes.
            return Ok(None);
        }
        if let Some(mp) = mounted_at {
            return self
                .sys
                .fs_usage(mp)
                .map(Some)
                .map_err(Error::io("read usage of", mp));
        }
        Ok(Some(self.inspect_unmounted(volume)?.usage))
    }

    fn snapshot(
        &self,
        volume: &VolumeRecord,
        mounted_at: Option<&Path>,
        snapshot: &SnapshotRecord,
        progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        volume.refuse_raw_use(RAW_COPY_ADVICE)?;
        let dst = self.layout.snapshot(&snapshot.id);
        self.copy(&self.layout.image(&volume.id), mounted_at, &dst, progress)
    }

    fn remove_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let path = self.layout.snapshot(&snapshot.id);
        missing_ok(self.sys.remove_file(&path)).map_err(Error::io("remove", &path))
    }

    fn create_from(
        &self,
        volume: &VolumeRecord,
        source: Source<'_>,
        progress: Progress<'_>,
    ) -> Result<CopyMethod> {
        let dst = self.layout.image(&volume.id);
        let method = match source {
            Source::Snapshot(snap) => {
                self.copy(&self.layout.snapshot(&snap.id), None, &dst, progress)?
            }
            Source::Volume(from, mounted) => {
                from.refuse_raw_use(RAW_COPY_ADVICE)?;
                self.copy(&self.layout.image(&from.id), mounted, &dst, progress)?
            }
        };
        // A copy is as sparse as its source, or shares its blocks: a thick
        // volume gets all of its own.
        if let Some(size) = volume.size_bytes {
            self.preallocate_if_thick(volume, &dst, size)?;
        }
        Ok(method)
    }
}
