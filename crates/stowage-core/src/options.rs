//! Parsing of driver options (`-o key=value`) and labels.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Driver options as the user gave them.
pub type Options = BTreeMap<String, String>;

/// Options from literal pairs, as code and tests write them.
pub fn from_pairs(pairs: &[(&str, &str)]) -> Options {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Longest option or label value accepted, in bytes.
const MAX_VALUE_LEN: usize = 4096;
/// Most labels or options on one volume.
const MAX_ENTRIES: usize = 64;

/// Fails on the first option of `opts` not in `valid`, listing the valid ones.
pub fn check_known(driver: &str, opts: &Options, valid: &[&'static str]) -> Result<()> {
    if let Some(option) = opts.keys().find(|k| !valid.contains(&k.as_str())) {
        let mut valid = valid.to_vec();
        valid.extend_from_slice(crate::ownership::COMMON_OPTIONS);
        return Err(Error::UnknownOption {
            driver: driver.to_string(),
            option: option.clone(),
            valid,
        });
    }
    Ok(())
}

/// What a map of strings in a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Options,
    Labels,
}

impl MapKind {
    /// How an error names one entry.
    fn entry(self) -> &'static str {
        match self {
            MapKind::Options => "option",
            MapKind::Labels => "label",
        }
    }
}

/// Checks the sizes of an option or label map.
pub fn check_map_limits(kind: MapKind, map: &BTreeMap<String, String>) -> Result<()> {
    let what = kind.entry();
    if map.len() > MAX_ENTRIES {
        return Err(Error::InvalidRequest(format!(
            "at most {MAX_ENTRIES} {what}s are allowed, got {}",
            map.len()
        )));
    }
    for (k, v) in map {
        let bad = |reason: &str| Error::InvalidEntry {
            what,
            key: k.clone(),
            reason: reason.to_string(),
        };
        if k.is_empty() || k.len() > 256 {
            return Err(bad("keys must be 1 to 256 bytes"));
        }
        if k.contains('=') || k.chars().any(char::is_control) {
            return Err(bad("keys must not contain '=' or control characters"));
        }
        if v.len() > MAX_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(bad(
                "values must be at most 4096 bytes without control characters",
            ));
        }
    }
    Ok(())
}

/// An optional numeric id option (`uid`, `gid`).
pub fn id(opts: &Options, key: &str) -> Result<Option<u32>> {
    opts.get(key).map(|v| parse_id(key, v, v)).transpose()
}

/// Parses `part`, one uid or gid within the value of option `key`.
/// `u32::MAX` is the kernel's "no change" value and is refused.
pub fn parse_id(key: &str, value: &str, part: &str) -> Result<u32> {
    match part.parse::<u32>() {
        Ok(v) if v != u32::MAX && !part.starts_with('+') => Ok(v),
        _ => Err(Error::invalid_option(
            key,
            value,
            format!("{part:?} is not an id from 0 to 4294967294"),
        )),
    }
}

/// An optional octal permission mode (`mode=0755`), at most `07777`.
pub fn mode(opts: &Options, key: &str) -> Result<Option<u32>> {
    let Some(value) = opts.get(key) else {
        return Ok(None);
    };
    let digits = value.strip_prefix("0o").unwrap_or(value);
    match u32::from_str_radix(digits, 8) {
        Ok(v) if v <= 0o7777 && !digits.is_empty() && !digits.starts_with('+') => Ok(Some(v)),
        _ => Err(Error::invalid_option(
            key,
            value,
            "expected an octal mode from 0 to 7777, such as 0755",
        )),
    }
}

/// An optional tmpfs size: a byte count with an optional `k`, `m` or `g`
/// suffix, or a percentage of memory (`50%`). Returned normalised for the
/// kernel's `size=` parameter.
pub fn tmpfs_size(opts: &Options, key: &str) -> Result<Option<String>> {
    let Some(value) = opts.get(key) else {
        return Ok(None);
    };
    let bad = || {
        Error::invalid_option(
            key,
            value,
            "expected a size such as 64m, 2g, 1048576 or 50%",
        )
    };
    let lower = value.to_ascii_lowercase();
    let (digits, suffix) = match lower.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "%" if (1..=100).contains(&number) => return Ok(Some(format!("{number}%"))),
        _ => return Err(bad()),
    };
    if number == 0 {
        return Err(bad());
    }
    // The kernel multiplies and rounds up to pages in 64 bits without a
    // check: 17179869184g wraps to 0 (no limit) and
    // 18014398509481988k to one page. The same bound as every size.
    if number
        .checked_mul(1 << shift)
        .is_none_or(|n| n > i64::MAX as u64)
    {
        return Err(Error::invalid_option(key, value, "size too large"));
    }
    Ok(Some(format!("{number}{suffix}")))
}

