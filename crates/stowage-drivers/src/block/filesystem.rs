//! The filesystem step of a block volume: making, mounting and growing a
//! filesystem on a device, whatever attached the device.

use std::path::Path;

use stowage_core::options::{self, Options};
use stowage_core::{Error, Result};
use stowage_sys::Sys;

/// Options that go to `mkfs`, each checked and rewritten by Stowage: no
/// caller text reaches the command line.
pub(super) const MKFS_OPTIONS: &[&str] = &["inode-ratio", "inode-size", "reserved"];

/// Every filesystem is made with 4 KiB blocks and sectors, matching the
/// loop device's logical block size (a smaller filesystem block would not
/// mount on it).
const BLOCK_SIZE: &str = "4096";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    pub(super) fn from_options(opts: &Options) -> Result<Self> {
        match opts.get("fs").map(String::as_str) {
            None | Some("ext4") => Ok(Filesystem::Ext4),
            Some("xfs") => Ok(Filesystem::Xfs),
            Some(other) => Err(Error::invalid_option("fs", other, "supported: ext4, xfs")),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// The smallest volume `mkfs` makes (xfsprogs refuses under 300 MiB).
    pub(super) fn min_size(self) -> u64 {
        match self {
            Filesystem::Ext4 => 16 << 20,
            Filesystem::Xfs => 300 << 20,
        }
    }

    /// The `mkfs` command line for `device` with the volume's options.
    pub(super) fn mkfs_command(
        self,
        device: &Path,
        opts: &Options,
    ) -> Result<(String, Vec<String>)> {
        let mut args: Vec<String> = Vec::new();
        let ratio = bounded(opts, "inode-ratio", 1024, 64 << 20)?;
        let inode_size = bounded(opts, "inode-size", 128, 2048)?;
        let reserved = bounded(opts, "reserved", 0, 50)?;
        if let Some(size) = inode_size {
            if !size.is_power_of_two() {
                return Err(Error::invalid_option(
                    "inode-size",
                    &size.to_string(),
                    "must be a power of two",
                ));
            }
        }
        match self {
            Filesystem::Ext4 => {
                args.extend(["-q", "-F", "-b", BLOCK_SIZE].map(String::from));
                for (flag, value) in [("-i", ratio), ("-I", inode_size), ("-m", reserved)] {
                    if let Some(v) = value {
                        args.extend([flag.to_string(), v.to_string()]);
                    }
                }
            }
            Filesystem::Xfs => {
                for (key, value) in [("inode-ratio", ratio), ("reserved", reserved)] {
                    if value.is_some() {
                        return Err(Error::invalid_option(
                            key,
                            &opts[key],
                            "is an ext4 option; xfs allocates inodes dynamically",
                        ));
                    }
                }
                args.extend(["-q", "-f", "-b"].map(String::from));
                args.push(format!("size={BLOCK_SIZE}"));
                args.push("-s".into());
                args.push(format!("size={BLOCK_SIZE}"));
                if let Some(v) = inode_size {
                    if v < 256 {
                        return Err(Error::invalid_option(
                            "inode-size",
                            &v.to_string(),
                            "xfs inodes are 256 to 2048 bytes",
                        ));
                    }
                    args.extend(["-i".to_string(), format!("size={v}")]);
                }
            }
        }
        args.push(device.display().to_string());
        Ok((format!("mkfs.{}", self.name()), args))
    }

    /// Mount options. Clones of an XFS volume share its UUID, which XFS
    /// refuses to mount twice unless told.
    pub(super) fn mount_options(self, context: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Filesystem::Xfs => out.push("nouuid".to_string()),
            // A write the device fails (its image found no space on the
            // data root) stops every later write, instead of leaving the
            // filesystem to carry on over the hole (ext4's default).
            // XFS shuts itself down on such errors already.
            Filesystem::Ext4 => out.push("errors=remount-ro".to_string()),
        }
        if let Some(context) = context {
            out.push(format!("context={context}"));
        }
        out
    }

    /// Refuses a grow that cannot work here, before anything changes:
    /// ext4 grows online only with CAP_SYS_RESOURCE.
    pub(super) fn check_grow(self, sys: &dyn Sys, online: bool) -> Result<()> {
        if self == Filesystem::Ext4 && online && !sys.has_capability(CAP_SYS_RESOURCE) {
            return Err(Error::InvalidRequest(
                "growing a mounted ext4 volume needs CAP_SYS_RESOURCE, which this daemon \
                 lacks; grow it while no container uses it, or use fs=xfs"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Grows the filesystem mounted at `mountpoint` from `device` to the
    /// device's size, online.
    pub(super) fn grow_online(self, sys: &dyn Sys, device: &Path, mountpoint: &Path) -> Result<()> {
        let (program, target) = match self {
            // resize2fs finds the mount of the device and resizes online.
            Filesystem::Ext4 => ("resize2fs", device),
            Filesystem::Xfs => ("xfs_growfs", mountpoint),
        };
        sys.run_tool(program, &[target.display().to_string()], &[0])
            .map_err(Error::io("grow filesystem on", device))
    }

    /// Grows an unmounted ext4 filesystem on `image` to the image's size.
    /// XFS grows only mounted; the caller mounts it.
    pub(super) fn grow_offline(self, sys: &dyn Sys, image: &Path) -> Result<bool> {
        if self != Filesystem::Ext4 {
            return Ok(false);
        }
        let image_arg = image.display().to_string();
        // resize2fs insists on a fresh check; 1 means "errors corrected".
        sys.run_tool(
            "e2fsck",
            &["-f".into(), "-p".into(), image_arg.clone()],
            &[0, 1],
        )
        .map_err(Error::io("check filesystem on", image))?;
        sys.run_tool("resize2fs", &[image_arg], &[0])
            .map_err(Error::io("grow filesystem on", image))?;
        Ok(true)
    }
}

/// capabilities(7): CAP_SYS_RESOURCE, which ext4's online resize needs.
const CAP_SYS_RESOURCE: u32 = 24;

/// An optional integer option within `[min, max]`.
fn bounded(opts: &Options, key: &str, min: u64, max: u64) -> Result<Option<u64>> {
    let Some(value) = opts.get(key) else {
        return Ok(None);
    };
    let n = options::parse_size(key, value).ok().or_else(|| {
        // `reserved=0` is valid, but parse_size only takes positive sizes.
        (value == "0").then_some(0)
    });
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(Error::invalid_option(
            key,
            value,
            format!("expected a number from {min} to {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use stowage_core::options::from_pairs as opts;

    #[test]
    fn mkfs_options_are_rewritten_never_passed_through() {
        let dev = Path::new("/dev/loop7");
        let (prog, args) = Filesystem::Ext4
            .mkfs_command(dev, &opts(&[("inode-ratio", "16384"), ("reserved", "0")]))
            .unwrap();
        assert_eq!(prog, "mkfs.ext4");
        assert_eq!(
            args,
            [
                "-q",
                "-F",
                "-b",
                "4096",
                "-i",
                "16384",
                "-m",
                "0",
                "/dev/loop7"
            ]
        );
        let (prog, args) = Filesystem::Xfs
            .mkfs_command(dev, &opts(&[("inode-size", "512")]))
            .unwrap();
        assert_eq!(prog, "mkfs.xfs");
        assert_eq!(
            args,
            [
                "-q",
                "-f",
                "-b",
                "size=4096",
                "-s",
                "size=4096",
                "-i",
                "size=512",
                "/dev/loop7"
            ]
        );
        for bad in [
            ("inode-ratio", "16384 -O ^has_journal"),
            ("inode-ratio", "-E"),
            ("inode-ratio", "10"),
            ("inode-size", "300"),
            ("reserved", "51"),
            ("reserved", "5;reboot"),
        ] {
            assert!(
                Filesystem::Ext4.mkfs_command(dev, &opts(&[bad])).is_err(),
                "{bad:?}"
            );
        }
        assert!(Filesystem::Xfs
            .mkfs_command(dev, &opts(&[("inode-ratio", "16384")]))
            .is_err());
        assert!(Filesystem::from_options(&opts(&[("fs", "btrfs")])).is_err());
    }
}
