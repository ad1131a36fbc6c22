//! The volume model: what is persisted, and what callers see.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::access::AccessMode;
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::options::Options;
use crate::ownership::Presentation;

/// Where a volume is in its lifecycle. A volume is only ever seen in
/// `Creating` or `Removing` after a crash, until reconciliation finishes or
/// rolls back the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    /// Asked of its home node, another than the one that was asked to
    /// create it, which has not made it yet.
    Pending,
    Creating,
    Ready,
    Removing,
    /// Shown, never stored: the record cannot be read. The volume is
    /// listed with the reason and refuses every operation until repaired.
    Corrupt,
}

/// The version of the records this Stowage writes. A record's version is
/// the first thing checked before it is rewritten: a node must not
/// rewrite a record of a newer version, whose fields it does not all know
/// (a rolling upgrade would lose them).
///
/// 1: one record held the volume and the host's use of it.
/// 2: what every node shares (the spec) and what one node knows of its
///    own use of the volume (its facts) are stored apart.
/// 3: the spec has an access mode (`rwo` where absent).
pub const SCHEMA: u32 = 3;

/// A volume as the service works on it: its spec, shared by every node
/// (stored in the cluster store, see [`VolumeSpec`]), joined with this
/// node's facts about its use (stored in the node's own store, see
/// [`NodeFacts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// The schema version the spec was read at.
    pub schema: u32,
    /// Generated, never derived from the name; all paths use it.
    pub id: String,
    pub name: VolumeName,
    pub driver: String,
    /// The node whose storage holds the volume's data (its home), for
    /// node-local drivers; `None` in records of a single host's version 1,
    /// whose home is that host.
    pub node: Option<String>,
    /// Who in the cluster may use it at once, and how.
    pub access: AccessMode,
    pub options: Options,
    pub labels: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
    /// This node's consumers.
    pub consumers: BTreeSet<String>,
    pub state: VolumeState,
    /// How the volume was presented at its last mount on this node.
    pub presentation: Presentation,
    /// The enforced size, for drivers with sizes; changed by resize.
    pub size_bytes: Option<u64>,
    /// The nodes the volume is attached to (CSI ControllerPublish).
    pub attachments: BTreeMap<String, Attachment>,
    /// The volume's raw block device on this node, while staged as one.
    pub device: Option<DeviceUse>,
}

/// What every node shares about a volume, as stored (JSON; new fields
/// need serde defaults, so that older records still load).
#[derive(Serialize, Deserialize)]
struct VolumeSpec<'a> {
    /// Absent in version 1.
    #[serde(default = "schema_1")]
    schema: u32,
    id: Cow<'a, str>,
    name: Cow<'a, VolumeName>,
    driver: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<Cow<'a, str>>,
    /// Absent before version 3, which knew `rwo` only.
    #[serde(default)]
    access: AccessMode,
    #[serde(default)]
    options: Cow<'a, Options>,
    #[serde(default)]
    labels: Cow<'a, BTreeMap<String, String>>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    state: VolumeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attachments: Cow<'a, BTreeMap<String, Attachment>>,
    /// Version 1 kept the host's facts in the spec: read, never written.
    #[serde(default, rename = "consumers", skip_serializing)]
    legacy_consumers: BTreeSet<String>,
    #[serde(default, rename = "presentation", skip_serializing)]
    legacy_presentation: Presentation,
    #[serde(default, rename = "device", skip_serializing)]
    legacy_device: Option<DeviceUse>,
}

fn schema_1() -> u32 {
    1
}

/// What one node knows of its own use of a volume, as stored in its own
/// store: all of it mirrors the node's kernel.
#[derive(Serialize, Deserialize)]
struct NodeFacts<'a> {
    schema: u32,
    /// The volume these facts are about: a volume removed and created
    /// again under its name is another.
    id: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    consumers: Cow<'a, BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "is_default")]
    presentation: Cow<'a, Presentation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<Cow<'a, DeviceUse>>,
}

// serde hands `skip_serializing_if` the field itself, a `&Cow`.
#[allow(clippy::ptr_arg)]
fn is_default<T: Default + PartialEq + Clone>(v: &Cow<'_, T>) -> bool {
    **v == T::default()
}

/// A volume used as a raw block device (CSI block access): the device
/// stays attached while a staging path holds it, and the volume is not
/// mounted as a filesystem meanwhile, by Stowage or anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceUse {
    /// The device was attached read-only: the kernel refuses every write.
    pub read_only: bool,
    /// The staging paths where the device node is bound.
    pub stagings: BTreeSet<PathBuf>,
}

