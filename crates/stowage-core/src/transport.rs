//! How a block volume's image reaches a node other than its home: the home
//! node exports it, the consuming node attaches the export as a file, and
//! the block driver's loop and filesystem steps take it from there.
//!
//! A trait, so that a kernel NBD client or another transport can take the
//! place of the one this machine runs (NBD through nbdkit and nbdfuse, in
//! `stowage-drivers`). Every attachment
//! has a key of its own, made for it and destroyed with it: the export
//! serves only the holder of that key, under a name nobody can guess.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::secret::random_hex;

/// Bytes of randomness in a key and in an export name.
const KEY_BYTES: usize = 32;
const NAME_BYTES: usize = 16;

/// The pre-shared key of one attachment: its identity and its secret,
/// which is never logged nor shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk {
    pub identity: String,
    secret: String,
}

impl Psk {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<Psk> {
        Ok(Psk {
            identity: format!("stowage-{}", random_hex(8)?),
            secret: random_hex(KEY_BYTES)?,
        })
    }

    /// A key given whole, as `identity` and the secret in hex.
    pub fn from_parts(identity: &str, secret_hex: &str) -> Result<Psk> {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let name = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name(identity) || !hex(secret_hex) || !secret_hex.len().is_multiple_of(2) {
            return Err(Error::InvalidRequest(
                "a key is an identity of letters, digits, - and _, and a secret in hex".into(),
            ));
        }
        Ok(Psk {
            identity: identity.to_string(),
            secret: secret_hex.to_ascii_lowercase(),
        })
    }

    pub fn secret_hex(&self) -> &str {
        &self.secret
    }

    /// The key in GnuTLS's PSK file format (`identity:hex`), as nbdkit and
    /// libnbd read it.
    pub fn file_line(&self) -> String {
        format!("{}:{}\n", self.identity, self.secret)
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Psk")
            .field("identity", &self.identity)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Where an export is served: an address and a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub name: String,
}

/// An export of `image` for one attachment `id`, served on `listen` to the
/// holder of `psk` only.
#[derive(Debug)]
pub struct ExportSpec<'a> {
    pub id: &'a str,
    pub image: &'a Path,
    pub listen: IpAddr,
    pub psk: &'a Psk,
    pub read_only: bool,
}

/// An attachment `id` of the export at `endpoint`, with its key.
#[derive(Debug)]
pub struct AttachSpec<'a> {
    pub id: &'a str,
    pub endpoint: &'a Endpoint,
    pub psk: &'a Psk,
    pub read_only: bool,
}

/// What a transport runs on this node, by attachment id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Running {
    pub exports: Vec<String>,
    pub attachments: Vec<String>,
}

pub trait Transport: Send + Sync {
    /// The name inspect shows (`nbd`).
    fn name(&self) -> &'static str;

    /// Serves an image over the network; an export of this id already
    /// running is answered with its endpoint.
    fn export(&self, spec: &ExportSpec<'_>) -> Result<Endpoint>;

    /// Stops the export `id` and destroys its key: its attachments fail
    /// their next I/O. Stopping one that does not run succeeds.
    fn unexport(&self, id: &str) -> Result<()>;

    /// Makes an export reachable here as a file to put a loop device on;
    /// an attachment of this id already running is answered with its
    /// file.
    fn attach(&self, spec: &AttachSpec<'_>) -> Result<PathBuf>;

    /// Cuts the attachment `id` off its export, so that every I/O on it
    /// fails from now on; the file stays for its mount to fail on until
    /// [`Transport::detach`]. Cutting one that does not run succeeds.
    fn sever(&self, id: &str) -> Result<()>;

    /// Ends the attachment `id` (its loop device detached first) and
    /// destroys its key. Ending one that does not run succeeds.
    fn detach(&self, id: &str) -> Result<()>;

    /// The exports and attachments running here, found by their identity
    /// (for reconcile after a restart).
    fn running(&self) -> Result<Running>;
}

/// A name for an export that nobody can guess.
pub fn export_name() -> Result<String> {
    random_hex(NAME_BYTES)
}

/// Whether `id` can name an attachment (and so a directory of its own).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_never_shown() {
        let (a, b) = (Psk::generate().unwrap(), Psk::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.secret_hex().len(), 2 * KEY_BYTES);
        let shown = format!("{a:?}");
        assert!(!shown.contains(a.secret_hex()), "{shown}");
        assert!(shown.contains(&a.identity), "{shown}");
        assert_eq!(
            a.file_line(),
            format!("{}:{}\n", a.identity, a.secret_hex())
        );
    }

    #[test]
    fn a_key_given_whole_is_checked() {
        assert!(Psk::from_parts("node-b_1", "00ff").is_ok());
        for (identity, secret) in [
            ("", "00"),
            ("a:b", "00"),
            ("a\nb", "00"),
            ("a", "0"),
            ("a", "zz"),
            ("a", ""),
        ] {
            assert!(Psk::from_parts(identity, secret).is_err(), "{identity:?}");
        }
    }

    #[test]
    fn ids_name_nothing_but_a_directory_of_their_own() {
        assert!(valid_id("3f2a-b_c"));
        for bad in ["", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert_ne!(export_name().unwrap(), export_name().unwrap());
    }
}
