//! Space on the data root: what volumes and snapshots have been promised
//! (their sizes), and the rule that keeps those promises.
//!
//! Thin block images and sized subvolumes take their blocks as they are
//! written, so a data root can promise more than it holds, and a full one
//! fails every writer of every thin volume at once. So every size is
//! committed when it is given, snapshots and clones at their full size
//! (they may diverge from what they share), and a create or resize is
//! refused when the committed total would pass what the data root can
//! hold for Stowage (its free space plus what Stowage's images already
//! take, less a reserve kept for the store and for metadata) times the
//! overcommit ratio: 1, no overcommit, unless the operator says more.

use tracing::warn;

use super::VolumeService;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::options::format_size;
use crate::snapshot::SnapshotRecord;
use crate::volume::{SpaceUse, VolumeRecord};

/// The reserve when none is configured: this share of the data root's
/// capacity, at most [`MAX_DEFAULT_RESERVE`].
const DEFAULT_RESERVE_PERCENT: u64 = 5;
const MAX_DEFAULT_RESERVE: u64 = 1 << 30;

/// How far the data root may be promised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpacePolicy {
    /// Committed sizes may reach this multiple of the room Stowage has; at
    /// least 1.
    pub overcommit_ratio: f64,
    /// Bytes kept free for the store and for filesystem metadata; by
    /// default 5% of the data root, at most 1 GiB.
    pub reserve_bytes: Option<u64>,
}

impl Default for SpacePolicy {
    fn default() -> Self {
        SpacePolicy {
            overcommit_ratio: 1.0,
            reserve_bytes: None,
        }
    }
}

impl SpacePolicy {
    fn reserve(&self, capacity: u64) -> u64 {
        self.reserve_bytes
            .unwrap_or_else(|| (capacity / 100 * DEFAULT_RESERVE_PERCENT).min(MAX_DEFAULT_RESERVE))
    }
}

/// What the data root holds for Stowage and what has been promised of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceAccount {
    /// Sizes of every volume and snapshot with storage on the data root.
    pub committed_bytes: u64,
    /// Bytes those images already take.
    pub allocated_bytes: u64,
    pub available_bytes: u64,
    pub reserve_bytes: u64,
    /// How far commitments may go: free space plus allocated, less the
    /// reserve, times the overcommit ratio.
    pub limit_bytes: u64,
}

impl VolumeService {
    /// Sets how far the data root may be promised.
    pub fn with_space_policy(mut self, policy: SpacePolicy) -> Self {
        self.space = policy;
        self
    }

    /// The data root's commitments now.
    pub fn space_account(&self) -> Result<SpaceAccount> {
        let root = &self.layout.data_root;
        let usage = self
            .sys
            .fs_usage(root)
            .map_err(Error::io("read free space of", root))?;
        let (mut committed, mut allocated) = (0u64, 0u64);
        // Only sized volumes are read in full: with 100k volumes, reading
        // every record would cost each sized create a third of a second.
        for name in self.sized_volume_names()? {
            let Some(l) = self.load_record::<VolumeRecord>(&name)? else {
                continue;
            };
            let driver = self.drivers.get(&l.record.driver)?;
            if let (true, Some(size)) = (driver.provisions_storage(), l.record.size_bytes) {
                committed = committed.saturating_add(size);
                allocated = allocated.saturating_add(driver.allocated_bytes(&l.record)?);
            }
        }
        for l in self.list_all::<SnapshotRecord>()?.records {
            let Some(size) = l.record.size_bytes else {
                continue;
            };
            committed = committed.saturating_add(size);
            let path = self.layout.snapshot(&l.record.id);
            allocated = allocated.saturating_add(self.sys.allocated_bytes(&path).unwrap_or(0));
        }
        let reserve = self.space.reserve(usage.capacity_bytes);
        let room = (usage.available_bytes + allocated).saturating_sub(reserve);
        Ok(SpaceAccount {
            committed_bytes: committed,
            allocated_bytes: allocated,
            available_bytes: usage.available_bytes,
            reserve_bytes: reserve,
            limit_bytes: (room as f64 * self.space.overcommit_ratio) as u64,
        })
    }

