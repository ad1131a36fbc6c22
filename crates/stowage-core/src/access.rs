//! Access modes: who in the cluster may use a volume at once, and how.
//! The model only; the service enforces it (see `service::access`).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a volume may be used across the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// One node at a time reads and writes it, for any number of
    /// consumers there.
    #[default]
    Rwo,
    /// One consumer in the whole cluster reads and writes it.
    Rwop,
    /// Any number of nodes read it; no one writes.
    Rox,
    /// Any number of nodes read and write it.
    Rwx,
}

impl AccessMode {
    pub const ALL: [AccessMode; 4] = [
        AccessMode::Rwo,
        AccessMode::Rwop,
        AccessMode::Rox,
        AccessMode::Rwx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Rwo => "rwo",
            AccessMode::Rwop => "rwop",
            AccessMode::Rox => "rox",
            AccessMode::Rwx => "rwx",
        }
    }

    pub fn parse(s: &str) -> Result<AccessMode> {
        AccessMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "access mode {s:?} is not one of rwo, rwop, rox, rwx"
                ))
            })
    }

    /// Whether one node at a time holds the volume: the holder's claim
    /// excludes every other node.
    pub fn exclusive(self) -> bool {
        matches!(self, AccessMode::Rwo | AccessMode::Rwop)
    }

    /// Whether no one may write it.
    pub fn read_only(self) -> bool {
        self == AccessMode::Rox
    }

    /// Whether one consumer in the cluster may hold it.
    pub fn single_consumer(self) -> bool {
        self == AccessMode::Rwop
    }

    /// What it says in an error.
    pub fn explained(self) -> &'static str {
        match self {
            AccessMode::Rwo => "rwo: one node at a time",
            AccessMode::Rwop => "rwop: one consumer in the cluster",
            AccessMode::Rox => "rox: read-only",
            AccessMode::Rwx => "rwx: many nodes read-write",
        }
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a driver's storage can be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only from the node that holds it (its home).
    Node,
    /// From every node of the cluster alike.
    Cluster,
}

/// What a driver's volumes, made with given options, can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub reach: Reach,
    /// The access modes its storage allows; the first is the default.
    pub access: &'static [AccessMode],
}

impl Capabilities {
    /// Storage on one node's disks: one node uses it, so every mode but
    /// many writers.
    pub const NODE_LOCAL: Capabilities = Capabilities {
        reach: Reach::Node,
        access: &[AccessMode::Rwo, AccessMode::Rwop, AccessMode::Rox],
    };
    /// Storage every node reaches, such as a cluster filesystem mounted
    /// at the same path on each.
    pub const SHARED: Capabilities = Capabilities {
        reach: Reach::Cluster,
        access: &[
            AccessMode::Rwx,
            AccessMode::Rwo,
            AccessMode::Rwop,
            AccessMode::Rox,
        ],
    };

    /// The mode asked for, if the storage allows it, else its default.
    pub fn choose(&self, driver: &str, asked: Option<AccessMode>) -> Result<AccessMode> {
        match asked {
            None => Ok(self.access[0]),
            Some(mode) if self.access.contains(&mode) => Ok(mode),
            Some(mode) => Err(Error::InvalidRequest(format!(
                "driver {driver} does not allow access mode {mode} with these options; it allows {}",
                self.access
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A node's exclusive hold on a volume of an exclusive mode, in the
/// cluster store under the volume's name. It is bound to the holder's
/// lease: it vanishes when that node is declared down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The volume held: a volume removed and created again under its
    /// name is another.
    pub id: String,
    pub node: String,
    /// For `rwop`: the one consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// What one node uses of a volume now, published under its lease for
/// every node to show (and to refuse a removal while it lasts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUse {
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub consumers: BTreeSet<String>,
    /// Staged there as a raw block device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub device: bool,
}

impl NodeUse {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a node's use serializes")
    }
}

impl Claim {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a claim serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_back_and_drivers_refuse_what_their_storage_cannot_do() {
        for m in AccessMode::ALL {
            assert_eq!(AccessMode::parse(m.as_str()).unwrap(), m);
        }
        assert!(AccessMode::parse("RWO").is_err() && AccessMode::parse("").is_err());
        let local = Capabilities::NODE_LOCAL;
        assert_eq!(local.choose("local", None).unwrap(), AccessMode::Rwo);
        let err = local
            .choose("local", Some(AccessMode::Rwx))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rwo, rwop, rox"), "{err}");
        assert_eq!(
            Capabilities::SHARED.choose("bind", None).unwrap(),
            AccessMode::Rwx
        );
    }
}
