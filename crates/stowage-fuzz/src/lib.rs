//! The fuzz targets, one function per parser or door, each taking the raw
//! bytes a fuzzer makes. `fuzz/` wraps each in a libFuzzer target for
//! `cargo fuzz`; `tests/replay.rs` runs every committed corpus through
//! them on the stable toolchain, as CI does.
//!
//! A target panics on a property broken, not only on a crash: what each
//! one checks is said where it is defined.

mod doors;
mod kernel;
mod text;

pub use doors::{authority, csi, plugin, rest};
pub use kernel::{archive, mountinfo, statmount};
pub use text::{names, options, sizes};

/// One of `dictionary`'s words, or sometimes any text: inputs mostly
/// made of what the parsers know reach past their first checks.
fn word(u: &mut arbitrary::Unstructured<'_>, dictionary: &[&str]) -> arbitrary::Result<String> {
    let i = u.choose_index(dictionary.len() + 1)?;
    Ok(match dictionary.get(i) {
        Some(w) => w.to_string(),
        None => arbitrary::Arbitrary::arbitrary(u)?,
    })
}

/// A fuzz target: takes any bytes, panics on a defect.
pub type Target = fn(&[u8]);

/// Every target by the name its corpus directory and `cargo fuzz` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("names", names),
    ("sizes", sizes),
    ("options", options),
    ("mountinfo", mountinfo),
    ("statmount", statmount),
    ("archive", archive),
    ("rest", rest),
    ("plugin", plugin),
    ("csi", csi),
    ("authority", authority),
];
