//! The volume service: the one place every operation goes through.
//!
//! Crash safety: a volume's record always says what the kernel should look
//! like, or names the one operation whose outcome is unknown
//! (`state: creating | removing`, for drivers that make or delete data),
//! which [`VolumeService::reconcile`] finishes or rolls back on start. For
//! mounts the kernel's mount table is the journal: a mount is made before
//! its consumer is recorded and released after, so a mount that no
//! recorded consumer accounts for is exactly an interrupted mount or
//! unmount, and reconcile removes it. Replies go out only after the
//! outcome is durable.

mod access;
mod capacity;
mod confine;
mod listing;
mod netexport;
mod nodes;
mod placement;
mod present;
mod publish;
mod recent;
mod reconcile;
mod remote;
mod snapshots;
mod space;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use stowage_sys::{exists_ok, missing_ok, IdMapping, MountEntry, Sys, UserNamespace};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::access::Reach;
use crate::driver::{Driver, DriverSet, Source};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::locks::KeyedLocks;
use crate::name::{validate_consumer, VolumeName};
use crate::options::{check_map_limits, MapKind};
use crate::ownership;
use crate::snapshot::SnapshotRecord;
use crate::store::{Collection, Durability, Op, Precondition, Read, Revision, Store, StoreError};
use crate::volume::{CopyProgress, CreateRequest, Volume, VolumeFilter, VolumeRecord, VolumeState};

pub use confine::CallerPaths;
pub use netexport::NetworkAttach;
pub use publish::PathUsage;
pub use reconcile::ReconcileReport;
pub use space::{SpaceAccount, SpacePolicy};

/// The driver used when a request names none.
pub const DEFAULT_DRIVER: &str = "local";
/// The node id of a service that was given none.
pub const DEFAULT_NODE_ID: &str = "local";
/// How many mounts stacked at one path an unmount of everything there
/// takes off before it gives up: more is another process mounting there.
const MAX_STACKED_MOUNTS: usize = 64;

/// Owns the volumes of one host.
pub struct VolumeService {
    /// What every node shares: volume specs, attachments, snapshots.
    store: Arc<dyn Store>,
    /// This node's own facts: its consumers, mounts and devices. The
    /// cluster store itself on a single host.
    local: Arc<dyn Store>,
    /// `store` and `local` are one store: a change to both is one
    /// transaction.
    one_store: bool,
    drivers: DriverSet,
    sys: Arc<dyn Sys>,
    layout: Layout,
    locks: KeyedLocks,
    /// One user namespace per distinct mapping, made once and reused.
    namespaces: Mutex<HashMap<IdMapping, Arc<UserNamespace>>>,
    /// The copies running now, by what they make (see [`copy_key`]).
    copies: Mutex<HashMap<String, CopyProgress>>,
    /// The node this host is known as to orchestrators.
    node_id: String,
    /// Where orchestrators may have volumes staged and published.
    caller_paths: CallerPaths,
    /// How far the data root may be promised.
    space: SpacePolicy,
    /// The heads of volume records parsed so far, by key, with their
    /// revision: a list parses only what changed since.
    heads: listing::HeadCache,
    /// Volumes this node saved last, for the mount or unmount that follows.
    recent: recent::RecentSaves,
    /// How block volumes reach nodes other than their home; `None` on a
    /// node not set up for it.
    network: Option<NetworkAttach>,
    /// Network attachments cut off here when this node's lease lapsed, by
    /// volume id.
    fenced: Mutex<std::collections::BTreeSet<String>>,
    /// This node's lease and what it publishes under it, once joined.
    membership: Mutex<Option<nodes::Membership>>,
    /// Volumes last found at risk of running out of space: the log says
    /// when one becomes so and when it stops, not at every look.
    at_risk: Mutex<std::collections::BTreeSet<String>>,
}

/// A record as loaded, with the revision to compare-and-swap against, and
/// what the stores hold of it: a save writes only the parts that changed.
struct Loaded<R = VolumeRecord> {
    record: R,
    revision: Revision,
    /// The record as the cluster store holds it.
    stored: Vec<u8>,
    /// This node's facts about it as its own store holds them, with their
    /// revision there (records with facts only).
    facts: Option<(Vec<u8>, Revision)>,
    /// Every node's use of it and its claim, read with it in one request
    /// (kinds with [`Record::SHARED_USE`]), with what this node's saves
    /// changed of them since; `None` when it was loaded without them, or
    /// after a save that failed.
    cluster_use: Option<access::ClusterUse>,
}

/// A kind of persisted record: its collection and key, and where this
/// node keeps its own facts about it.
trait Record: Sized {
    const COLLECTION: Collection;
    /// The collection of this node's own store that holds its facts about
    /// records of this kind, for kinds that have some.
    const FACTS: Option<Collection> = None;
    /// Whether nodes publish their uses of records of this kind, and
    /// claim them, in the cluster store.
    const SHARED_USE: bool = false;
    fn key(&self) -> &str;
    fn to_json(&self) -> Vec<u8>;
    fn facts_json(&self) -> Option<Vec<u8>> {
        None
    }
    fn from_json(bytes: &[u8], facts: Option<&[u8]>) -> Result<Self>;
    /// Refuses a change to a record that this Stowage cannot rewrite.
    fn refuse_rewrite(&self) -> Result<()> {
        Ok(())
    }
}

impl Record for VolumeRecord {
    const COLLECTION: Collection = Collection::Volumes;
    const FACTS: Option<Collection> = Some(Collection::NodeVolumes);
    const SHARED_USE: bool = true;
    fn key(&self) -> &str {
        self.name.as_str()
    }
    fn to_json(&self) -> Vec<u8> {
        self.spec_json()
    }
    fn facts_json(&self) -> Option<Vec<u8>> {
        VolumeRecord::facts_json(self)
    }
    fn from_json(bytes: &[u8], facts: Option<&[u8]>) -> Result<Self> {
        VolumeRecord::from_parts(bytes, facts)
    }
    fn refuse_rewrite(&self) -> Result<()> {
        self.refuse_newer_schema()
    }
}

