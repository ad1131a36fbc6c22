//! Presenting a volume to its consumers as another owner, without
//! touching the data where the kernel allows it, and labelling it for
//! SELinux. These options apply to every driver.
//!
//! - `owner=UID:GID`: the volume root's on-disk owner (and everything it
//!   owns) appears as UID:GID, and their writes land as the on-disk owner.
//! - `uidmap=DISK:CONTAINER:COUNT[,...]` and `gidmap=...`: the general form.
//! - `ownership=auto|idmap|chown`: idmapped mount, falling back (auto) to a
//!   recursive ownership change where the filesystem refuses idmapping.
//! - `allow-root=true`: permits a mapping that presents anything as 0.
//! - `label=shared|private|CONTEXT`: SELinux label, like `:z` / `:Z`.

use serde::{Deserialize, Serialize};
use stowage_sys::{IdMapping, IdRange};

use crate::error::{Error, Result};
use crate::options::{parse_id, Options};

/// Options every driver takes; the service handles them.
pub const COMMON_OPTIONS: &[&str] = &[
    "owner",
    "uidmap",
    "gidmap",
    "ownership",
    "allow-root",
    "label",
];

/// Most ranges in one map (the kernel takes 340; nobody needs that many).
const MAX_RANGES: usize = 64;

/// The SELinux type containers may read and write.
const CONTAINER_TYPE: &str = "system_u:object_r:container_file_t:s0";

/// Every id a user namespace can map: 0 to 2^32 - 2.
const ID_SPACE: u64 = u32::MAX as u64;

/// The mapping that presents a volume to a mount group (CSI's
/// `volume_mount_group`, Kubernetes' fsGroup): the root's on-disk group
/// shows as `group` and `group` as the root's group, so that the map stays
/// one-to-one; every other uid and gid shows as itself, so that every
/// caller can still create files.
pub fn group_mapping(root_gid: u32, group: u32) -> IdMapping {
    let identity = |from: u64, to: u64| {
        (from < to).then(|| IdRange {
            disk: from as u32,
            container: from as u32,
            count: (to - from) as u32,
        })
    };
    let (low, high) = (root_gid.min(group) as u64, root_gid.max(group) as u64);
    let mut gids: Vec<IdRange> = Vec::new();
    if low == high {
        gids.extend(identity(0, ID_SPACE));
    } else {
        gids.extend(identity(0, low));
        gids.push(IdRange {
            disk: low as u32,
            container: high as u32,
            count: 1,
        });
        gids.extend(identity(low + 1, high));
        gids.push(IdRange {
            disk: high as u32,
            container: low as u32,
            count: 1,
        });
        gids.extend(identity(high + 1, ID_SPACE));
    }
    IdMapping {
        uids: identity(0, ID_SPACE).into_iter().collect(),
        gids,
    }
}

