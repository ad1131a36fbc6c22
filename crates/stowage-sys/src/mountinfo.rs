//! Parsing of `/proc/self/mountinfo` (proc(5)).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo, reduced to what Stowage reconciles against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `major:minor` of the filesystem's device (field 3).
    pub device: String,
    /// Root of the mount within its filesystem (field 4).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Whether this mount (not the filesystem) is read-only (field 6).
    pub read_only: bool,
    pub fs_type: String,
    pub source: String,
}

/// Parses the text of a mountinfo file. Malformed lines are skipped: the
/// kernel writes this file, and one odd line must not stop reconciliation.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split(' ');
    let mount_id = pre.next()?.parse().ok()?;
    let parent_id = pre.next()?.parse().ok()?;
    let device = pre.next()?.to_string();
    let root = unescape(pre.next()?);
    let mount_point = unescape(pre.next()?);
    let read_only = pre.next()?.split(',').any(|o| o == "ro");
    let mut post = post.split(' ');
    let fs_type = post.next()?.to_string();
    let source = post.next().unwrap_or("").to_string();
    Some(MountEntry {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        read_only,
        fs_type,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` for space, `\012` for newline,
/// `\134` for backslash) in a mountinfo path field.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_escapes() {
        let text = "\
36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 36 0:44 / /run/stowage/mounts/abc ro,relatime shared:5 - tmpfs stowage-abc rw,size=1024k
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].root, PathBuf::from("/mnt1"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].device, "98:0");
        assert!(!m[0].read_only);
        assert_eq!(m[1].mount_id, 40);
        assert_eq!(m[1].parent_id, 36);
        assert_eq!(m[1].source, "stowage-abc");
        assert!(m[1].read_only);
    }

    #[test]
    fn keeps_backslash_that_is_not_an_escape() {
        assert_eq!(unescape("a\\x"), PathBuf::from("a\\x"));
        assert_eq!(unescape("a\\134b"), PathBuf::from("a\\b"));
        assert_eq!(unescape("end\\"), PathBuf::from("end\\"));
    }
}
