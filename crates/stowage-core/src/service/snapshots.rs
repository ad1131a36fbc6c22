//! Snapshots: made by the volume's driver, recorded like volumes, with the
//! same crash journal (`creating` and `removing` are finished or rolled
//! back on start).

use tracing::warn;

use super::{copy_key, logged, now_seconds, snapshot_lock_key, Loaded, VolumeService};
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::snapshot::{Snapshot, SnapshotRecord, SnapshotRequest};
use crate::volume::VolumeState;

impl VolumeService {
    /// Snapshots a volume, consistently even while it is in use. Asking
    /// again for an existing snapshot of the same volume returns it.
    pub fn create_snapshot(&self, req: SnapshotRequest) -> Result<Snapshot> {
        logged("snapshot", &req.volume.clone(), || {
            self.create_snapshot_inner(req)
        })
    }

    fn create_snapshot_inner(&self, req: SnapshotRequest) -> Result<Snapshot> {
        let volume = VolumeName::parse(&req.volume)?;
        let name = match &req.name {
            Some(n) => VolumeName::parse(n)?,
            None => {
                let stamp = now_seconds()
                    .format(time::macros::format_description!(
                        "[year][month][day]T[hour][minute][second]Z"
                    ))
                    .map_err(|e| Error::InvalidRequest(e.to_string()))?;
                VolumeName::parse(&format!("{volume}-{stamp}"))?
            }
        };
        let _guards = self
            .locks
            .lock_all(vec![volume.to_string(), snapshot_lock_key(&name)]);
        if let Some(existing) = self.load_record::<SnapshotRecord>(name.as_str())? {
            let r = &existing.record;
            if r.volume != volume {
                return Err(Error::SnapshotConflict {
                    name: name.to_string(),
                });
            }
            if r.state != VolumeState::Ready {
                return Err(snapshot_busy(&name));
            }
            return Ok(Snapshot::from(r));
        }
        let source = self.load_here(&volume)?.record;
        let driver = self.drivers.get(&source.driver)?.clone();
        // A snapshot may diverge from its volume all the way: it is a
        // promise of the volume's whole size.
        if let Some(size) = source.size_bytes {
            self.check_space(driver.as_ref(), size, 0)?;
        }
        let record = SnapshotRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name,
            volume,
            volume_id: source.id.clone(),
            driver: source.driver.clone(),
            options: source.options.clone(),
            size_bytes: source.size_bytes,
            created_at: now_seconds(),
            state: VolumeState::Creating,
            method: String::new(),
        };
        let mut loaded = self.insert(record)?;
        let mounted = self.mounted_at(&source.id)?;
        let mut tracker = self.track_copy(copy_key("snapshot", &loaded.record.name));
        let mut progress = |done, total| tracker.report(done, total);
        match driver.snapshot(&source, mounted.as_deref(), &loaded.record, &mut progress) {
            Ok(method) => loaded.record.method = method.as_str().to_string(),
            Err(e) => {
                if let Err(cleanup) = driver.remove_snapshot(&loaded.record) {
                    warn!(snapshot = %loaded.record.name, error = %cleanup, "cleanup after failed snapshot");
                }
                self.erase_journaled(&loaded)?;
                return Err(e);
            }
        }
        loaded.record.state = VolumeState::Ready;
        self.save(&mut loaded)?;
        Ok(Snapshot::from(&loaded.record))
    }

    /// Snapshots, by name; only those of `volume` if given.
    pub fn list_snapshots(&self, volume: Option<&str>) -> Result<Vec<Snapshot>> {
        let volume = volume.map(VolumeName::parse).transpose()?;
        let mut out: Vec<Snapshot> = self
            .list_all::<SnapshotRecord>()?
            .records
            .iter()
            .filter(|l| volume.as_ref().is_none_or(|v| *v == l.record.volume))
            .map(|l| self.snapshot_view(&l.record))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn inspect_snapshot(&self, name: &str) -> Result<Snapshot> {
        let name = VolumeName::parse(name)?;
        Ok(self.snapshot_view(&self.load_snapshot(&name)?.record))
    }

    /// A snapshot as callers see it, with its copy's progress while made.
    fn snapshot_view(&self, r: &SnapshotRecord) -> Snapshot {
        Snapshot {
            copy: self.copy_progress(&copy_key("snapshot", &r.name)),
            ..Snapshot::from(r)
        }
    }

    /// Deletes a snapshot and its data. Volumes restored from it are
    /// independent copies and stay.
    pub fn remove_snapshot(&self, name: &str) -> Result<()> {
        logged("snapshot-rm", name, || {
            let name = VolumeName::parse(name)?;
            let _guard = self.locks.lock(&snapshot_lock_key(&name));
            let mut loaded = self.load_snapshot(&name)?;
            if loaded.record.state == VolumeState::Creating {
                return Err(snapshot_busy(&name));
            }
            loaded.record.state = VolumeState::Removing;
            self.save(&mut loaded)?;
            self.finish_snapshot_removal(&loaded)
        })
    }

    fn load_snapshot(&self, name: &VolumeName) -> Result<Loaded<SnapshotRecord>> {
        self.load_record(name.as_str())?
            .ok_or_else(|| Error::SnapshotNotFound {
                name: name.to_string(),
            })
    }

    /// Deletes the data, then the record, of a snapshot being removed or
    /// rolled back.
    pub(super) fn finish_snapshot_removal(&self, loaded: &Loaded<SnapshotRecord>) -> Result<()> {
        self.drivers
            .get(&loaded.record.driver)?
            .remove_snapshot(&loaded.record)?;
        self.erase_journaled(loaded)
    }

    /// Finishes or rolls back snapshots a crash interrupted; returns how
    /// many.
    pub(super) fn reconcile_snapshots(&self, failures: &mut Vec<String>) -> Result<usize> {
        let mut done = 0;
        let listing = self.list_all::<SnapshotRecord>()?;
        for c in &listing.corrupt {
            failures.push(format!(
                "snapshot {}: record cannot be read: {}",
                c.key, c.reason
            ));
        }
        for loaded in listing.records {
            if loaded.record.state == VolumeState::Ready {
                continue;
            }
            match self.finish_snapshot_removal(&loaded) {
                Ok(()) => done += 1,
                Err(e) => failures.push(format!("snapshot {}: {e}", loaded.record.name)),
            }
        }
        Ok(done)
    }
}

fn snapshot_busy(name: &VolumeName) -> Error {
    Error::Busy {
        name: name.to_string(),
        state: "a snapshot still being made or removed",
    }
}