/// Splits options into the common ones and the driver's own.
pub fn split(options: &Options) -> (Options, Options) {
    options
        .clone()
        .into_iter()
        .partition(|(k, _)| COMMON_OPTIONS.contains(&k.as_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Auto,
    Idmap,
    Chown,
}

/// What the ownership options ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipSpec {
    pub owner: Option<(u32, u32)>,
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub method: Method,
    pub allow_root: bool,
}

impl OwnershipSpec {
    /// `None` when the volume asks for no ownership change.
    pub fn parse(opts: &Options) -> Result<Option<Self>> {
        let method = match opts.get("ownership").map(String::as_str) {
            None | Some("auto") => Method::Auto,
            Some("idmap") => Method::Idmap,
            Some("chown") => Method::Chown,
            Some(v) => {
                return Err(Error::invalid_option(
                    "ownership",
                    v,
                    "expected auto, idmap or chown",
                ))
            }
        };
        let allow_root = match opts.get("allow-root").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(Error::invalid_option(
                    "allow-root",
                    v,
                    "expected true or false",
                ))
            }
        };
        let owner = opts.get("owner").map(|v| parse_owner(v)).transpose()?;
        let uids = opts
            .get("uidmap")
            .map(|v| parse_ranges("uidmap", v))
            .transpose()?
            .unwrap_or_default();
        let gids = opts
            .get("gidmap")
            .map(|v| parse_ranges("gidmap", v))
            .transpose()?
            .unwrap_or_default();
        if owner.is_none() && uids.is_empty() && gids.is_empty() {
            for key in ["ownership", "allow-root"] {
                if let Some(v) = opts.get(key) {
                    return Err(Error::invalid_option(
                        key,
                        v,
                        "needs owner, or uidmap and gidmap",
                    ));
                }
            }
            return Ok(None);
        }
        if owner.is_none() && (uids.is_empty() != gids.is_empty()) {
            let (key, v) = if uids.is_empty() {
                ("gidmap", &opts["gidmap"])
            } else {
                ("uidmap", &opts["uidmap"])
            };
            return Err(Error::invalid_option(
                key,
                v,
                "uidmap and gidmap go together (or use owner)",
            ));
        }
        let spec = OwnershipSpec {
            owner,
            uids,
            gids,
            method,
            allow_root,
        };
        if let Some((uid, gid)) = owner {
            if !allow_root && (uid == 0 || gid == 0) {
                return Err(Error::invalid_option(
                    "owner",
                    &opts["owner"],
                    "presenting a volume as root is refused unless allow-root=true",
                ));
            }
        }
        spec.check("uidmap", &spec.uids)?;
        spec.check("gidmap", &spec.gids)?;
        Ok(Some(spec))
    }

    /// Composes the mapping for a volume whose root is owned by `root` on
    /// disk: `owner` maps that owner, the explicit ranges the rest.
    pub fn mapping(&self, root: (u32, u32)) -> Result<IdMapping> {
        let mut uids = self.uids.clone();
        let mut gids = self.gids.clone();
        if let Some((uid, gid)) = self.owner {
            uids.insert(
                0,
                IdRange {
                    disk: root.0,
                    container: uid,
                    count: 1,
                },
            );
            gids.insert(
                0,
                IdRange {
                    disk: root.1,
                    container: gid,
                    count: 1,
                },
            );
        }
        self.check("uidmap", &uids)?;
        self.check("gidmap", &gids)?;
        Ok(IdMapping { uids, gids })
    }

    /// Ranges must be non-empty, within the id space, disjoint on both
    /// sides, few enough, and not present anything as 0 unless allowed.
    fn check(&self, key: &str, ranges: &[IdRange]) -> Result<()> {
        let text = ranges
            .iter()
            .map(|r| format!("{}:{}:{}", r.disk, r.container, r.count))
            .collect::<Vec<_>>()
            .join(",");
        let bad = |reason: String| Error::invalid_option(key, &text, reason);
        if ranges.len() > MAX_RANGES {
            return Err(bad(format!("at most {MAX_RANGES} ranges")));
        }
        for (i, a) in ranges.iter().enumerate() {
            if !self.allow_root && a.container == 0 {
                return Err(bad(
                    "presenting files as root (id 0) is refused unless allow-root=true".into(),
                ));
            }
            for b in &ranges[i + 1..] {
                if overlaps(a.disk, a.count, b.disk, b.count) {
                    return Err(bad(format!(
                        "on-disk ids of {} and {} overlap",
                        a.disk, b.disk
                    )));
                }
                if overlaps(a.container, a.count, b.container, b.count) {
                    return Err(bad(format!(
                        "container ids of {} and {} overlap",
                        a.container, b.container
                    )));
                }
            }
        }
        Ok(())
    }
}

fn overlaps(a: u32, a_len: u32, b: u32, b_len: u32) -> bool {
    u64::from(a) < u64::from(b) + u64::from(b_len) && u64::from(b) < u64::from(a) + u64::from(a_len)
}

fn parse_owner(value: &str) -> Result<(u32, u32)> {
    let (uid, gid) = value.split_once(':').ok_or_else(|| {
        Error::invalid_option("owner", value, "expected UID:GID, such as 184:998")
    })?;
    Ok((
        parse_id("owner", value, uid)?,
        parse_id("owner", value, gid)?,
    ))
}

