//! Who may reach the daemon and its state: root only, whatever umask the
//! daemon was started with and whatever modes an older data root has.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use stowage_testkit::{stderr_of, Daemon};

use crate::BIN;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn check_root_only(d: &Daemon) {
    let sockets = [
        d.socket(),
        d.csi_socket(),
        d.base().join("plugins/stowage.sock"),
    ];
    for s in &sockets {
        assert_eq!(mode(s), 0o660, "{}", s.display());
    }
    assert_eq!(mode(&d.data), 0o700);
    for f in ["stowage.db", "stowage.lock"] {
        assert_eq!(mode(&d.data.join(f)), 0o600, "{f}");
    }
    // A user other than root reaches the socket's directory, but not it.
    let out = Command::new(BIN)
        .uid(65534)
        .gid(65534)
        .arg("--host")
        .arg(format!("unix://{}", d.socket().display()))
        .args(["volume", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("ermission denied"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn sockets_and_state_are_root_only_whatever_the_umask() {
    let (_wrapper, bin) = crate::wrapped_bin("umask 000");
    let mut d = Daemon::start(&bin);
    chmod(&d.base(), 0o755);
    check_root_only(&d);

    // A data root and database left readable by an older version.
    d.stop();
    chmod(&d.data, 0o755);
    chmod(&d.data.join("stowage.db"), 0o644);
    d.spawn();
    check_root_only(&d);
    assert!(d.log().contains("tightened to 0700"), "{}", d.log());
}