/// How a volume is attached to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub read_only: bool,
    /// No other node may attach the volume meanwhile.
    pub exclusive: bool,
}

impl VolumeRecord {
    /// Whether anything holds the volume: a consumer of its filesystem, or
    /// a staging of its raw device.
    pub fn in_use(&self) -> bool {
        !self.consumers.is_empty() || self.device.is_some()
    }

    /// Refuses what cannot be done while the volume is in use as a raw
    /// block device, saying by whom and `advice`.
    pub fn refuse_raw_use(&self, advice: &str) -> Result<()> {
        match &self.device {
            Some(_) => Err(Error::Precondition {
                name: self.name.to_string(),
                reason: format!(
                    "is in use as a raw block device ({}); {advice}",
                    self.users().join(", ")
                ),
            }),
            None => Ok(()),
        }
    }

    /// Who holds the volume, for errors that say so.
    pub fn users(&self) -> Vec<String> {
        let stagings = self.device.iter().flat_map(|d| &d.stagings);
        (self.consumers.iter().cloned())
            .chain(stagings.map(|p| format!("raw device staged at {}", p.display())))
            .collect()
    }

    /// The spec, as the cluster store keeps it.
    pub fn spec_json(&self) -> Vec<u8> {
        let spec = VolumeSpec {
            schema: SCHEMA,
            id: Cow::Borrowed(&self.id),
            name: Cow::Borrowed(&self.name),
            driver: Cow::Borrowed(&self.driver),
            node: self.node.as_deref().map(Cow::Borrowed),
            access: self.access,
            options: Cow::Borrowed(&self.options),
            labels: Cow::Borrowed(&self.labels),
            created_at: self.created_at,
            state: self.state,
            size_bytes: self.size_bytes,
            attachments: Cow::Borrowed(&self.attachments),
            legacy_consumers: BTreeSet::new(),
            legacy_presentation: Presentation::default(),
            legacy_device: None,
        };
        serde_json::to_vec(&spec).expect("a volume spec always serializes")
    }

    /// This node's facts, as its own store keeps them; `None` when there
    /// are none to keep.
    pub fn facts_json(&self) -> Option<Vec<u8>> {
        if self.consumers.is_empty()
            && self.presentation == Presentation::default()
            && self.device.is_none()
        {
            return None;
        }
        let facts = NodeFacts {
            schema: SCHEMA,
            id: Cow::Borrowed(&self.id),
            consumers: Cow::Borrowed(&self.consumers),
            presentation: Cow::Borrowed(&self.presentation),
            device: self.device.as_ref().map(Cow::Borrowed),
        };
        Some(serde_json::to_vec(&facts).expect("node facts always serialize"))
    }

    /// A record from its stored spec and this node's stored facts. Facts
    /// about another volume of the same name are not this one's.
    pub fn from_parts(spec: &[u8], facts: Option<&[u8]>) -> Result<Self> {
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::Store(crate::store::StoreError::Corrupt(format!("{what}: {e}")))
        };
        let spec: VolumeSpec<'_> =
            serde_json::from_slice(spec).map_err(|e| corrupt("volume record", e))?;
        let facts: Option<NodeFacts<'_>> = facts
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|e| corrupt("node facts", e))?;
        let (consumers, presentation, device) = match facts {
            Some(f) if f.id == spec.id => (
                f.consumers.into_owned(),
                f.presentation.into_owned(),
                f.device.map(Cow::into_owned),
            ),
            _ if spec.schema < 2 => (
                spec.legacy_consumers,
                spec.legacy_presentation,
                spec.legacy_device,
            ),
            _ => Default::default(),
        };
        Ok(VolumeRecord {
            schema: spec.schema,
            id: spec.id.into_owned(),
            name: spec.name.into_owned(),
            driver: spec.driver.into_owned(),
            node: spec.node.map(Cow::into_owned),
            access: spec.access,
            options: spec.options.into_owned(),
            labels: spec.labels.into_owned(),
            created_at: spec.created_at,
            consumers,
            state: spec.state,
            presentation,
            size_bytes: spec.size_bytes,
            attachments: spec.attachments.into_owned(),
            device,
        })
    }

    /// Whether the volume's data lives on `node` (a volume of a version 1
    /// record lives on the one host there was).
    pub fn is_home(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|home| home == node)
    }

    /// Refuses what only the volume's home node can do, on any other.
    pub fn refuse_away_from_home(&self, node: &str) -> Result<()> {
        match &self.node {
            Some(home) if home != node => Err(Error::HomedElsewhere {
                name: self.name.to_string(),
                node: home.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses to rewrite a record written by a newer Stowage.
    pub fn refuse_newer_schema(&self) -> Result<()> {
        if self.schema > SCHEMA {
            return Err(Error::Precondition {
                name: self.name.to_string(),
                reason: format!(
                    "was written by a newer Stowage (record version {}, this one writes {SCHEMA}); \
                     change it from a node that runs that version",
                    self.schema
                ),
            });
        }
        Ok(())
    }
}

/// A volume homed on another node, as this node reaches it over the
/// network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkUse {
    /// The node that exports it.
    pub home: String,
    /// How: `nbd`.
    pub transport: String,
    /// The attachment's epoch, while its request is in the store.
    pub epoch: Option<u64>,
    /// Cut off its export because this node's lease lapsed: its I/O
    /// fails until it is unmounted and mounted again.
    pub fenced: bool,
}

/// A request to create a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub options: Options,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Create the volume as a copy of this snapshot.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Create the volume as a copy of this volume, consistent even while
    /// it is in use.
    #[serde(default)]
    pub clone_of: Option<String>,
    /// The node whose storage holds it, or `any`: the ready node with the
    /// most free space among those `node_selector` matches. This node if
    /// neither is given.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Who in the cluster may use it at once; the driver's default if
    /// not given.
    #[serde(default)]
    pub access: Option<AccessMode>,
}

/// Capacity and use of a volume with a size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_used: u64,
}

