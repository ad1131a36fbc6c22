//! Reading an owner out of the tar streams container engines send: the
//! archive of one path (Docker) or a container's whole exported
//! filesystem (Podman). Parsed by the `tar` crate, which knows ustar
//! prefixes, GNU long names, pax records and base-256 numbers.

use std::io::Read;

use anyhow::{anyhow, Context, Result};

/// Which entry of an archive to read the owner of.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// The first one: Docker's archive of a path starts with that path.
    First,
    /// The one at this path (leading `/` and `./`, trailing `/` ignored).
    Path(&'a str),
}

/// The uid and gid of `entry` in the tar stream `reader`, or `None` if the
/// stream ends without it. Stops reading as soon as the entry is found.
pub fn entry_owner(reader: impl Read, entry: Entry<'_>) -> Result<Option<(u32, u32)>> {
    let want = match entry {
        Entry::First => None,
        Entry::Path(p) => Some(normal(p)),
    };
    let mut archive = tar::Archive::new(reader);
    for item in archive.entries().context("reading the archive")? {
        let item = item.context("reading the archive")?;
        if let Some(want) = want {
            let path = item.path_bytes();
            if normal(&String::from_utf8_lossy(&path)) != want {
                continue;
            }
        }
        let header = item.header();
        let id = |v: std::io::Result<u64>| -> Result<u32> {
            let v = v.context("reading an id from a tar header")?;
            u32::try_from(v).map_err(|_| anyhow!("tar id {v} out of range"))
        };
        return Ok(Some((id(header.uid())?, id(header.gid())?)));
    }
    Ok(None)
}

fn normal(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    path.strip_prefix("./")
        .unwrap_or(path)
        .trim_start_matches('/')
        .trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive of `(path, uid, gid)` entries, each an empty directory.
    fn archive(entries: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, uid, gid) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_uid(*uid);
            h.set_gid(*gid);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn finds_the_first_or_a_named_entry() {
        let long = format!("{}/db", "d".repeat(150));
        let tar = archive(&[("data", 184, 998), ("./etc/", 0, 0), (&long, 999, 1000)]);
        assert_eq!(
            entry_owner(&tar[..], Entry::First).unwrap(),
            Some((184, 998))
        );
        assert_eq!(
            entry_owner(&tar[..], Entry::Path("/etc")).unwrap(),
            Some((0, 0))
        );
        assert_eq!(
            entry_owner(&tar[..], Entry::Path(&format!("/{long}/"))).unwrap(),
            Some((999, 1000))
        );
        assert_eq!(entry_owner(&tar[..], Entry::Path("/nope")).unwrap(), None);
    }

    #[test]
    fn reads_large_ids_and_refuses_ids_past_u32() {
        let tar = archive(&[("big", 2147483647, 0), ("huge", 1 << 33, 0)]);
        assert_eq!(
            entry_owner(&tar[..], Entry::Path("big")).unwrap(),
            Some((2147483647, 0))
        );
        assert!(entry_owner(&tar[..], Entry::Path("huge")).is_err());
    }

    #[test]
    fn a_truncated_or_garbled_archive_is_an_error_or_nothing() {
        let tar = archive(&[("data", 1, 1)]);
        assert!(entry_owner(&tar[..100], Entry::First).is_err());
        let mut bad = tar.clone();
        bad[148..156].copy_from_slice(b"zzzzzzzz"); // the header checksum
        assert!(entry_owner(&bad[..], Entry::First).is_err());
    }
}