/// An optional size in bytes (see [`parse_size`]).
pub fn size(opts: &Options, key: &str) -> Result<Option<u64>> {
    opts.get(key).map(|v| parse_size(key, v)).transpose()
}

/// Parses a positive size: a byte count with an optional binary suffix
/// `K`, `M`, `G`, `T` or `P` (also written `Ki`, `KiB`, ...; powers of
/// 1024, as `truncate` and Docker read them).
pub fn parse_size(key: &str, value: &str) -> Result<u64> {
    let bad = |why: &str| Error::invalid_option(key, value, why);
    let upper = value.trim().to_ascii_uppercase();
    let split = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    let (digits, suffix) = upper.split_at(split);
    if digits.is_empty() {
        return Err(bad("expected a size such as 512M, 10G or 1073741824"));
    }
    let shift = match suffix.trim_end_matches("IB").trim_end_matches(['I', 'B']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad("unknown unit; use K, M, G, T or P (powers of 1024)")),
    };
    let number: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    if number == 0 {
        return Err(bad("a size must be positive"));
    }
    number
        .checked_mul(1 << shift)
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| bad("size too large"))
}

/// Formats a byte count the way [`parse_size`] reads it, exactly.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        for (text, bytes) in [
            ("10G", 10 << 30),
            ("512m", 512 << 20),
            ("1GiB", 1 << 30),
            ("4Ki", 4096),
            ("1048576", 1 << 20),
            ("2T", 2 << 40),
        ] {
            assert_eq!(parse_size("size", text).unwrap(), bytes, "{text}");
            assert_eq!(parse_size("size", &format_size(bytes)).unwrap(), bytes);
        }
        for bad in ["-1", "10Q", "0", "", "G", "1.5G", "99999999999P", "1 G B"] {
            assert!(parse_size("size", bad).is_err(), "{bad}");
        }
    }

    use super::from_pairs as opts;

    #[test]
    fn unknown_option_lists_valid_ones() {
        let err = check_known("local", &opts(&[("colour", "red")]), &["uid", "gid"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown option \"colour\" for driver local; valid options: uid, gid, \
             owner, uidmap, gidmap, ownership, allow-root, label"
        );
    }

    #[test]
    fn ids() {
        assert_eq!(id(&opts(&[("uid", "184")]), "uid").unwrap(), Some(184));
        assert_eq!(id(&opts(&[]), "uid").unwrap(), None);
        for bad in ["-1", "4294967295", "x", "", "+1", "1 "] {
            assert!(id(&opts(&[("uid", bad)]), "uid").is_err(), "{bad}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(
            mode(&opts(&[("mode", "0755")]), "mode").unwrap(),
            Some(0o755)
        );
        assert_eq!(
            mode(&opts(&[("mode", "1777")]), "mode").unwrap(),
            Some(0o1777)
        );
        for bad in ["888", "17777", "", "rwx", "+7"] {
            assert!(mode(&opts(&[("mode", bad)]), "mode").is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        let s = |v: &str| tmpfs_size(&opts(&[("size", v)]), "size");
        assert_eq!(s("64M").unwrap().as_deref(), Some("64m"));
        assert_eq!(s("50%").unwrap().as_deref(), Some("50%"));
        assert_eq!(s("1048576").unwrap().as_deref(), Some("1048576"));
        for bad in [
            "-1",
            "10Q",
            "0",
            "",
            "1,mode=777",
            "101%",
            "1.5g",
            "m",
            "17179869184g",
            "18014398509481988k",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(s(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_limits() {
        let labels = |pairs| check_map_limits(MapKind::Labels, &opts(pairs));
        assert!(labels(&[("a", "b")]).is_ok());
        assert!(labels(&[("a=b", "c")]).is_err());
        assert!(labels(&[("", "c")]).is_err());
        assert!(labels(&[("a", "x\ny")]).is_err());
        let err = check_map_limits(MapKind::Options, &opts(&[("path", "a\nb")])).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid option \"path\""),
            "{err}"
        );
    }
}
