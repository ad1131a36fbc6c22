//! ID mappings and the user namespaces that carry them into idmapped
//! mounts.
//!
//! A range maps on-disk ids to the ids a consumer sees: the kernel's
//! `uid_map` line `inside outside count` makes files owned by `inside` on
//! disk appear as `outside` through a mount idmapped with that namespace,
//! and writes by `outside` land on disk as `inside` (measured here; see
//! DESIGN.md section 5). So `disk` is the namespace's inside, `container`
//! its outside.

use std::fmt;
use std::os::fd::OwnedFd;

/// `count` consecutive ids starting at `disk` on disk, seen as `container`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdRange {
    pub disk: u32,
    pub container: u32,
    pub count: u32,
}

impl IdRange {
    /// The consumer's view of an on-disk id, if this range covers it.
    pub fn to_container(&self, disk: u32) -> Option<u32> {
        let offset = disk.checked_sub(self.disk)?;
        (offset < self.count).then(|| self.container + offset)
    }
}

/// The uid and gid ranges of one mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMapping {
    /// The text to write to `/proc/PID/uid_map` or `gid_map`.
    pub fn map_file(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.disk, r.container, r.count))
            .collect()
    }

    /// An on-disk uid as the consumer sees it (`None`: unmapped).
    pub fn uid_to_container(&self, disk: u32) -> Option<u32> {
        self.uids.iter().find_map(|r| r.to_container(disk))
    }

    /// An on-disk gid as the consumer sees it (`None`: unmapped).
    pub fn gid_to_container(&self, disk: u32) -> Option<u32> {
        self.gids.iter().find_map(|r| r.to_container(disk))
    }
}

impl fmt::Display for IdMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |rs: &[IdRange]| {
            rs.iter()
                .map(|r| format!("{}:{}:{}", r.disk, r.container, r.count))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "uids {} gids {}", list(&self.uids), list(&self.gids))
    }
}

/// A user namespace holding one mapping. It lives as long as this handle:
/// the descriptor keeps it alive after the process that made it is gone.
#[derive(Debug)]
pub struct UserNamespace {
    /// `None` in the recording implementation.
    pub(crate) fd: Option<OwnedFd>,
    pub mapping: IdMapping,
}

impl UserNamespace {
    /// A namespace handle without a kernel object, for recorded calls.
    pub fn recorded(mapping: IdMapping) -> Self {
        UserNamespace { fd: None, mapping }
    }
}
