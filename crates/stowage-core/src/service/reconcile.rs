//! Start-up reconciliation of the store with the kernel's mount table.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use stowage_sys::exists_ok;
use tracing::{info, warn};

use super::{Loaded, VolumeService};
use crate::store::{Collection, Precondition};

/// The key of the node's own name in its own store.
const IDENTITY: &str = "identity";
use crate::error::{Error, Result};
use crate::snapshot::SnapshotRecord;
use crate::volume::{VolumeState, SCHEMA};

/// What reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub volumes: usize,
    pub creates_rolled_back: usize,
    pub removes_finished: usize,
    pub mounts_restored: usize,
    /// Mounts no consumer accounts for (interrupted mounts and unmounts,
    /// orphans) and stacked duplicates, all removed.
    pub stale_mounts_removed: usize,
    /// Raw device stagings whose device node binding was gone (detached
    /// by a reboot, or interrupted), forgotten.
    pub device_stagings_dropped: usize,
    /// Records of an older version rewritten in the current one.
    pub records_upgraded: usize,
    /// Snapshots whose creation was rolled back or removal finished.
    pub snapshots_finished: usize,
    /// Volumes that could not be brought in line, with the reason. They are
    /// left as recorded and retried at the next start.
    pub failures: Vec<String>,
    /// Data under the data root that no record accounts for: reported,
    /// never deleted.
    pub orphans: Vec<PathBuf>,
}