impl From<stowage_sys::Usage> for Usage {
    fn from(u: stowage_sys::Usage) -> Self {
        Usage {
            capacity_bytes: u.capacity_bytes,
            used_bytes: u.used_bytes,
            available_bytes: u.available_bytes,
            inodes: u.inodes,
            inodes_used: u.inodes_used,
        }
    }
}

/// How far a copy that makes a volume or a snapshot has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A volume as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    /// The node whose storage holds its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub access: AccessMode,
    pub options: Options,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The stable host path where the volume is presented when mounted.
    pub mountpoint: PathBuf,
    /// This node's consumers.
    pub consumers: Vec<String>,
    /// Who uses it on every node that does, by node: filled by `inspect`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers_by_node: BTreeMap<String, Vec<String>>,
    /// The node that holds a volume of an exclusive mode now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// How this node reaches the volume over the network, while it does:
    /// filled by `inspect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkUse>,
    /// `ready`, or `creating` / `removing` while an operation is in flight.
    pub status: VolumeState,
    /// Whether the kernel has the volume mounted at `mountpoint` now.
    pub mounted: bool,
    /// Ownership method and SELinux label of the last mount.
    pub presentation: Presentation,
    /// The enforced size, for drivers with sizes.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Capacity, bytes and inodes used, for volumes with a size. Filled by
    /// `inspect`; `list` leaves it out, as it may need the device.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The nodes the volume is attached to, and how.
    #[serde(default)]
    pub attachments: BTreeMap<String, Attachment>,
    /// Its raw block device's use, while staged as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceUse>,
    /// While it is being made as a copy: how far the copy has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyProgress>,
    /// For volumes whose storage takes space on the data root as it is
    /// written: what it takes and whether the data root still holds the
    /// rest. Filled by `inspect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<SpaceUse>,
    /// Why the record cannot be read, for a volume whose status is
    /// `corrupt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<String>,
}

impl Volume {
    /// What is known of a volume whose record cannot be read: its name.
    pub fn corrupt(name: &str, reason: &str) -> Volume {
        Volume {
            name: name.to_string(),
            driver: String::new(),
            node: None,
            access: AccessMode::default(),
            options: Options::new(),
            labels: BTreeMap::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            mountpoint: PathBuf::new(),
            consumers: Vec::new(),
            consumers_by_node: BTreeMap::new(),
            held_by: None,
            network: None,
            status: VolumeState::Corrupt,
            mounted: false,
            presentation: Presentation::default(),
            size_bytes: None,
            usage: None,
            attachments: BTreeMap::new(),
            device: None,
            copy: None,
            space: None,
            corrupt: Some(reason.to_string()),
        }
    }
}