impl Record for SnapshotRecord {
    const COLLECTION: Collection = Collection::Snapshots;
    fn key(&self) -> &str {
        self.name.as_str()
    }
    fn to_json(&self) -> Vec<u8> {
        SnapshotRecord::to_json(self)
    }
    fn from_json(bytes: &[u8], _: Option<&[u8]>) -> Result<Self> {
        SnapshotRecord::from_json(bytes)
    }
}

impl VolumeService {
    pub fn new(
        store: Arc<dyn Store>,
        drivers: DriverSet,
        sys: Arc<dyn Sys>,
        layout: Layout,
    ) -> Self {
        VolumeService {
            local: store.clone(),
            one_store: true,
            store,
            drivers,
            sys,
            locks: KeyedLocks::default(),
            namespaces: Mutex::default(),
            copies: Mutex::default(),
            node_id: DEFAULT_NODE_ID.to_string(),
            caller_paths: CallerPaths::new(&layout),
            space: SpacePolicy::default(),
            heads: Default::default(),
            recent: Default::default(),
            network: None,
            fenced: Mutex::default(),
            membership: Mutex::default(),
            at_risk: Default::default(),
            layout,
        }
    }

    /// Keeps this node's own facts in `local` rather than in the cluster
    /// store.
    pub fn with_local_store(mut self, local: Arc<dyn Store>) -> Self {
        self.one_store = std::ptr::addr_eq(Arc::as_ptr(&self.store), Arc::as_ptr(&local));
        self.local = local;
        self
    }