fn parse_ranges(key: &str, value: &str) -> Result<Vec<IdRange>> {
    value
        .split(',')
        .map(|r| {
            let parts: Vec<&str> = r.split(':').collect();
            let [disk, container, count] = parts[..] else {
                return Err(Error::invalid_option(
                    key,
                    value,
                    "expected DISK:CONTAINER:COUNT[,...]",
                ));
            };
            let range = IdRange {
                disk: parse_id(key, value, disk)?,
                container: parse_id(key, value, container)?,
                count: parse_id(key, value, count)?,
            };
            let end_ok =
                |start: u32| u64::from(start) + u64::from(range.count) <= u64::from(u32::MAX);
            if range.count == 0 || !end_ok(range.disk) || !end_ok(range.container) {
                return Err(Error::invalid_option(
                    key,
                    value,
                    "a range needs a count of at least 1 and must end below 4294967295",
                ));
            }
            Ok(range)
        })
        .collect()
}

/// An SELinux label request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// `:z`: every container may share the volume.
    Shared,
    /// `:Z`: private to its containers, through a category pair of its own.
    Private,
    Context(String),
}

impl Label {
    pub fn parse(opts: &Options) -> Result<Option<Self>> {
        let Some(v) = opts.get("label") else {
            return Ok(None);
        };
        match v.as_str() {
            "shared" | "z" => Ok(Some(Label::Shared)),
            "private" | "Z" => Ok(Some(Label::Private)),
            ctx if is_context(ctx) => Ok(Some(Label::Context(ctx.to_string()))),
            _ => Err(Error::invalid_option(
                "label",
                v,
                "expected shared, private or an SELinux context user:role:type:level",
            )),
        }
    }

    /// The context to apply to the volume with this id.
    pub fn context(&self, volume_id: &str) -> String {
        match self {
            Label::Shared => CONTAINER_TYPE.to_string(),
            Label::Private => {
                // Two distinct categories derived from the volume id.
                let h = volume_id
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                let (a, mut b) = (h % 1024, (h / 1024) % 1024);
                if a == b {
                    b = (b + 1) % 1024;
                }
                format!("{CONTAINER_TYPE}:c{},c{}", a.min(b), a.max(b))
            }
            Label::Context(c) => c.clone(),
        }
    }
}

/// A plausible SELinux context: at least `user:role:type:level`, drawn
/// from a safe alphabet, so nothing can be injected into a mount option.
fn is_context(s: &str) -> bool {
    s.len() <= 255
        && s.split(':').count() >= 4
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:,-".contains(&b))
}