/// A volume as `volume ls` shows it in a table: what the list can say
/// without reading more of each record than this. Borrowed where it can
/// be: from the daemon's parsed records when it sends a list, from the
/// answer's bytes when the CLI reads one (100k volumes are 200k strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSummary<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub driver: Cow<'a, str>,
    pub status: VolumeState,
    /// How many consumers hold it.
    pub consumers: usize,
    pub mounted: bool,
    /// RFC 3339, as the record has it.
    #[serde(borrow)]
    pub created_at: Cow<'a, str>,
}

impl VolumeSummary<'_> {
    pub fn into_owned(self) -> VolumeSummary<'static> {
        VolumeSummary {
            name: Cow::Owned(self.name.into_owned()),
            driver: Cow::Owned(self.driver.into_owned()),
            status: self.status,
            consumers: self.consumers,
            mounted: self.mounted,
            created_at: Cow::Owned(self.created_at.into_owned()),
        }
    }
}

/// The part of a stored record a summary needs; the rest is skipped
/// unparsed, which makes a list of many volumes several times cheaper.
#[derive(Deserialize)]
pub(crate) struct RecordHead {
    #[serde(default = "schema_1")]
    pub schema: u32,
    pub id: String,
    pub name: String,
    pub driver: String,
    /// The home node; `None` in version 1, whose home is this one.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Kept as the record writes it (RFC 3339), which is what a summary
    /// shows: not parsed only to be formatted again.
    pub created_at: String,
    pub state: VolumeState,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Version 1 kept this node's use in the record itself.
    #[serde(default, rename = "consumers")]
    legacy_consumers: Vec<serde::de::IgnoredAny>,
    #[serde(default, rename = "device")]
    legacy_device: Option<serde::de::IgnoredAny>,
}

/// The part of this node's facts about a volume that a summary needs.
#[derive(Deserialize)]
pub(crate) struct FactsHead {
    pub id: String,
    #[serde(default)]
    consumers: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    device: Option<serde::de::IgnoredAny>,
}

impl FactsHead {
    pub(crate) fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("node facts: {e}"))
    }
}

impl RecordHead {
    pub(crate) fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("volume record: {e}"))
    }

    /// How many consumers hold the volume on this node, and whether
    /// anything does, given this node's facts about it.
    pub(crate) fn use_here(&self, facts: Option<&FactsHead>) -> (usize, bool) {
        match facts {
            Some(f) if f.id == self.id => (
                f.consumers.len(),
                !f.consumers.is_empty() || f.device.is_some(),
            ),
            _ if self.schema < 2 => (
                self.legacy_consumers.len(),
                !self.legacy_consumers.is_empty() || self.legacy_device.is_some(),
            ),
            _ => (0, false),
        }
    }
}

/// A sized volume's share of the data root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceUse {
    /// Bytes its storage takes on the data root now.
    pub allocated_bytes: u64,
    /// Bytes it may still take as it is written.
    pub unallocated_bytes: u64,
    /// Set when the data root has less free space than the volume may
    /// still take: writers may then fail with I/O errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_risk: Option<String>,
}

/// A conjunction of conditions for `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeFilter {
    pub drivers: Vec<String>,
    /// `(key, None)` matches any value.
    pub labels: Vec<(String, Option<String>)>,
    /// `Some(true)`: only volumes with no consumer.
    pub dangling: Option<bool>,
}