impl VolumeService {
    /// Brings the kernel in line with the store, finishing or rolling back
    /// whatever a crash interrupted. Runs before any door opens.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for dir in [
            self.layout.volumes_dir(),
            self.layout.images_dir(),
            self.layout.snapshots_dir(),
            self.layout.mounts_dir(),
        ] {
            exists_ok(self.sys.create_dir(&dir, 0o700))
                .map_err(Error::io("create directory", &dir))?;
        }
        self.refuse_lost_store()?;
        self.claim_data_root()?;
        // Read once: each step below changes only its own volume's mounts.
        let stacked = self.stacked_mounts(&self.mount_table()?);
        let mut presented = HashSet::new();
        let listing = self.list_records()?;
        // A record that cannot be read keeps whatever is mounted for it: it
        // may have consumers. Without even its id, no mount can be taken
        // for stale.
        let mut all_known = true;
        for c in &listing.corrupt {
            warn!(volume = %c.key, reason = %c.reason, "volume record cannot be read; left as stored");
            report
                .failures
                .push(format!("{}: record cannot be read: {}", c.key, c.reason));
            report.volumes += 1;
            match &c.id {
                Some(id) => {
                    presented.insert(id.clone());
                }
                None => all_known = false,
            }
        }
        for loaded in listing.records {
            // Another node's volume: that node reconciles it, unless this
            // node uses it over the network.
            let remote = self.reaches_remotely(&loaded.record);
            if !loaded.record.is_home(&self.node_id) && !remote {
                continue;
            }
            if remote && loaded.record.state != VolumeState::Ready {
                continue;
            }
            report.volumes += 1;
            let name = loaded.record.name.to_string();
            let _guard = self.locks.lock(&name);
            match self.reconcile_one(loaded, &stacked, &mut report) {
                Ok(Some(id)) => {
                    presented.insert(id);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(volume = %name, error = %e, "reconcile failed");
                    report.failures.push(format!("{name}: {e}"));
                }
            }
        }
        if all_known {
            self.remove_stale_mounts(&stacked, &presented, &mut report)?;
        } else {
            warn!("a volume record without a readable id: no mount is removed as stale");
        }
        if all_known {
            self.detach_stray_attachments(&presented)?;
        }
        report.snapshots_finished = self.reconcile_snapshots(&mut report.failures)?;
        report.orphans = self.orphaned_data()?;
        for orphan in &report.orphans {
            warn!(path = %orphan.display(), "data that no volume or snapshot accounts for; left in place");
        }
        info!(?report, "reconciled store with mount table");
        Ok(report)
    }

    /// The entries of the directories under the data and run roots that
    /// hold volumes' data and mounts.
    fn data_entries(&self) -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for dir in [
            self.layout.volumes_dir(),
            self.layout.images_dir(),
            self.layout.snapshots_dir(),
            self.layout.mounts_dir(),
        ] {
            let entries = self.sys.list_dir(&dir).map_err(Error::io("list", &dir))?;
            found.extend(entries.into_iter().map(|e| dir.join(e)));
        }
        found.sort();
        Ok(found)
    }

    /// Refuses to start on a store that was never written beside a data
    /// root that holds volumes' data: a lost, emptied or replaced
    /// database. Starting on it would forget every volume and tear down
    /// mounts in use as stale.
    fn refuse_lost_store(&self) -> Result<()> {
        if self.local.revision()? != 0 {
            return Ok(());
        }
        let found = self.data_entries()?;
        match found.first() {
            None => Ok(()),
            Some(first) => Err(Error::StoreLost {
                data_root: self.layout.data_root.clone(),
                entries: found.len(),
                example: first.clone(),
            }),
        }
    }

    /// Records in this node's own store which node its data root belongs
    /// to, and refuses to start under another name: the volumes there
    /// are homed on that node, and another would take them for foreign.
    /// The record also means the node's store has been written, for
    /// [`Self::refuse_lost_store`] at the next start.
    fn claim_data_root(&self) -> Result<()> {
        let c = Collection::Node;
        match self.local.get(c, IDENTITY)? {
            Some(v) if v.value == self.node_id.as_bytes() => Ok(()),
            Some(v) => Err(Error::InvalidRequest(format!(
                "the data root {} belongs to node {:?}, not {:?}: start it with --node-id {}",
                self.layout.data_root.display(),
                String::from_utf8_lossy(&v.value),
                self.node_id,
                String::from_utf8_lossy(&v.value),
            ))),
            None => {
                let id = self.node_id.as_bytes();
                self.local.put(c, IDENTITY, id, Precondition::Absent)?;
                Ok(())
            }
        }
    }

    /// Volume and snapshot data that no record names.
    fn orphaned_data(&self) -> Result<Vec<PathBuf>> {
        let mut known = HashSet::new();
        let listing = self.list_records()?;
        for id in listing.corrupt.iter().filter_map(|c| c.id.as_ref()) {
            known.insert(self.layout.volume_dir(id));
            known.insert(self.layout.image(id));
            known.insert(self.layout.mountpoint(id));
        }
        for l in listing.records {
            known.insert(self.layout.volume_dir(&l.record.id));
            known.insert(self.layout.image(&l.record.id));
            known.insert(self.layout.mountpoint(&l.record.id));
        }
        for l in self.list_all::<SnapshotRecord>()?.records {
            known.insert(self.layout.snapshot(&l.record.id));
        }
        Ok(self
            .data_entries()?
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect())
    }

    /// Returns the volume's id if it should stay presented.
    fn reconcile_one(
        &self,
        mut loaded: Loaded,
        stacked: &HashMap<String, usize>,
        report: &mut ReconcileReport,
    ) -> Result<Option<String>> {
        match loaded.record.state {
            VolumeState::Creating => {
                self.finish_remove(&loaded)?;
                report.creates_rolled_back += 1;
                return Ok(None);
            }
            VolumeState::Removing => {
                self.finish_remove(&loaded)?;
                report.removes_finished += 1;
                return Ok(None);
            }
            VolumeState::Ready => {}
            // Made by the agent, which goes through the pending ones.
            VolumeState::Pending => return Ok(None),
            // Never stored by Stowage: a record that says so was written
            // by someone else.
            VolumeState::Corrupt => {
                return Err(Error::CorruptRecord {
                    name: loaded.record.name.to_string(),
                    reason: "its state says corrupt".into(),
                })
            }
        }
        let remote = self.reaches_remotely(&loaded.record);
        if loaded.record.schema < SCHEMA && !remote {
            // Written before specs and node facts were stored apart:
            // rewritten as both, in one transaction on one store.
            self.save(&mut loaded)?;
            loaded.record.schema = SCHEMA;
            report.records_upgraded += 1;
        }
        self.reconcile_device(&mut loaded, report)?;
        let have = stacked.get(&loaded.record.id).copied().unwrap_or(0);
        if loaded.record.consumers.is_empty() {
            if have > 0 {
                report.stale_mounts_removed += have;
                self.withdraw(&loaded.record.id, have)?;
            }
            if remote && self.attached_remotely(&loaded.record)? {
                // The last unmount was cut short before the detach.
                self.detach_remote(&loaded.record)?;
            }
            // An empty mountpoint left behind goes with the stale ones.
            return Ok(None);
        }
        if have > 0 {
            let target = self.layout.mountpoint(&loaded.record.id);
            self.drivers
                .get(&loaded.record.driver)?
                .recover(&loaded.record, &target)?;
        }
        if have == 0 {
            let driver = self.drivers.get(&loaded.record.driver)?.clone();
            self.present(driver.as_ref(), &mut loaded.record)?;
            self.save_mounts(&mut loaded)?;
            report.mounts_restored += 1;
        } else if have > 1 {
            // Stacked by an interrupted retry: keep the bottom one.
            let target = self.layout.mountpoint(&loaded.record.id);
            for _ in 1..have {
                self.sys
                    .unmount(&target)
                    .map_err(Error::io("unmount", &target))?;
            }
            report.stale_mounts_removed += have - 1;
        }
        Ok(Some(loaded.record.id))
    }

    /// Forgets raw device stagings whose binding is gone, and detaches a
    /// device that nothing holds (an unstage or a failed stage cut short).
    fn reconcile_device(&self, loaded: &mut Loaded, report: &mut ReconcileReport) -> Result<()> {
        if loaded.record.device.is_none() {
            if loaded.record.consumers.is_empty() {
                self.drivers
                    .get(&loaded.record.driver)?
                    .detach_device(&loaded.record)?;
            }
            return Ok(());
        }
        for staging in self.lost_device_stagings(&loaded.record)? {
            warn!(volume = %loaded.record.name, staging = %staging.display(), "raw device staging gone");
            self.drop_staging(loaded, &staging)?;
            report.device_stagings_dropped += 1;
        }
        Ok(())
    }

    /// Unmounts and removes whatever sits in the mounts directory without a
    /// volume that should be presented there.
    fn remove_stale_mounts(
        &self,
        stacked: &HashMap<String, usize>,
        presented: &HashSet<String>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let mounts_dir = self.layout.mounts_dir();
        let entries = self
            .sys
            .list_dir(&mounts_dir)
            .map_err(Error::io("list", &mounts_dir))?;
        for id in entries {
            if presented.contains(&id) {
                continue;
            }
            let count = stacked.get(&id).copied().unwrap_or(0);
            match self.withdraw(&id, count) {
                Ok(()) if count > 0 => {
                    warn!(id = %id, count, "removed stale mount");
                    report.stale_mounts_removed += count;
                }
                Ok(()) => {}
                Err(e) => report.failures.push(format!("stale mountpoint {id}: {e}")),
            }
        }
        Ok(())
    }
}
