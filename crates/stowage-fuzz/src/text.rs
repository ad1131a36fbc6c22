//! What users type: volume names and consumer ids, sizes, options,
//! ownership maps, labels and list filters.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use stowage_core::options::{self, MapKind};
use stowage_core::ownership::{Label, OwnershipSpec, COMMON_OPTIONS};
use stowage_core::{name, VolumeFilter, VolumeName};

/// A name that parses is Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*` in at most
/// 128 bytes (so never `..` nor a path) and parses again to itself.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(n) = VolumeName::parse(&text) {
        let s = n.as_str();
        assert!(!s.is_empty() && s.len() <= name::MAX_NAME_LEN, "{s:?}");
        assert!(s.as_bytes()[0].is_ascii_alphanumeric(), "{s:?}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
            "{s:?}"
        );
        assert_eq!(VolumeName::parse(s).unwrap(), n);
    }
    if name::validate_consumer(&text).is_ok() {
        assert!(!text.is_empty() && text.len() <= name::MAX_CONSUMER_LEN);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text:?}");
    }
}

/// A size that parses is positive, at most `i64::MAX` (what the kernel and
/// `off_t` take), and its formatted form parses back to it; a tmpfs size is
/// a number the kernel multiplies without overflow, or a percentage.
pub fn sizes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(n) = options::parse_size("size", &text) {
        assert!(n > 0 && n <= i64::MAX as u64, "{text:?} -> {n}");
        let shown = options::format_size(n);
        assert_eq!(options::parse_size("size", &shown).unwrap(), n, "{shown}");
    }
    let opts = options::from_pairs(&[("size", &text), ("mode", &text), ("uid", &text)]);
    if let Some(kernel) = options::tmpfs_size(&opts, "size").unwrap_or_default() {
        let (digits, unit) = kernel.split_at(
            kernel
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(kernel.len()),
        );
        let n: u64 = digits.parse().expect("tmpfs size digits");
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "%" => {
                assert!((1..=100).contains(&n), "{kernel}");
                0
            }
            other => panic!("tmpfs unit {other:?}"),
        };
        assert!(
            n > 0
                && n.checked_mul(1 << shift)
                    .is_some_and(|b| b <= i64::MAX as u64),
            "{kernel}"
        );
    }
    if let Ok(Some(mode)) = options::mode(&opts, "mode") {
        assert!(mode <= 0o7777);
    }
    if let Ok(Some(id)) = options::id(&opts, "uid") {
        assert_ne!(id, u32::MAX, "the kernel's no-change id");
    }
}

/// Option and label maps as requests bring them, through the checks every
/// door applies, the ownership and label options, and `ls` filters.
#[derive(Arbitrary, Debug)]
struct OptionInput {
    entries: Vec<(Key, String)>,
    filters: Vec<String>,
    root: (u32, u32),
}

/// A key: mostly one the parsers know, sometimes anything.
#[derive(Debug)]
struct Key(String);

/// Keys of options that only some drivers take, beside the common ones.
const DRIVER_KEYS: &[&str] = &["size", "mode", "uid", "gid"];

impl<'a> Arbitrary<'a> for Key {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let keys: Vec<&str> = COMMON_OPTIONS.iter().chain(DRIVER_KEYS).copied().collect();
        crate::word(u, &keys).map(Key)
    }
}

/// An ownership spec that parses composes a mapping whose ranges, on each
/// side, neither wrap past `u32::MAX` nor overlap.
pub fn options(data: &[u8]) {
    let Ok(input) = OptionInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let map: BTreeMap<String, String> = input.entries.into_iter().map(|(k, v)| (k.0, v)).collect();
    for kind in [MapKind::Options, MapKind::Labels] {
        let _ = options::check_map_limits(kind, &map);
    }
    let _ = Label::parse(&map);
    let _ = VolumeFilter::parse(input.filters.iter().map(String::as_str));
    let Ok(Some(spec)) = OwnershipSpec::parse(&map) else {
        return;
    };
    if let Ok(mapping) = spec.mapping(input.root) {
        for ranges in [&mapping.uids, &mapping.gids] {
            let mut disk: Vec<(u64, u64)> = Vec::new();
            let mut container: Vec<(u64, u64)> = Vec::new();
            for r in ranges.iter() {
                assert!(r.count > 0, "{mapping:?}");
                let d = (u64::from(r.disk), u64::from(r.disk) + u64::from(r.count));
                let c = (
                    u64::from(r.container),
                    u64::from(r.container) + u64::from(r.count),
                );
                assert!(d.1 <= 1 << 32 && c.1 <= 1 << 32, "{mapping:?}");
                for (seen, new) in [(&disk, d), (&container, c)] {
                    assert!(
                        seen.iter().all(|s| new.1 <= s.0 || s.1 <= new.0),
                        "overlapping ranges in {mapping:?}"
                    );
                }
                disk.push(d);
                container.push(c);
            }
        }
    }
}