impl VolumeFilter {
    /// Parses Docker-style filters: `driver=NAME`, `label=KEY`,
    /// `label=KEY=VALUE`, `dangling=true|false`.
    pub fn parse<'a>(filters: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut out = VolumeFilter::default();
        for filter in filters {
            let bad = |reason: &str| Error::InvalidFilter {
                filter: filter.to_string(),
                reason: reason.to_string(),
            };
            let (key, value) = filter
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match key {
                "driver" => out.drivers.push(value.to_string()),
                "label" => {
                    let (k, v) = match value.split_once('=') {
                        Some((k, v)) => (k, Some(v.to_string())),
                        None => (value, None),
                    };
                    if k.is_empty() {
                        return Err(bad("label filter needs a key"));
                    }
                    out.labels.push((k.to_string(), v));
                }
                "dangling" => match value {
                    "true" | "1" => out.dangling = Some(true),
                    "false" | "0" => out.dangling = Some(false),
                    _ => return Err(bad("dangling takes true or false")),
                },
                _ => return Err(bad("known filters are driver, label and dangling")),
            }
        }
        Ok(out)
    }

    /// Whether a volume whose record cannot be read may match: only when
    /// nothing is asked of what the record would say.
    pub fn matches_unknown(&self) -> bool {
        self.drivers.is_empty() && self.labels.is_empty() && self.dangling.is_none()
    }

    pub fn matches(&self, v: &VolumeRecord) -> bool {
        self.matches_parts(&v.driver, &v.labels, v.in_use())
    }

    pub(crate) fn matches_parts(
        &self,
        driver: &str,
        labels: &BTreeMap<String, String>,
        in_use: bool,
    ) -> bool {
        (self.drivers.is_empty() || self.drivers.iter().any(|d| d == driver))
            && self.labels.iter().all(|(k, want)| match want {
                None => labels.contains_key(k),
                Some(want) => labels.get(k) == Some(want),
            })
            && self.dangling.is_none_or(|d| d != in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f = VolumeFilter::parse(["driver=local", "label=env=prod", "dangling=true"]).unwrap();
        let mut rec = VolumeRecord {
            schema: SCHEMA,
            id: "i".into(),
            name: VolumeName::parse("v").unwrap(),
            driver: "local".into(),
            node: None,
            access: AccessMode::Rwo,
            options: Options::new(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            consumers: BTreeSet::new(),
            state: VolumeState::Ready,
            presentation: Presentation::default(),
            size_bytes: None,
            attachments: BTreeMap::new(),
            device: None,
        };
        assert!(f.matches(&rec));
        rec.consumers.insert("c".into());
        assert!(!f.matches(&rec));
        assert!(VolumeFilter::parse(["label=env"]).unwrap().matches(&rec));
        assert!(!VolumeFilter::parse(["driver=tmpfs"]).unwrap().matches(&rec));
        for bad in ["driver", "colour=red", "dangling=maybe", "label="] {
            assert!(VolumeFilter::parse([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_round_trips_and_tolerates_missing_fields() {
        let json = br#"{"id":"x","name":"v","driver":"local","created_at":"2026-11-22T00:00:00Z","state":"ready"}"#;
        let mut rec = VolumeRecord::from_parts(json, None).unwrap();
        assert!(rec.consumers.is_empty());
        assert_eq!(rec.facts_json(), None, "no facts to keep");
        rec.schema = SCHEMA;
        assert_eq!(
            VolumeRecord::from_parts(&rec.spec_json(), None).unwrap(),
            rec
        );
        rec.consumers.insert("c1".into());
        let facts = rec.facts_json().unwrap();
        let back = VolumeRecord::from_parts(&rec.spec_json(), Some(&facts)).unwrap();
        assert_eq!(back, rec);
        assert!(!String::from_utf8(rec.spec_json())
            .unwrap()
            .contains("\"consumers\""));
    }

    #[test]
    fn facts_of_another_volume_of_the_same_name_are_not_its_own() {
        let mut rec = VolumeRecord::from_parts(
            br#"{"schema":2,"id":"x","name":"v","driver":"local","created_at":"2026-11-22T00:00:00Z","state":"ready"}"#,
            None,
        )
        .unwrap();
        rec.consumers.insert("c1".into());
        let facts = rec.facts_json().unwrap();
        rec.id = "y".into();
        let other = VolumeRecord::from_parts(&rec.spec_json(), Some(&facts)).unwrap();
        assert!(other.consumers.is_empty());
    }

    #[test]
    fn a_version_1_record_keeps_the_facts_it_holds_until_rewritten() {
        let v1 = br#"{"id":"x","name":"v","driver":"local","created_at":"2026-11-22T00:00:00Z","state":"ready","consumers":["c1"],"device":{"read_only":false,"stagings":["/s"]}}"#;
        let rec = VolumeRecord::from_parts(v1, None).unwrap();
        assert_eq!(rec.schema, 1);
        assert!(rec.consumers.contains("c1") && rec.device.is_some());
        let spec = String::from_utf8(rec.spec_json()).unwrap();
        assert!(
            !spec.contains("\"consumers\"") && spec.contains("\"schema\":3"),
            "{spec}"
        );
        assert!(rec.facts_json().is_some());
        let head = RecordHead::from_json(v1).unwrap();
        assert_eq!(head.use_here(None), (1, true));
    }

    #[test]
    fn a_record_of_a_newer_version_is_not_rewritten() {
        let v9 = br#"{"schema":9,"id":"x","name":"v","driver":"local","created_at":"2026-11-22T00:00:00Z","state":"ready","quota":{"new":"field"}}"#;
        let rec = VolumeRecord::from_parts(v9, None).unwrap();
        let err = rec.refuse_newer_schema().unwrap_err().to_string();
        assert!(err.contains("newer Stowage"), "{err}");
    }
}
