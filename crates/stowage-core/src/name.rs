//! Volume names and consumer IDs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest volume name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest consumer ID accepted, in bytes (Docker IDs are 64 hex digits).
pub const MAX_CONSUMER_LEN: usize = 256;

/// A validated volume name, following Docker's rule
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes. Names are only ever
/// keys: no path is built from one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn parse(name: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("must not be empty")),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return Err(invalid("must start with a letter or digit"))
            }
            Some(_) => {}
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(&format!("longer than {MAX_NAME_LEN} bytes")));
        }
        if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
            return Err(invalid(&format!(
                "character {c:?} is not allowed; use only [a-zA-Z0-9_.-]"
            )));
        }
        Ok(VolumeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VolumeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VolumeName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Validates the ID of a consumer (a container, a pod, a CLI user): printable
/// ASCII without spaces, 1 to 256 bytes.
pub fn validate_consumer(id: &str) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidConsumer {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if id.len() > MAX_CONSUMER_LEN {
        return Err(invalid(&format!("longer than {MAX_CONSUMER_LEN} bytes")));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("only printable ASCII without spaces is allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_docker_names() {
        for ok in ["a", "mongodata", "pulp-lib", "A_b.c-9", &"x".repeat(128)] {
            assert!(VolumeName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "../etc",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a b",
            "a\0b",
            "é",
            "a\n",
            &"x".repeat(129),
        ] {
            let err = VolumeName::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid volume name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn consumer_ids() {
        assert!(validate_consumer("c0ffee").is_ok());
        assert!(validate_consumer("").is_err());
        assert!(validate_consumer("a b").is_err());
        assert!(validate_consumer(&"x".repeat(257)).is_err());
    }
}