    /// Names the node this host is known as to orchestrators.
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = node_id.into();
        self
    }

    /// Lets block volumes homed here be attached from other nodes, and
    /// this node attach those homed elsewhere.
    pub fn with_network_attach(mut self, network: NetworkAttach) -> Self {
        self.network = Some(network);
        self
    }

    /// Sets where orchestrators may have volumes staged and published.
    pub fn with_caller_paths(mut self, paths: CallerPaths) -> Self {
        self.caller_paths = paths;
        self
    }

    /// Creates a volume, or returns the existing one if it was created with
    /// the same driver, options and labels.
    pub fn create(&self, req: CreateRequest) -> Result<Volume> {
        logged("create", &req.name.clone(), || {
            // On the cluster store a read is a round trip to the quorum: a
            // create made here, most often of a free name, puts the record
            // if absent and reads what holds the name only if it is taken.
            let optimistic = !self.one_store
                && req.node.is_none()
                && req.node_selector.is_empty()
                && req.from_snapshot.is_none()
                && req.clone_of.is_none();
            if optimistic {
                if let Some(made) = self.create_inner(req.clone(), false)? {
                    return Ok(made);
                }
            }
            let made = self.create_inner(req, true)?;
            Ok(made.expect("a create that reads the name first answers"))
        })
    }

    /// Creates the volume `req` asks for. With `read_first` false it does
    /// not read the name first, and answers `None`, having changed
    /// nothing, when the name is taken or the space check fails (for a
    /// taken name the answer is its volume, not that error).
    fn create_inner(&self, req: CreateRequest, read_first: bool) -> Result<Option<Volume>> {
        let name = VolumeName::parse(&req.name)?;
        let source_key = match (&req.from_snapshot, &req.clone_of) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidRequest(
                    "give either a snapshot or a volume to copy, not both".into(),
                ))
            }
            (Some(snap), None) => Some(snapshot_lock_key(&VolumeName::parse(snap)?)),
            (None, Some(vol)) => Some(VolumeName::parse(vol)?.to_string()),
            (None, None) => None,
        };
        check_map_limits(MapKind::Options, &req.options)?;
        check_map_limits(MapKind::Labels, &req.labels)?;
        // The new name and the source are locked together: a copy is
        // consistent, and the source cannot vanish halfway.
        let mut keys = vec![name.to_string()];
        keys.extend(source_key);
        let guards = self.locks.lock_all(keys);
        let source = self.load_source(&req)?;

        let mut options = source
            .as_ref()
            .map(|s| s.options().clone())
            .unwrap_or_default();
        if let Some(from) = source.as_ref().and_then(Copied::size) {
            // The source may have grown since it was created.
            options.insert("size".into(), crate::options::format_size(from));
        }
        options.extend(req.options.clone());
        let driver_name = match (&req.driver, &source) {
            (Some(d), _) => d.as_str(),
            (None, Some(s)) => s.driver(),
            (None, None) => DEFAULT_DRIVER,
        };
        let driver = self.drivers.get(driver_name)?.clone();
        if let Some(s) = &source {
            if s.driver() != driver.name() {
                return Err(Error::InvalidRequest(format!(
                    "the source is a {} volume; a copy of it must be one too, not {}",
                    s.driver(),
                    driver.name()
                )));
            }
        }
        let (common, own) = ownership::split(&options);
        ownership::OwnershipSpec::parse(&common)?;
        ownership::Label::parse(&common)?;
        driver.validate(&own)?;
        let capabilities = driver.capabilities(&own);
        let access = capabilities.choose(driver.name(), req.access)?;
        let size = driver.requested_size(&own)?;

        let mut existing = match read_first {
            true => self.load(&name)?,
            false => None,
        };
        if let Some(stale) = existing.take_if(|e| e.record.state == VolumeState::Creating) {
            // Under the name's lock, a volume still being created is one
            // whose create failed and whose rollback failed too (a full
            // disk, say): finish the rollback, then create it afresh.
            self.finish_remove(&stale)?;
        }
        if let Some(existing) = existing {
            let r = &existing.record;
            let what = if r.driver != driver.name() {
                "driver"
            } else if r.options != options {
                "options"
            } else if r.labels != req.labels {
                "labels"
            } else if req.access.is_some_and(|a| a != r.access) {
                "access mode"
            } else {
                match r.state {
                    VolumeState::Ready => return self.view(r).map(Some),
                    VolumeState::Pending => {
                        // Asked of its home node before: wait with the
                        // first caller, without the lock its maker takes.
                        drop(guards);
                        return self.wait_made(&name, &r.id, existing.revision).map(Some);
                    }
                    _ => return Err(busy(r)),
                }
            };
            return Err(Error::Conflict {
                name: name.to_string(),
                what,
            });
        }
        if let (Some(size), Some(from)) = (size, source.as_ref().and_then(|s| s.size())) {
            if size < from {
                return Err(Error::InvalidRequest(format!(
                    "size {size} is smaller than the source's {from} bytes; volumes only grow"
                )));
            }
        }
        let home = match capabilities.reach {
            Reach::Node => self.place(req.node.as_deref(), &req.node_selector)?,
            // Every node reaches it: none is its home, and any makes it.
            Reach::Cluster if req.node.is_none() && req.node_selector.is_empty() => {
                self.node_id.clone()
            }
            Reach::Cluster => {
                return Err(Error::InvalidRequest(format!(
                    "driver {} with these options is storage every node reaches: it has no node to place it on",
                    driver.name()
                )))
            }
        };
        if let Some(size) = size.filter(|_| home == self.node_id) {
            let now = driver.preallocated_bytes(&own, size)?;
            match self.check_space(driver.as_ref(), size, now) {
                // The name may be taken, and then the answer is its volume.
                Err(_) if !read_first => return Ok(None),
                checked => checked?,
            }
        }

        let record = VolumeRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name,
            driver: driver.name().to_string(),
            node: (capabilities.reach == Reach::Node).then(|| home.clone()),
            access,
            options,
            labels: req.labels,
            schema: crate::volume::SCHEMA,
            created_at: now_seconds(),
            consumers: Default::default(),
            state: VolumeState::Creating,
            presentation: Default::default(),
            size_bytes: size,
            attachments: Default::default(),
            device: None,
        };
        if home != self.node_id {
            if source.is_some() {
                return Err(Error::InvalidRequest(format!(
                    "a copy is made where its source's data is: create it on node {}",
                    self.node_id
                )));
            }
            drop(guards);
            return self
                .request_remote(VolumeRecord {
                    state: VolumeState::Pending,
                    ..record
                })
                .map(Some);
        }
        let provisions = driver.provisions_storage();
        if !provisions && source.is_some() {
            return Err(driver.unsupported("clones and restores"));
        }
        // Nothing to make on the host: one write creates the volume.
        let state = match provisions {
            true => VolumeState::Creating,
            false => VolumeState::Ready,
        };
        let mut loaded = match self.insert(VolumeRecord { state, ..record }) {
            Err(Error::Store(StoreError::Conflict { .. })) if !read_first => return Ok(None),
            inserted => inserted?,
        };
        if provisions {
            self.make_storage(&mut loaded, driver.as_ref(), source.as_ref())?;
        }
        let view = self.view_new(&loaded.record);
        self.keep_recent(loaded);
        Ok(Some(view))
    }

    /// Makes the storage of a volume recorded as being created (or as
    /// pending, which is recorded as being created first), from `source`
    /// if given, and records it ready; on failure, removes what was made
    /// and the record.
    fn make_storage(
        &self,
        loaded: &mut Loaded,
        driver: &dyn Driver,
        source: Option<&Copied>,
    ) -> Result<()> {
        if !driver.provisions_storage() {
            loaded.record.state = VolumeState::Ready;
            return self.save(loaded);
        }
        if loaded.record.state == VolumeState::Pending {
            loaded.record.state = VolumeState::Creating;
            self.save(loaded)?;
        }
        let made = match source {
            None => driver.create(&loaded.record),
            Some(s) => self.copy_into(driver, &loaded.record, s),
        };
        if let Err(e) = made {
            if let Err(cleanup) = driver.remove(&loaded.record) {
                warn!(volume = %loaded.record.name, error = %cleanup, "cleanup after failed create");
            }
            self.erase_journaled(loaded)?;
            return Err(e);
        }
        loaded.record.state = VolumeState::Ready;
        self.save(loaded)
    }

    /// Loads the snapshot or volume a create copies from; it must be ready.
    fn load_source(&self, req: &CreateRequest) -> Result<Option<Copied>> {
        if let Some(snap) = &req.from_snapshot {
            let name = VolumeName::parse(snap)?;
            let loaded = self
                .load_record::<SnapshotRecord>(name.as_str())?
                .ok_or_else(|| Error::SnapshotNotFound {
                    name: name.to_string(),
                })?;
            if loaded.record.state != VolumeState::Ready {
                return Err(Error::Busy {
                    name: name.to_string(),
                    state: "a snapshot still being made or removed",
                });
            }
            return Ok(Some(Copied::Snapshot(loaded.record)));
        }
        if let Some(vol) = &req.clone_of {
            let loaded = self.load_here(&VolumeName::parse(vol)?)?;
            return Ok(Some(Copied::Volume(loaded.record)));
        }
        Ok(None)
    }

    /// Makes `record`'s storage a copy of `source`, grown to its size.
    fn copy_into(&self, driver: &dyn Driver, record: &VolumeRecord, source: &Copied) -> Result<()> {
        let mut tracker = self.track_copy(copy_key("volume", &record.name));
        let mut progress = |done, total| tracker.report(done, total);
        let method = match source {
            Copied::Snapshot(snap) => {
                driver.create_from(record, Source::Snapshot(snap), &mut progress)?
            }
            Copied::Volume(vol) => {
                let mounted = self.mounted_at(&vol.id)?;
                driver.create_from(
                    record,
                    Source::Volume(vol, mounted.as_deref()),
                    &mut progress,
                )?
            }
        };
        info!(volume = %record.name, method = method.as_str(), "copied");
        match (record.size_bytes, source.size()) {
            (Some(size), Some(from)) if size > from => driver.resize(record, size, None),
            _ => Ok(()),
        }
    }

    /// The volume's mountpoint, if the kernel has it mounted.
    fn mounted_at(&self, id: &str) -> Result<Option<PathBuf>> {
        let mountpoint = self.layout.mountpoint(id);
        Ok(self.mount_at(&mountpoint)?.map(|_| mountpoint))
    }

    /// Checks that the store answers and that the kernel's mount table and
    /// the data root can be read: what every operation needs.
    pub fn probe(&self) -> Result<()> {
        self.store.get(Collection::Volumes, "")?;
        self.mount_table()?;
        self.free_space()?;
        Ok(())
    }

    /// A volume, with its usage if it has a size.
    pub fn inspect(&self, name: &str) -> Result<Volume> {
        let name = VolumeName::parse(name)?;
        let loaded = match self.load(&name) {
            Err(Error::CorruptRecord { name, reason }) => {
                return Ok(Volume::corrupt(&name, &reason))
            }
            other => other?.ok_or_else(|| not_found(&name))?,
        };
        let mut volume = if loaded.record.size_bytes.is_none()
            || loaded.record.state != VolumeState::Ready
            || !loaded.record.is_home(&self.node_id)
        {
            self.view(&loaded.record)?
        } else {
            // Reading usage may need the device: no mount may change meanwhile.
            let _guard = self.locks.lock(name.as_str());
            let loaded = self.load_ready(&name)?;
            let mut volume = self.view(&loaded.record)?;
            volume.usage = self.usage(&loaded.record)?;
            volume.space = self.space_use(&loaded.record)?;
            volume
        };
        (volume.consumers_by_node, volume.held_by) = self.cluster_use(&loaded)?;
        volume.network = self.network_use(&loaded.record)?;
        Ok(volume)
    }

    pub fn list(&self, filter: &VolumeFilter) -> Result<Vec<Volume>> {
        let mounted = self.stacked_mounts(&self.mount_table()?);
        let listing = self.list_records()?;
        let mut out: Vec<Volume> = listing
            .records
            .iter()
            .filter(|l| filter.matches(&l.record))
            .map(|l| self.view_with(&l.record, mounted.contains_key(&l.record.id)))
            .collect();
        if filter.matches_unknown() {
            out.extend(
                listing
                    .corrupt
                    .iter()
                    .map(|c| Volume::corrupt(&c.key, &c.reason)),
            );
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Presents the volume for `consumer` and returns the host path. The
    /// kernel mount is made for the first consumer; a consumer that mounts
    /// again is counted once.
    pub fn mount(&self, name: &str, consumer: &str) -> Result<PathBuf> {
        logged("mount", name, || self.mount_inner(name, consumer))
    }

    fn mount_inner(&self, name: &str, consumer: &str) -> Result<PathBuf> {
        let name = VolumeName::parse(name)?;
        validate_consumer(consumer)?;
        let _guard = self.locks.lock(name.as_str());
        let unmounted = |r: &VolumeRecord| !r.consumers.contains(consumer);
        self.change_recent(&name, Self::load_for_use, unmounted, |loaded| {
            self.mount_loaded(loaded, consumer)
        })
    }

    /// [`Self::mount`] of a ready volume the caller loaded under its lock;
    /// `loaded` follows the saved record. After an error, drop it.
    fn mount_loaded(&self, loaded: &mut Loaded, consumer: &str) -> Result<PathBuf> {
        let target = self.layout.mountpoint(&loaded.record.id);
        if loaded.record.consumers.contains(consumer) {
            return Ok(target);
        }
        loaded
            .record
            .refuse_raw_use("unstage it before mounting its filesystem")?;
        let first = loaded.record.consumers.is_empty();
        loaded.record.consumers.insert(consumer.to_string());
        // Refused by the access mode before the kernel is touched.
        let ops = self.use_ops(loaded)?;
        if first {
            // The kernel goes first: after a crash, a mount that no recorded
            // consumer accounts for is an unacknowledged one, and reconcile
            // removes it.
            let driver = self.drivers.get(&loaded.record.driver)?.clone();
            let remote = self.reaches_remotely(&loaded.record);
            if remote {
                self.attach_remote(&loaded.record)?;
            }
            let presented = self.present(driver.as_ref(), &mut loaded.record);
            // A volume at risk is logged, for the operator to act on; the
            // mount stands either way.
            let saved = presented.and_then(|()| {
                let _ = self.space_use(&loaded.record);
                self.save_mounts_with(loaded, ops).inspect_err(|_| {
                    let _ = self.withdraw(&loaded.record.id, 1);
                })
            });
            if let Err(e) = saved {
                if remote {
                    let _ = self.detach_remote(&loaded.record);
                }
                return Err(e);
            }
            return Ok(target);
        }
        // Already presented: recording the consumer is the whole change.
        self.save_mounts_with(loaded, ops)?;
        Ok(target)
    }

    /// Releases `consumer`'s use of the volume; the last one out releases
    /// the kernel mount. Unmounting a consumer that holds no mount succeeds.
    pub fn unmount(&self, name: &str, consumer: &str) -> Result<()> {
        logged("unmount", name, || self.unmount_inner(name, consumer))
    }

    fn unmount_inner(&self, name: &str, consumer: &str) -> Result<()> {
        let name = VolumeName::parse(name)?;
        validate_consumer(consumer)?;
        let _guard = self.locks.lock(name.as_str());
        let mounted = |r: &VolumeRecord| r.consumers.contains(consumer);
        self.change_recent(&name, Self::load_ready, mounted, |loaded| {
            self.unmount_loaded(loaded, consumer)
        })
    }

    /// [`Self::unmount`] of a ready volume the caller loaded under its
    /// lock; `loaded` follows the saved record. After an error, drop it.
    fn unmount_loaded(&self, loaded: &mut Loaded, consumer: &str) -> Result<()> {
        if !loaded.record.consumers.contains(consumer) {
            return Ok(());
        }
        loaded.record.consumers.remove(consumer);
        self.save_mounts(loaded)?;
        if loaded.record.consumers.is_empty() {
            // The record goes first: after a crash, reconcile finishes the
            // unmount of a volume that no consumer holds.
            if let Err(e) = self.withdraw(&loaded.record.id, 1) {
                // Still mounted: the consumer keeps it.
                loaded.record.consumers.insert(consumer.to_string());
                self.save_mounts(loaded)?;
                return Err(e);
            }
            if self.reaches_remotely(&loaded.record) {
                // Unmounted: the loop device cleared itself; what is left
                // to end is the attachment, which reconcile also ends.
                if let Err(e) = self.detach_remote(&loaded.record) {
                    warn!(volume = %loaded.record.name, error = %e, "cannot detach from over the network");
                }
            }
        }
        Ok(())
    }

    /// Removes a volume. A volume with consumers is refused unless `force`,
    /// which unmounts it first.
    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        logged("remove", name, || self.remove_inner(name, force))
    }

    fn remove_inner(&self, name: &str, force: bool) -> Result<()> {
        let name = VolumeName::parse(name)?;
        let _guard = self.locks.lock(name.as_str());
        let mut loaded = self.load(&name)?.ok_or_else(|| not_found(&name))?;
        if loaded.record.state == VolumeState::Pending {
            // Not made yet: withdrawing the request is the whole removal.
            return self.erase(&loaded);
        }
        loaded.record.refuse_away_from_home(&self.node_id)?;
        if loaded.record.state == VolumeState::Creating {
            // A create that failed and could not roll back: removing it is
            // finishing the rollback.
            return self.finish_remove(&loaded);
        }
        loaded.record.refuse_raw_use("unstage it first")?;
        if !loaded.record.consumers.is_empty() && !force {
            return Err(Error::InUse {
                name: name.to_string(),
                consumers: loaded.record.consumers.iter().cloned().collect(),
            });
        }
        if !loaded.record.attachments.is_empty() && !force {
            let nodes: Vec<&str> = loaded
                .record
                .attachments
                .keys()
                .map(String::as_str)
                .collect();
            return Err(Error::Precondition {
                name: name.to_string(),
                reason: format!(
                    "is attached to node {}; detach it first (CSI ControllerUnpublish), or force",
                    nodes.join(", ")
                ),
            });
        }
        // Not even with force: no node unmounts another's consumers.
        self.refuse_use_elsewhere(&loaded)?;
        let driver = self.drivers.get(&loaded.record.driver)?.clone();
        if !driver.provisions_storage() {
            // Nothing on disk to release: deleting the record is the whole
            // change. A mount left behind by a crash is removed at start.
            self.erase(&loaded)?;
            if let Err(e) = self.withdraw_all(&loaded.record.id) {
                warn!(volume = %name, error = %e, "removed, but its mount remains until restart");
            }
        } else {
            loaded.record.state = VolumeState::Removing;
            self.save(&mut loaded)?;
            self.finish_remove(&loaded)?;
        }
        if loaded.record.in_use() || !loaded.record.attachments.is_empty() {
            // Forced: what it held goes with it.
            self.forget_use(&loaded);
        }
        Ok(())
    }

    /// Removes every volume without consumers, including any whose
    /// removal failed halfway; returns their names.
    pub fn prune(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for l in self.list_records()?.records {
            let r = &l.record;
            if r.state == VolumeState::Creating || r.in_use() || !r.is_home(&self.node_id) {
                continue;
            }
            match self.remove(r.name.as_str(), false) {
                Ok(()) => removed.push(r.name.to_string()),
                // Mounted or removed since the listing: not ours to prune.
                Err(Error::InUse { .. } | Error::Precondition { .. } | Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Unmounts, releases the storage and deletes the record of a volume
    /// already marked `Removing` (or a `Creating` one being rolled back).
    fn finish_remove(&self, loaded: &Loaded) -> Result<()> {
        self.withdraw_all(&loaded.record.id)?;
        self.drivers
            .get(&loaded.record.driver)?
            .remove(&loaded.record)?;
        self.erase_journaled(loaded)
    }

    /// Makes the volume's mountpoint and mounts the driver's data on it as
    /// the volume's options ask, recording how in `record.presentation`.
    fn present(&self, driver: &dyn Driver, record: &mut VolumeRecord) -> Result<()> {
        let target = self.layout.mountpoint(&record.id);
        exists_ok(self.sys.create_dir(&target, 0o700))
            .map_err(Error::io("create mountpoint", &target))?;
        let presented = self.mount_presented(driver, record, &target).and_then(|p| {
            if record.access.read_only() {
                if let Err(e) = self.sys.make_read_only(&target) {
                    let _ = self.sys.unmount(&target);
                    return Err(Error::io("make read-only", &target)(e));
                }
            }
            Ok(p)
        });
        match presented {
            Ok(presentation) => {
                record.presentation = presentation;
                Ok(())
            }
            Err(e) => {
                let _ = self.sys.remove_dir(&target);
                Err(e)
            }
        }
    }

    /// Detaches `count` stacked mounts from the volume's mountpoint, then
    /// removes the directory. A mount already gone is not an error; an
    /// empty directory left behind is only logged, and the next start
    /// removes it.
    fn withdraw(&self, id: &str, count: usize) -> Result<()> {
        let target = self.layout.mountpoint(id);
        for _ in 0..count {
            match self.sys.unmount(&target) {
                Ok(()) => {}
                Err(e) if stowage_sys::is_not_mounted(&e) => break,
                Err(e) => return Err(Error::io("unmount", &target)(e)),
            }
        }
        if let Err(e) = missing_ok(self.sys.remove_dir(&target)) {
            warn!(path = %target.display(), error = %e, "cannot remove mountpoint");
        }
        Ok(())
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>> {
        self.sys
            .mount_table()
            .map_err(Error::io("read mount table", "/proc/self/mountinfo"))
    }

    /// The topmost mount at exactly `path`, if any.
    fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>> {
        self.sys
            .mount_at(path)
            .map_err(Error::io("look up the mount at", path))
    }

    /// [`Self::withdraw`] of every mount stacked on the mountpoint: an
    /// unmount where nothing is mounted fails, and ends it.
    fn withdraw_all(&self, id: &str) -> Result<()> {
        self.withdraw(id, MAX_STACKED_MOUNTS)
    }

    /// How many mounts `table` stacks on each volume's mountpoint, by the
    /// volume's id: one pass over the table, however many volumes ask.
    fn stacked_mounts(&self, table: &[MountEntry]) -> HashMap<String, usize> {
        let mounts_dir = self.layout.mounts_dir();
        let mut counts = HashMap::new();
        for m in table {
            if m.mount_point.parent() != Some(mounts_dir.as_path()) {
                continue;
            }
            if let Some(id) = m.mount_point.file_name().and_then(|n| n.to_str()) {
                *counts.entry(id.to_string()).or_default() += 1;
            }
        }
        counts
    }

    /// A volume as callers see it, `mounted` read from the kernel.
    fn view(&self, r: &VolumeRecord) -> Result<Volume> {
        let mounted = self.mounted_at(&r.id)?.is_some();
        Ok(self.view_with(r, mounted))
    }

    /// A volume just created: its mountpoint is named by a new id, so
    /// nothing is mounted there and the kernel need not be asked.
    fn view_new(&self, r: &VolumeRecord) -> Volume {
        self.view_with(r, false)
    }

    fn view_with(&self, r: &VolumeRecord, mounted: bool) -> Volume {
        let mountpoint = self.layout.mountpoint(&r.id);
        Volume {
            name: r.name.to_string(),
            driver: r.driver.clone(),
            node: r.node.clone(),
            access: r.access,
            options: r.options.clone(),
            labels: r.labels.clone(),
            created_at: r.created_at,
            mounted,
            mountpoint,
            consumers: r.consumers.iter().cloned().collect(),
            consumers_by_node: BTreeMap::new(),
            held_by: None,
            network: None,
            status: r.state,
            presentation: r.presentation.clone(),
            size_bytes: r.size_bytes,
            usage: None,
            attachments: r.attachments.clone(),
            device: r.device.clone(),
            copy: self.copy_progress(&copy_key("volume", &r.name)),
            space: None,
            corrupt: None,
        }
    }

    fn load(&self, name: &VolumeName) -> Result<Option<Loaded>> {
        self.load_record(name.as_str())
    }

    fn load_ready(&self, name: &VolumeName) -> Result<Loaded> {
        let loaded = self.load(name)?.ok_or_else(|| not_found(name))?;
        if loaded.record.state != VolumeState::Ready {
            return Err(busy(&loaded.record));
        }
        Ok(loaded)
    }

    /// [`Self::load_here`], or a volume this node reaches over the network.
    fn load_for_use(&self, name: &VolumeName) -> Result<Loaded> {
        let loaded = self.load_ready(name)?;
        if !self.reaches_remotely(&loaded.record) {
            loaded.record.refuse_away_from_home(&self.node_id)?;
        }
        Ok(loaded)
    }

    /// [`Self::load_ready`] of a volume whose data this node holds: what
    /// every use of the data needs.
    fn load_here(&self, name: &VolumeName) -> Result<Loaded> {
        let loaded = self.load_ready(name)?;
        loaded.record.refuse_away_from_home(&self.node_id)?;
        Ok(loaded)
    }

    fn list_records(&self) -> Result<Listing> {
        self.list_all()
    }

    /// The record at `key`; one that cannot be read is an error about it
    /// alone.
    fn load_record<R: Record>(&self, key: &str) -> Result<Option<Loaded<R>>> {
        let uses = format!("{key}/");
        let mut reads = vec![Read::Key(R::COLLECTION, key)];
        if R::SHARED_USE {
            reads.extend([
                Read::Key(Collection::Claims, key),
                Read::Prefix(Collection::Uses, &uses),
            ]);
        }
        let mut answers = self.store.read(&reads)?.into_iter().map(Vec::into_iter);
        let Some(v) = answers.next().and_then(|mut a| a.next()) else {
            return Ok(None);
        };
        let cluster_use = R::SHARED_USE.then(|| access::ClusterUse {
            claim: answers.next().and_then(|mut a| a.next()),
            uses: answers.next().map(Iterator::collect).unwrap_or_default(),
        });
        let facts = self.load_facts::<R>(key)?;
        match R::from_json(&v.value, facts.as_ref().map(|(b, _)| b.as_slice())) {
            Ok(record) => Ok(Some(Loaded {
                record,
                revision: v.revision,
                stored: v.value,
                facts,
                cluster_use,
            })),
            Err(e) => Err(Error::CorruptRecord {
                name: key.to_string(),
                reason: corrupt_reason(e),
            }),
        }
    }

    /// This node's facts about the record at `key`, with their revision,
    /// for kinds of records that have some.
    fn load_facts<R: Record>(&self, key: &str) -> Result<Option<(Vec<u8>, Revision)>> {
        let Some(c) = R::FACTS else { return Ok(None) };
        Ok(self.local.get(c, key)?.map(|f| (f.value, f.revision)))
    }

    /// Every record of a collection: one that cannot be read is set
    /// apart, so that it stops nothing but itself.
    fn list_all<R: Record>(&self) -> Result<Listing<R>> {
        let mut listing = Listing {
            records: Vec::new(),
            corrupt: Vec::new(),
        };
        let mut facts = match R::FACTS {
            Some(c) => self.local.list(c)?.items,
            None => Vec::new(),
        }
        .into_iter()
        .peekable();
        for v in self.store.list(R::COLLECTION)?.items {
            // Both lists are in key order: facts of no record are skipped.
            while facts.next_if(|f| f.key < v.key).is_some() {}
            let own = facts
                .next_if(|f| f.key == v.key)
                .map(|f| (f.value, f.revision));
            match R::from_json(&v.value, own.as_ref().map(|(b, _)| b.as_slice())) {
                Ok(record) => listing.records.push(Loaded {
                    record,
                    revision: v.revision,
                    stored: v.value,
                    facts: own,
                    cluster_use: None,
                }),
                Err(e) => listing.corrupt.push(Corrupt {
                    id: record_id(&v.value),
                    key: v.key,
                    reason: corrupt_reason(e),
                }),
            }
        }
        Ok(listing)
    }

    fn insert<R: Record>(&self, record: R) -> Result<Loaded<R>> {
        let stored = record.to_json();
        let revision =
            self.store
                .put(R::COLLECTION, record.key(), &stored, Precondition::Absent)?;
        // Facts left by a volume of the same name that another node
        // removed: the next save replaces them.
        let facts = self.load_facts::<R>(record.key())?;
        let mut loaded = Loaded {
            record,
            revision,
            stored,
            facts,
            // A volume just made is used and claimed by no one; a use or a
            // claim left under its name by one removed before fails the
            // compare-and-swap of the first change that meets it.
            cluster_use: R::SHARED_USE.then(Default::default),
        };
        if loaded.record.facts_json().is_some() {
            self.save(&mut loaded)?;
        }
        Ok(loaded)
    }

    /// Drops what [`recent`] keeps of the record at `key`, before a change
    /// to it.
    fn forget_recent<R: Record>(&self, key: &str) {
        if R::SHARED_USE {
            self.recent.forget(key);
        }
    }

    fn save<R: Record>(&self, loaded: &mut Loaded<R>) -> Result<()> {
        self.save_with(loaded, Durability::Host, Vec::new())
    }

    /// Saves a change to what only mirrors the kernel: the consumers and
    /// the mount they hold, the stagings of an attached device. Neither
    /// mounts nor loop devices outlive the host, so this record need not
    /// either; it survives a crash of the daemon, and saves the fsync that
    /// would otherwise double the cost of a mount.
    ///
    /// The change of this node's use goes to the cluster store with it
    /// (see [`Self::use_ops`]).
    fn save_mounts(&self, loaded: &mut Loaded) -> Result<()> {
        let ops = self.use_ops(loaded)?;
        self.save_mounts_with(loaded, ops)
    }

    /// [`Self::save_mounts`] with the cluster ops of the change computed
    /// before it was made.
    fn save_mounts_with(&self, loaded: &mut Loaded, ops: Vec<Op>) -> Result<()> {
        self.save_with(loaded, Durability::Process, ops)
    }

    /// Writes what changed of the record since it was loaded or saved:
    /// its shared part, with `extra` ops, to the cluster store, this
    /// node's facts to the node's own store (in one transaction when they
    /// are one store).
    fn save_with<R: Record>(
        &self,
        loaded: &mut Loaded<R>,
        durability: Durability,
        extra: Vec<Op>,
    ) -> Result<()> {
        let spec = loaded.record.to_json();
        let facts = loaded.record.facts_json();
        let spec_changed = spec != loaded.stored;
        let facts_op = R::FACTS.and_then(|c| {
            let key = loaded.record.key();
            match (&facts, &loaded.facts) {
                (Some(new), Some((old, _))) if new == old => None,
                (Some(new), old) => Some(Op::put(
                    c,
                    key,
                    new.clone(),
                    old.as_ref()
                        .map_or(Precondition::Absent, |(_, r)| Precondition::Revision(*r)),
                )),
                (None, Some((_, r))) => Some(Op::delete(c, key, *r)),
                (None, None) => None,
            }
        });
        if !spec_changed && facts_op.is_none() && extra.is_empty() {
            return Ok(());
        }
        loaded.record.refuse_rewrite()?;
        let spec_op = spec_changed.then(|| {
            Op::put(
                R::COLLECTION,
                loaded.record.key(),
                spec.clone(),
                Precondition::Revision(loaded.revision),
            )
        });
        let wrote_facts = facts_op.is_some();
        let shared: Vec<Op> = spec_op.into_iter().chain(extra).collect();
        self.forget_recent::<R>(loaded.record.key());
        let mut uses = loaded.cluster_use.take();
        let (shared_rev, facts_rev) = self.commit_parts(shared.clone(), facts_op, durability)?;
        if let Some(r) = shared_rev {
            uses.iter_mut().for_each(|u| u.apply(&shared, r));
            loaded.cluster_use = uses;
        }
        if let Some(r) = shared_rev.filter(|_| spec_changed) {
            loaded.revision = r;
            loaded.stored = spec;
        }
        if wrote_facts {
            loaded.facts = facts.zip(facts_rev);
        }
        Ok(())
    }

    /// Commits a change to a record's shared part and one to this node's
    /// facts: as one transaction on one store, else the shared part
    /// first. Returns the revision each was written at.
    fn commit_parts(
        &self,
        shared: Vec<Op>,
        facts: Option<Op>,
        durability: Durability,
    ) -> Result<(Option<Revision>, Option<Revision>)> {
        let (has_shared, has_facts) = (!shared.is_empty(), facts.is_some());
        if has_shared {
            self.refuse_lapsed_lease()?;
        }
        if self.one_store {
            let ops: Vec<Op> = shared.into_iter().chain(facts).collect();
            let r = self.store.commit(ops, durability)?;
            return Ok((has_shared.then_some(r), has_facts.then_some(r)));
        }
        let shared_rev = match has_shared {
            true => Some(self.store.commit(shared, durability)?),
            false => None,
        };
        let facts_rev = match facts {
            Some(op) => Some(self.local.commit(vec![op], durability)?),
            None => None,
        };
        Ok((shared_rev, facts_rev))
    }

    fn erase<R: Record>(&self, loaded: &Loaded<R>) -> Result<()> {
        self.erase_with(loaded, Durability::Host)
    }

    /// Deletes a record whose durable `Creating` or `Removing` state
    /// already tells reconcile to finish the job after a power loss (roll
    /// the create back, or complete the removal): the delete need only
    /// outlive the daemon, and saves an fsync.
    fn erase_journaled<R: Record>(&self, loaded: &Loaded<R>) -> Result<()> {
        self.erase_with(loaded, Durability::Process)
    }

    fn erase_with<R: Record>(&self, loaded: &Loaded<R>, durability: Durability) -> Result<()> {
        loaded.record.refuse_rewrite()?;
        let key = loaded.record.key();
        self.forget_recent::<R>(key);
        let shared = Op::delete(R::COLLECTION, key, loaded.revision);
        let facts = R::FACTS
            .zip(loaded.facts.as_ref())
            .map(|(c, (_, r))| Op::delete(c, key, *r));
        self.commit_parts(vec![shared], facts, durability)?;
        Ok(())
    }
}

/// A collection's records that could be read, and those that could not.
struct Listing<R = VolumeRecord> {
    records: Vec<Loaded<R>>,
    corrupt: Vec<Corrupt>,
}

/// A record that cannot be read.
struct Corrupt {
    key: String,
    /// Its id, if that much of it can still be read: its data and mounts
    /// are then known to be its own.
    id: Option<String>,
    reason: String,
}

/// The id a record names, read leniently from whatever JSON is left.
fn record_id(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(value.get("id")?.as_str()?.to_string())
}

/// Why a record did not load, without the wrapping every store error has.
fn corrupt_reason(e: Error) -> String {
    match e {
        Error::Store(crate::store::StoreError::Corrupt(reason)) => reason,
        other => other.to_string(),
    }
}

/// What a new volume is copied from.
enum Copied {
    Snapshot(SnapshotRecord),
    Volume(VolumeRecord),
}

impl Copied {
    fn options(&self) -> &crate::options::Options {
        match self {
            Copied::Snapshot(s) => &s.options,
            Copied::Volume(v) => &v.options,
        }
    }
    fn driver(&self) -> &str {
        match self {
            Copied::Snapshot(s) => &s.driver,
            Copied::Volume(v) => &v.driver,
        }
    }
    fn size(&self) -> Option<u64> {
        match self {
            Copied::Snapshot(s) => s.size_bytes,
            Copied::Volume(v) => v.size_bytes,
        }
    }
}

/// Snapshot locks share the volume lock table under a prefix no volume
/// name can have.
fn snapshot_lock_key(name: &VolumeName) -> String {
    format!("snapshot/{name}")
}

/// What a copy makes, as [`VolumeService::copy_progress`] looks it up:
/// `kind` is `volume` or `snapshot`.
fn copy_key(kind: &str, name: &VolumeName) -> String {
    format!("{kind}/{name}")
}

/// Reports a running copy's progress: to `inspect`, and to the log every
/// 10%. Dropping it ends the report, however the copy ended.
struct CopyTracker<'a> {
    copies: &'a Mutex<HashMap<String, CopyProgress>>,
    key: String,
    next_log: u64,
}

impl CopyTracker<'_> {
    fn report(&mut self, done: u64, total: u64) {
        let progress = CopyProgress {
            done_bytes: done,
            total_bytes: total,
        };
        (self.copies.lock().unwrap_or_else(|e| e.into_inner())).insert(self.key.clone(), progress);
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if percent >= self.next_log {
            info!(target: "stowage::copy", of = %self.key, done, total, percent, "copying");
            self.next_log = percent + 10;
        }
    }
}

impl Drop for CopyTracker<'_> {
    fn drop(&mut self) {
        (self.copies.lock().unwrap_or_else(|e| e.into_inner())).remove(&self.key);
    }
}

impl VolumeService {
    fn track_copy(&self, key: String) -> CopyTracker<'_> {
        CopyTracker {
            copies: &self.copies,
            key,
            next_log: 0,
        }
    }

    /// How far the copy making `key` has come, while it runs.
    fn copy_progress(&self, key: &str) -> Option<CopyProgress> {
        let copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        copies.get(key).copied()
    }
}

/// The current time, to the second: what `inspect` shows and RFC 3339 keeps.
pub(crate) fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn not_found(name: &VolumeName) -> Error {
    Error::NotFound {
        name: name.to_string(),
    }
}

fn busy(r: &VolumeRecord) -> Error {
    Error::Busy {
        name: r.name.to_string(),
        state: match r.state {
            VolumeState::Pending => "waiting for its home node to make it",
            VolumeState::Creating => "still being created",
            VolumeState::Removing => "being removed",
            VolumeState::Ready => "busy",
            VolumeState::Corrupt => "unreadable",
        },
    }
}

/// Runs one operation and logs one line with its outcome and duration.
fn logged<T>(op: &'static str, volume: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let result = f();
    let micros = start.elapsed().as_micros() as u64;
    match &result {
        Ok(_) => info!(op, volume, micros, outcome = "ok"),
        Err(e) => info!(op, volume, micros, outcome = "error", error = %e),
    }
    result
}

#[cfg(test)]
mod tests;