/// How a volume was presented at its last mount, for `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presentation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<OwnershipReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipReport {
    /// `idmap` or `chown`.
    pub method: String,
    /// The mapping, `uids D:C:N,... gids D:C:N,...`.
    pub mapping: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelReport {
    pub context: String,
    pub applied: bool,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::options::from_pairs as opts;

    fn range(disk: u32, container: u32, count: u32) -> IdRange {
        IdRange {
            disk,
            container,
            count,
        }
    }

    #[test]
    fn a_mount_group_swaps_with_the_root_group_and_keeps_every_other_id() {
        let m = group_mapping(0, 2000);
        assert_eq!(m.gid_to_container(0), Some(2000));
        assert_eq!(m.gid_to_container(2000), Some(0));
        for id in [1, 1999, 2001, 65534, u32::MAX - 1] {
            assert_eq!(m.gid_to_container(id), Some(id), "{id}");
            assert_eq!(m.uid_to_container(id), Some(id), "{id}");
        }
        assert_eq!(m.gid_to_container(u32::MAX), None);
        assert_eq!(m.gids.len(), 4, "no empty range below 0");
        let covered: u64 = m.gids.iter().map(|r| r.count as u64).sum();
        assert_eq!(covered, ID_SPACE);
        let same = group_mapping(7, 7);
        assert_eq!(same.gids, same.uids);
        assert_eq!(group_mapping(3000, 5).gid_to_container(5), Some(3000));
    }

    #[test]
    fn owner_composes_with_the_root_owner() {
        let spec = OwnershipSpec::parse(&opts(&[("owner", "184:998")]))
            .unwrap()
            .unwrap();
        let m = spec.mapping((15149, 15149)).unwrap();
        assert_eq!(m.uids, vec![range(15149, 184, 1)]);
        assert_eq!(m.gids, vec![range(15149, 998, 1)]);
        assert_eq!(spec.method, Method::Auto);
    }

    #[test]
    fn explicit_ranges_compose_with_owner_and_overlaps_are_refused() {
        let spec = OwnershipSpec::parse(&opts(&[
            ("owner", "184:998"),
            ("uidmap", "2000:3000:10,5000:6000:1"),
            ("gidmap", "2000:3000:10"),
        ]))
        .unwrap()
        .unwrap();
        let m = spec.mapping((1000, 1000)).unwrap();
        assert_eq!(
            m.uids,
            vec![
                range(1000, 184, 1),
                range(2000, 3000, 10),
                range(5000, 6000, 1)
            ]
        );
        // A root owner inside an explicit range overlaps it.
        let err = spec.mapping((2005, 1000)).unwrap_err().to_string();
        assert!(
            err.contains("on-disk ids of 2005 and 2000 overlap"),
            "{err}"
        );
        assert_eq!(m.uid_to_container(2003), Some(3003));
        assert_eq!(m.uid_to_container(2010), None);
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        for (pairs, needle) in [
            (vec![("owner", "184")], "expected UID:GID"),
            (vec![("owner", "-1:2")], "not an id"),
            (vec![("owner", "0:998")], "allow-root"),
            (vec![("owner", "184:0")], "allow-root"),
            (vec![("uidmap", "1:2:3")], "go together"),
            (
                vec![("uidmap", "1:2"), ("gidmap", "1:2:3")],
                "DISK:CONTAINER:COUNT",
            ),
            (
                vec![("uidmap", "1:2:0"), ("gidmap", "1:2:1")],
                "count of at least 1",
            ),
            (
                vec![("uidmap", "4294967290:1:10"), ("gidmap", "1:2:1")],
                "end below",
            ),
            (
                vec![("uidmap", "0:1000:10,5:2000:10"), ("gidmap", "1:2:1")],
                "on-disk ids",
            ),
            (
                vec![("uidmap", "0:1000:10,50:1005:10"), ("gidmap", "1:2:1")],
                "container ids",
            ),
            (
                vec![("uidmap", "1000:0:1"), ("gidmap", "1:2:1")],
                "allow-root",
            ),
            (
                vec![("owner", "1:1"), ("ownership", "magic")],
                "auto, idmap or chown",
            ),
            (vec![("ownership", "chown")], "needs owner"),
            (
                vec![("owner", "1:1"), ("allow-root", "yes")],
                "true or false",
            ),
        ] {
            let err = OwnershipSpec::parse(&opts(&pairs)).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
        let many = (0..65)
            .map(|i| format!("{}:{}:1", i * 10 + 1, i * 10 + 1))
            .collect::<Vec<_>>()
            .join(",");
        let err =
            OwnershipSpec::parse(&opts(&[("uidmap", &many), ("gidmap", "1:1:1")])).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
    }

    #[test]
    fn root_is_allowed_only_when_asked() {
        let spec = OwnershipSpec::parse(&opts(&[("owner", "0:0"), ("allow-root", "true")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            spec.mapping((15149, 15149))
                .unwrap()
                .uid_to_container(15149),
            Some(0)
        );
        assert!(OwnershipSpec::parse(&opts(&[])).unwrap().is_none());
    }

    #[test]
    fn labels() {
        assert_eq!(
            Label::parse(&opts(&[("label", "shared")])).unwrap(),
            Some(Label::Shared)
        );
        let p = Label::Private.context("abc");
        assert!(
            p.starts_with("system_u:object_r:container_file_t:s0:c"),
            "{p}"
        );
        assert_ne!(Label::Private.context("abc"), Label::Private.context("abd"));
        let c = "system_u:object_r:svirt_sandbox_file_t:s0:c1,c2";
        assert_eq!(
            Label::parse(&opts(&[("label", c)])).unwrap(),
            Some(Label::Context(c.into()))
        );
        for bad in [
            "nonsense",
            "a:b:c",
            "a:b:c:d,context=evil x",
            "user:role:type:s0\n",
        ] {
            assert!(Label::parse(&opts(&[("label", bad)])).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_separates_common_options() {
        let (common, own) = split(&opts(&[
            ("owner", "1:1"),
            ("uid", "5"),
            ("label", "shared"),
        ]));
        assert_eq!(common.keys().collect::<Vec<_>>(), ["label", "owner"]);
        assert_eq!(own.keys().collect::<Vec<_>>(), ["uid"]);
    }
}
