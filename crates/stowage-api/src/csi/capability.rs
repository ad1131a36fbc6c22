//! Volume capabilities and capacity ranges: what a CO asks for, checked
//! against what Stowage can give.

use stowage_core::{AccessMode, MountAttrs};
use tonic::Status;

use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::{CapacityRange, VolumeCapability};

/// Smallest unit Stowage sizes volumes in.
const MIB: u64 = 1 << 20;
/// The size of a volume whose request gives no capacity.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// A capability Stowage can serve, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The Stowage mode that serves the CSI mode.
    pub mode: AccessMode,
    /// Only one node may use the volume at a time.
    pub exclusive: bool,
    /// The mode lets no one write.
    pub read_only: bool,
    /// The volume is used as a raw block device, not a filesystem.
    pub block: bool,
    /// The filesystem the CO asked for, if any.
    pub fs_type: Option<String>,
    pub attrs: MountAttrs,
    /// The group the volume is to be presented to (Kubernetes' fsGroup).
    pub mount_group: Option<u32>,
}

/// Parses a capability, refusing what Stowage cannot serve with the reason.
pub fn parse(cap: &VolumeCapability) -> Result<Access, String> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| m.mode())
        .unwrap_or(Mode::Unknown);
    let (mode, read_only) = match mode {
        Mode::Unknown => return Err("access mode is required".into()),
        Mode::SingleNodeWriter | Mode::SingleNodeMultiWriter => (AccessMode::Rwo, false),
        Mode::SingleNodeSingleWriter => (AccessMode::Rwop, false),
        Mode::SingleNodeReaderOnly => (AccessMode::Rwo, true),
        Mode::MultiNodeReaderOnly => (AccessMode::Rox, true),
        Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter => (AccessMode::Rwx, false),
    };
    let exclusive = mode.exclusive();
    let mount = match &cap.access_type {
        Some(AccessType::Mount(m)) => m,
        Some(AccessType::Block(_)) => {
            return Ok(Access {
                mode,
                exclusive,
                read_only,
                block: true,
                fs_type: None,
                attrs: MountAttrs {
                    read_only,
                    ..MountAttrs::default()
                },
                mount_group: None,
            })
        }
        None => return Err("access type (mount or block) is required".into()),
    };
    let mount_group = match mount.volume_mount_group.as_str() {
        "" => None,
        g => Some(
            g.parse::<u32>()
                .ok()
                .filter(|g| *g != u32::MAX)
                .ok_or_else(|| format!("volume_mount_group {g:?} is not a numeric group id"))?,
        ),
    };
    let mut attrs = mount_attrs(&mount.mount_flags)?;
    attrs.read_only |= read_only;
    Ok(Access {
        mode,
        exclusive,
        read_only,
        block: false,
        fs_type: (!mount.fs_type.is_empty()).then(|| mount.fs_type.clone()),
        attrs,
        mount_group,
    })
}

/// The mode of a volume made to serve every one of `access`: many nodes
/// if any asks for many, read-only if none writes, one consumer if every
/// one asks for one.
pub fn mode_for(access: &[Access]) -> AccessMode {
    let many = access.iter().any(|a| !a.exclusive);
    let writes = access.iter().any(|a| !a.read_only);
    match (many, writes) {
        (true, true) => AccessMode::Rwx,
        (true, false) => AccessMode::Rox,
        _ if access.iter().all(|a| a.mode == AccessMode::Rwop) => AccessMode::Rwop,
        _ => AccessMode::Rwo,
    }
}

/// Why a volume of mode `volume` cannot serve `a`, if it cannot.
pub fn refusal(volume: AccessMode, a: &Access) -> Option<String> {
    let served = match volume {
        AccessMode::Rwx => true,
        AccessMode::Rox => a.read_only,
        AccessMode::Rwo | AccessMode::Rwop => a.exclusive,
    };
    (!served).then(|| {
        format!(
            "the volume has access mode {}, which cannot serve {} (Stowage {})",
            volume.explained(),
            if a.read_only {
                "read-only use"
            } else {
                "writes"
            },
            a.mode
        )
    })
}

/// Parses every capability of a request; at least one is required.
pub fn parse_all(caps: &[VolumeCapability]) -> Result<Vec<Access>, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities are required"));
    }
    caps.iter()
        .map(|c| parse(c).map_err(Status::invalid_argument))
        .collect()
}

/// Parses the one capability of a node or publish request.
pub fn parse_one(cap: Option<&VolumeCapability>) -> Result<Access, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    parse(cap).map_err(Status::invalid_argument)
}

