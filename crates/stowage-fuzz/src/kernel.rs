//! What the kernel and container engines hand Stowage: the mount table,
//! statmount(2) answers, and image tar streams.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use stowage::archive::{entry_owner, Entry};
use stowage_sys::{decode_statmount, parse_mountinfo, MountEntry};

/// Parsing never fails the whole table, and every entry written back as
/// the kernel writes it (octal escapes for space, tab, newline and
/// backslash) parses to itself.
pub fn mountinfo(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let table = parse_mountinfo(&text);
    assert!(table.len() <= text.lines().count());
    for m in &table {
        let again = parse_mountinfo(&line(m));
        assert_eq!(again.as_slice(), std::slice::from_ref(m), "{}", line(m));
    }
}

fn line(m: &MountEntry) -> String {
    format!(
        "{} {} {} {} {} {} - {} {} rw",
        m.mount_id,
        m.parent_id,
        m.device,
        escape(&m.root),
        escape(&m.mount_point),
        if m.read_only { "ro" } else { "rw" },
        m.fs_type,
        m.source,
    )
}

fn escape(path: &Path) -> String {
    // The kernel escapes space, tab, newline and backslash and passes other
    // bytes raw; the parser takes text, so bytes outside printable ASCII
    // are escaped too, which it must read the same way.
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'!'..=b'~' if b != b'\\' => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

/// Any buffer decodes to a mount or an error, and no string of a decoded
/// mount holds a NUL (it ends at one).
pub fn statmount(data: &[u8]) {
    if let Ok(m) = decode_statmount(data) {
        for s in [m.root.as_os_str(), m.mount_point.as_os_str()] {
            assert!(!s.as_bytes().contains(&0));
        }
        assert!(!m.fs_type.contains('\0') && !m.source.contains('\0'));
    }
}

/// Any byte stream is an archive with or without the entry, or an error.
pub fn archive(data: &[u8]) {
    let _ = entry_owner(data, Entry::First);
    let _ = entry_owner(data, Entry::Path("/data/db"));
}
