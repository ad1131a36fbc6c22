//! Snapshots: point-in-time copies of a volume's data, kept by the driver
//! that made them, from which new volumes can be created.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::options::Options;
use crate::volume::{CopyProgress, VolumeState};

/// The persisted record of one snapshot. Snapshot names follow the volume
/// name rules and share none of their namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Generated; the snapshot's data lives under this id.
    pub id: String,
    pub name: VolumeName,
    /// The volume it was taken of (which may since have been removed).
    pub volume: VolumeName,
    pub volume_id: String,
    pub driver: String,
    /// The source volume's options, so that a restore recreates it alike.
    #[serde(default)]
    pub options: Options,
    /// The source volume's size, for drivers with sizes.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub state: VolumeState,
    /// How the data was copied: `reflink`, `sparse-copy`, `subvolume`, `copy`.
    #[serde(default)]
    pub method: String,
}

impl SnapshotRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot record always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Store(crate::store::StoreError::Corrupt(format!(
                "snapshot record: {e}"
            )))
        })
    }
}

/// A snapshot as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub volume: String,
    pub driver: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub size_bytes: Option<u64>,
    pub status: VolumeState,
    pub method: String,
    /// While it is being made: how far its copy has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyProgress>,
}

impl From<&SnapshotRecord> for Snapshot {
    fn from(r: &SnapshotRecord) -> Self {
        Snapshot {
            name: r.name.to_string(),
            volume: r.volume.to_string(),
            driver: r.driver.clone(),
            created_at: r.created_at,
            size_bytes: r.size_bytes,
            status: r.state,
            method: r.method.clone(),
            copy: None,
        }
    }
}

/// A request to snapshot a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub volume: String,
    /// Defaults to `VOLUME-YYYYMMDDTHHMMSSZ`.
    #[serde(default)]
    pub name: Option<String>,
}