/// Mount flags become attributes of the published bind mount. Only these
/// are accepted: anything else would reach a mount call as caller text.
fn mount_attrs(flags: &[String]) -> Result<MountAttrs, String> {
    let mut attrs = MountAttrs::default();
    for flag in flags {
        match flag.as_str() {
            "ro" => attrs.read_only = true,
            "rw" | "defaults" => {}
            "noexec" => attrs.no_exec = true,
            "nosuid" => attrs.no_suid = true,
            "nodev" => attrs.no_dev = true,
            "noatime" => attrs.no_atime = true,
            other => {
                return Err(format!(
                    "mount flag {other:?} is not supported; \
                     use ro, rw, noexec, nosuid, nodev or noatime"
                ))
            }
        }
    }
    Ok(attrs)
}

/// The size to make a volume for `range`: the required bytes rounded up to
/// a MiB (or [`DEFAULT_SIZE`] when none is required), within the limit.
pub fn size_for(range: Option<&CapacityRange>) -> Result<u64, Status> {
    let (required, limit) = bounds(range)?;
    let wanted = match required {
        0 => DEFAULT_SIZE.min(if limit == 0 { u64::MAX } else { limit }),
        n => n,
    };
    let rounded = wanted.div_ceil(MIB) * MIB;
    if limit == 0 || rounded <= limit {
        return Ok(rounded);
    }
    if wanted <= limit {
        // Rounding would pass the limit: the exact request still fits.
        return Ok(wanted);
    }
    Err(Status::out_of_range(format!(
        "no size of at least {required} and at most {limit} bytes is possible"
    )))
}

/// Whether `size` lies within `range`.
pub fn fits(size: u64, range: Option<&CapacityRange>) -> Result<bool, Status> {
    let (required, limit) = bounds(range)?;
    Ok(size >= required && (limit == 0 || size <= limit))
}

/// `(required, limit)` of a range; 0 means unset.
pub fn bounds(range: Option<&CapacityRange>) -> Result<(u64, u64), Status> {
    let Some(r) = range else {
        return Ok((0, 0));
    };
    let (Ok(required), Ok(limit)) = (
        u64::try_from(r.required_bytes),
        u64::try_from(r.limit_bytes),
    ) else {
        return Err(Status::invalid_argument("capacity must not be negative"));
    };
    if limit != 0 && required > limit {
        return Err(Status::invalid_argument(format!(
            "required_bytes {required} is more than limit_bytes {limit}"
        )));
    }
    Ok((required, limit))
}

#[cfg(test)]
mod tests {
    use super::super::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use super::*;

    fn mount(mode: Mode, flags: &[&str]) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: String::new(),
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn modes_decide_exclusivity_and_read_only() {
        let a = parse(&mount(Mode::SingleNodeWriter, &[])).unwrap();
        assert!(a.exclusive && !a.read_only && !a.attrs.read_only);
        let a = parse(&mount(Mode::MultiNodeReaderOnly, &[])).unwrap();
        assert!(!a.exclusive && a.read_only && a.attrs.read_only);
        let a = parse(&mount(Mode::MultiNodeMultiWriter, &["noexec", "ro"])).unwrap();
        assert!(!a.exclusive && !a.read_only && a.attrs.read_only && a.attrs.no_exec);
        assert!(parse(&mount(Mode::Unknown, &[])).is_err());
    }

    #[test]
    fn a_mount_group_is_a_numeric_gid() {
        let mut cap = mount(Mode::SingleNodeWriter, &[]);
        let group = |cap: &mut VolumeCapability, g: &str| {
            if let Some(AccessType::Mount(m)) = &mut cap.access_type {
                m.volume_mount_group = g.into();
            }
            parse(cap)
        };
        assert_eq!(group(&mut cap, "2000").unwrap().mount_group, Some(2000));
        assert_eq!(group(&mut cap, "").unwrap().mount_group, None);
        for bad in ["wheel", "-1", "4294967295", "1,2"] {
            assert!(group(&mut cap, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_unknown_flags_and_missing_types() {
        let err = parse(&mount(Mode::SingleNodeWriter, &["bind,suid"])).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        let block = VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeReaderOnly as i32,
            }),
        };
        let a = parse(&block).unwrap();
        assert!(a.block && a.exclusive && a.read_only && a.attrs.read_only);
        assert_eq!(a.fs_type, None);
        let none = VolumeCapability {
            access_type: None,
            ..block
        };
        assert!(parse(&none).is_err());
        assert_eq!(
            parse_all(&[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn sizes_honour_the_range_or_fail() {
        let range = |required, limit| CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        };
        assert_eq!(size_for(None).unwrap(), DEFAULT_SIZE);
        assert_eq!(size_for(Some(&range(1, 0))).unwrap(), MIB);
        assert_eq!(
            size_for(Some(&range(0, 100 * MIB as i64))).unwrap(),
            100 * MIB
        );
        assert_eq!(size_for(Some(&range(10, 20))).unwrap(), 10);
        assert_eq!(
            size_for(Some(&range(-1, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            size_for(Some(&range(30, 20))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(fits(MIB, Some(&range(1, 0))).unwrap());
        assert!(!fits(MIB, Some(&range(2 * MIB as i64, 0))).unwrap());
    }
}
