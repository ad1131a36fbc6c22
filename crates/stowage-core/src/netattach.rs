//! Network attachments of block volumes, as the store holds them: the
//! request of the node that wants a volume homed elsewhere, and the home
//! node's answer, both under `volume/node`.
//!
//! The request is bound to the requesting node's lease and the answer to
//! the home node's: when the requester is down its request ends, and the
//! home node stops the export, which fails the old holder's next I/O.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::secret::SealingKey;
use crate::transport::{Endpoint, Psk};

/// A node's request to attach a volume homed elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The volume's id: a request is never served for another volume that
    /// took the name since.
    pub volume_id: String,
    /// The attachment's own id, new for every attachment.
    pub id: String,
    /// One more than the epoch of the volume's attachment before it.
    pub epoch: u64,
    pub read_only: bool,
    pub psk_identity: String,
    /// The key's secret, sealed for this request's place in the store.
    pub psk_sealed: String,
}

/// The home node's answer: the export it serves for the request of the
/// same id, or why it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportAnswer {
    pub id: String,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExportAnswer {
    pub fn endpoint(&self) -> Option<Endpoint> {
        Some(Endpoint {
            address: self.address?,
            name: self.name.clone()?,
        })
    }
}

/// The key of a volume's attachment to `node`, in both collections.
pub fn key(volume: &str, node: &str) -> String {
    format!("{volume}/{node}")
}

/// The volume and node a key names.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// What a request's key is sealed for: its place in the store.
fn place(key: &str) -> String {
    format!("netattach/{key}")
}

impl AttachRequest {
    /// A request with a fresh key, sealed for `key`; returns the key too.
    pub fn new(
        sealing: &SealingKey,
        key: &str,
        volume_id: &str,
        epoch: u64,
        read_only: bool,
    ) -> Result<(AttachRequest, Psk)> {
        let psk = Psk::generate()?;
        let request = AttachRequest {
            volume_id: volume_id.to_string(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            epoch,
            read_only,
            psk_identity: psk.identity.clone(),
            psk_sealed: sealing.seal(psk.secret_hex().as_bytes(), &place(key))?,
        };
        Ok((request, psk))
    }

    /// The request's key, opened with this node's key file.
    pub fn psk(&self, sealing: &SealingKey, key: &str) -> Result<Psk> {
        let secret = sealing.open(&self.psk_sealed, &place(key))?;
        let secret = String::from_utf8_lossy(&secret);
        Psk::from_parts(&self.psk_identity, &secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_its_key_sealed_for_its_own_place() {
        let text = SealingKey::generate_file_text().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, text.as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sealing = SealingKey::from_file(&file).unwrap();

        let (request, psk) = AttachRequest::new(&sealing, "v/b", "id1", 3, false).unwrap();
        let json = serde_json::to_string(&request).unwrap();
        assert!(!json.contains(psk.secret_hex()), "{json}");
        let back: AttachRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.psk(&sealing, "v/b").unwrap(), psk);
        assert!(
            back.psk(&sealing, "v/c").is_err(),
            "moved to another node's place"
        );
        assert_eq!(parse_key("v/b"), Some(("v", "b")));
    }
}