    /// Refuses to commit `size` more bytes of `driver`'s storage, of which
    /// `writes_now` are written at once (a thick image, a full copy), where
    /// that would break the data root's promises. Only storage on the data
    /// root takes its space: a driver that keeps none there answers for
    /// itself.
    pub(super) fn check_space(
        &self,
        driver: &dyn Driver,
        size: u64,
        writes_now: u64,
    ) -> Result<()> {
        if !driver.provisions_storage() {
            return Ok(());
        }
        let a = self.space_account()?;
        let root = self.layout.data_root.display();
        if writes_now.saturating_add(a.reserve_bytes) > a.available_bytes {
            return Err(Error::NoSpace(format!(
                "{} to write now and a reserve of {}, but {} free on {root}",
                format_size(writes_now),
                format_size(a.reserve_bytes),
                format_size(a.available_bytes)
            )));
        }
        let after = a.committed_bytes.saturating_add(size);
        if after > a.limit_bytes {
            return Err(Error::NoSpace(format!(
                "{} more would commit {} bytes of {root}, which can hold {} for volumes \
                 ({} free, {} in images, {} kept in reserve, overcommit ratio {}); \
                 remove volumes or snapshots, or allow more with --overcommit-ratio",
                format_size(size),
                after,
                a.limit_bytes,
                a.available_bytes,
                a.allocated_bytes,
                a.reserve_bytes,
                self.space.overcommit_ratio
            )));
        }
        Ok(())
    }
}

impl VolumeService {
    /// What a sized volume takes of the data root, and whether the data
    /// root can still give it the rest; an unsafe one is logged.
    pub(super) fn space_use(&self, record: &VolumeRecord) -> Result<Option<SpaceUse>> {
        let driver = self.drivers.get(&record.driver)?;
        let Some(size) = record.size_bytes.filter(|_| driver.provisions_storage()) else {
            return Ok(None);
        };
        let allocated = driver.allocated_bytes(record)?;
        let unallocated = size.saturating_sub(allocated);
        let root = &self.layout.data_root;
        let free = self.free_space()?;
        let at_risk = (unallocated > free).then(|| {
            format!(
                "may still take {} of the data root, which has {} free: writes past that \
                 fail with I/O errors; free space on {} or move the volume",
                format_size(unallocated),
                format_size(free),
                root.display()
            )
        });
        self.note_risk(record.name.as_str(), at_risk.as_deref());
        Ok(Some(SpaceUse {
            allocated_bytes: allocated,
            unallocated_bytes: unallocated,
            at_risk,
        }))
    }
}

impl VolumeService {
    /// Looks at every sized volume's share of the data root, so that the
    /// log says when one comes to be at risk even if nobody inspects it.
    /// Returns how many are at risk now. Run periodically by the daemon.
    pub fn watch_space(&self) -> Result<usize> {
        let sized = self.sized_volume_names()?;
        self.at_risk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| sized.contains(n));
        let mut at_risk = 0;
        for name in &sized {
            // Gone since the list, or unreadable: nothing to watch.
            let Ok(Some(loaded)) = self.load_record::<VolumeRecord>(name) else {
                continue;
            };
            match self.space_use(&loaded.record) {
                Ok(Some(SpaceUse {
                    at_risk: Some(_), ..
                })) => at_risk += 1,
                Ok(_) => {}
                Err(e) => {
                    warn!(volume = %name, error = %e, "cannot tell whether the volume is at risk")
                }
            }
        }
        Ok(at_risk)
    }

    /// Logs a change in whether volume `name` is at risk (`why`).
    fn note_risk(&self, name: &str, why: Option<&str>) {
        let mut known = self.at_risk.lock().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) if known.insert(name.to_string()) => {
                warn!(volume = %name, reason = %why, "volume at risk");
            }
            None if known.remove(name) => {
                tracing::info!(volume = %name, "volume no longer at risk");
            }
            _ => {}
        }
    }
}
