//! Volumes this node saved last, kept for the next mount or unmount.
//!
//! On the cluster store a read costs a round trip to the quorum, and a
//! mount or unmount follows this node's own create or mount of the same
//! volume more often than not. What this node wrote last is what the next
//! change would read, unless another node changed it since; every change
//! it makes from a kept load is a compare-and-swap of the revisions it
//! kept (the spec, this node's use, the claim), so such a change fails
//! instead of acting on a stale copy, and is then made again from a fresh
//! load. A load is kept only for a change that writes: a change found to
//! be nothing to do, or refused, is decided on a fresh read.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Loaded, VolumeService};
use crate::error::Result;
use crate::name::VolumeName;
use crate::volume::VolumeRecord;

/// How many volumes are kept; past it the cache starts over, which costs
/// one read per volume.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub(super) struct RecentSaves {
    loads: Mutex<HashMap<String, Loaded>>,
}

impl RecentSaves {
    fn take(&self, name: &str) -> Option<Loaded> {
        self.loads.lock().unwrap().remove(name)
    }

    fn keep(&self, loaded: Loaded) {
        let mut loads = self.loads.lock().unwrap();
        if loads.len() >= CAPACITY {
            loads.clear();
        }
        loads.insert(loaded.record.name.to_string(), loaded);
    }

    /// Drops what is kept of a volume: any save or removal of it does,
    /// and only the changes that keep a load put it back.
    pub(super) fn forget(&self, name: &str) {
        self.loads.lock().unwrap().remove(name);
    }

    /// Drops everything kept, when this node's uses are published again
    /// under a new lease.
    pub(super) fn clear(&self) {
        self.loads.lock().unwrap().clear();
    }
}

impl VolumeService {
    /// Keeps a volume just saved by this node for its next change, on the
    /// cluster store (on a single host a read is local and cheap).
    pub(super) fn keep_recent(&self, loaded: Loaded) {
        if !self.one_store && loaded.cluster_use.is_some() {
            self.recent.keep(loaded);
        }
    }

    /// Runs `change` on the volume as this node last saved it, when it
    /// kept it and `writes` says the change writes to it; or when not
    /// kept, or when the change on the kept load lost a race or was
    /// refused, on a fresh load by `load`. The volume's lock is held by the caller. What the
    /// change saves is kept for the next one.
    pub(super) fn change_recent<T>(
        &self,
        name: &VolumeName,
        load: impl Fn(&Self, &VolumeName) -> Result<Loaded>,
        writes: impl Fn(&VolumeRecord) -> bool,
        change: impl Fn(&mut Loaded) -> Result<T>,
    ) -> Result<T> {
        if let Some(mut kept) = self.recent.take(name.as_str()) {
            if writes(&kept.record) && ready_here(&kept, &self.node_id) {
                match change(&mut kept) {
                    Ok(done) => {
                        self.keep_recent(kept);
                        return Ok(done);
                    }
                    Err(e) if !decided_on_stale_copy(&e) => return Err(e),
                    Err(_) => {}
                }
            }
        }
        let mut loaded = load(self, name)?;
        let done = change(&mut loaded)?;
        self.keep_recent(loaded);
        Ok(done)
    }
}

/// Whether an error of a change on a kept load may come of the copy being
/// stale, and so calls for a fresh load: a compare-and-swap that failed
/// (nothing was written), or a refusal, which is decided before the kernel
/// is touched. Any other error stands: a write whose outcome is unknown
/// must not be taken for one that failed, nor a kernel failure be tried
/// twice.
fn decided_on_stale_copy(e: &crate::error::Error) -> bool {
    use crate::error::ErrorKind;
    matches!(e.kind(), ErrorKind::Aborted | ErrorKind::FailedPrecondition)
}

/// Whether a kept volume is ready and homed here, as a load for a use
/// requires; a kept one that is not is loaded afresh for its error.
fn ready_here(kept: &Loaded, node: &str) -> bool {
    kept.record.state == crate::volume::VolumeState::Ready
        && kept.record.refuse_away_from_home(node).is_ok()
}
