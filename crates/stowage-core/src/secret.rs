//! Secrets kept in the store, sealed with a key the store does not hold.
//!
//! A secret (an attachment's pre-shared key, a backend's credentials) is
//! written to the store only sealed: XChaCha20-Poly1305 under the key in a
//! file given to every daemon of the cluster, with a fresh random nonce per
//! seal and the secret's place in the store (say `netattach/vol1`) bound as
//! associated data, so a sealed value copied to another record does not
//! open. Whoever reads the store, or a backup of it, without the key file
//! learns nothing of the secrets in it.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What every sealed value starts with: the format, for a later one.
const PREFIX: &str = "sealed1:";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// `n` bytes from the system's random source.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| {
        Error::io("read", Path::new("the system's random source"))(io::Error::other(e.to_string()))
    })?;
    Ok(buf)
}

/// `n` random bytes, in hex.
pub fn random_hex(n: usize) -> Result<String> {
    Ok(hex(&random_bytes(n)?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key that seals the store's secrets; never shown.
pub struct SealingKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<hidden>)")
    }
}

impl SealingKey {
    /// Reads a key file: 64 hex digits (32 bytes), readable by its owner
    /// only.
    pub fn from_file(path: &Path) -> Result<SealingKey> {
        let meta = std::fs::metadata(path).map_err(Error::io("read the key file", path))?;
        if meta.mode() & 0o077 != 0 {
            return Err(Error::InvalidRequest(format!(
                "the key file {} may be read by others (mode {:o}): chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(Error::io("read the key file", path))?,
        );
        SealingKey::from_hex(text.trim()).map_err(|_| {
            Error::InvalidRequest(format!(
                "the key file {} holds no key: it must hold 64 hex digits",
                path.display()
            ))
        })
    }

    fn from_hex(text: &str) -> Result<SealingKey> {
        let bad = || Error::InvalidRequest("a key is 64 hex digits".into());
        if text.len() != 2 * KEY_BYTES || !text.is_ascii() {
            return Err(bad());
        }
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(SealingKey {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key[..])),
        })
    }

    /// A new key, as the text of a key file.
    pub fn generate_file_text() -> Result<Zeroizing<String>> {
        Ok(Zeroizing::new(format!("{}\n", random_hex(KEY_BYTES)?)))
    }

    /// Seals `secret` for the store at `place`.
    pub fn seal(&self, secret: &[u8], place: &str) -> Result<String> {
        let nonce = random_bytes(NONCE_BYTES)?;
        let payload = Payload {
            msg: secret,
            aad: place.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .map_err(|_| Error::InvalidRequest("a secret too long to seal".into()))?;
        let mut out = nonce;
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", BASE64.encode(out)))
    }

    /// Opens a value sealed for `place`; fails if it was sealed with
    /// another key, for another place, or changed since.
    pub fn open(&self, sealed: &str, place: &str) -> Result<Zeroizing<Vec<u8>>> {
        let refused = || Error::CorruptRecord {
            name: place.to_string(),
            reason: "a secret in it does not open with this node's key file: sealed with \
                     another key, for another record, or changed"
                .into(),
        };
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| BASE64.decode(b).ok())
            .filter(|b| b.len() > NONCE_BYTES)
            .ok_or_else(refused)?;
        let (nonce, body) = bytes.split_at(NONCE_BYTES);
        let payload = Payload {
            msg: body,
            aad: place.as_bytes(),
        };
        self.cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map(Zeroizing::new)
            .map_err(|_| refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key() -> SealingKey {
        SealingKey::from_hex(SealingKey::generate_file_text().unwrap().trim()).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_at_its_place_only() {
        let (k, other) = (key(), key());
        let sealed = k.seal(b"psk-secret", "netattach/v1").unwrap();
        assert!(!sealed.contains("psk-secret"));
        assert_ne!(sealed, k.seal(b"psk-secret", "netattach/v1").unwrap());
        assert_eq!(&k.open(&sealed, "netattach/v1").unwrap()[..], b"psk-secret");
        assert!(k.open(&sealed, "netattach/v2").is_err(), "another place");
        assert!(other.open(&sealed, "netattach/v1").is_err(), "another key");
        let mut changed = sealed.clone().into_bytes();
        let last = changed.len() - 2;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        assert!(k.open(&changed, "netattach/v1").is_err(), "changed");
        for junk in ["", "sealed1:", "sealed1:!!", "plain"] {
            assert!(k.open(junk, "netattach/v1").is_err(), "{junk:?}");
        }
        assert_eq!(format!("{k:?}"), "SealingKey(<hidden>)");
    }

    #[test]
    fn a_key_file_others_may_read_or_without_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, SealingKey::generate_file_text().unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = SealingKey::from_file(&path).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        SealingKey::from_file(&path).unwrap();
        for bad in ["", "abc", &"g".repeat(64), &"0".repeat(62)] {
            std::fs::write(&path, bad).unwrap();
            let refused = SealingKey::from_file(&path).unwrap_err().to_string();
            assert!(refused.contains("64 hex digits"), "{bad:?}: {refused}");
        }
    }
}
