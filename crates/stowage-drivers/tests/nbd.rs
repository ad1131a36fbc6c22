//! The NBD transport with real nbdkit and nbdfuse, between two hosts in
//! network namespaces: what one exports the other attaches with its key,
//! and nothing else does.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use stowage_core::transport::{AttachSpec, Endpoint, ExportSpec, Psk, Running, Transport};
use stowage_core::Layout;
use stowage_drivers::Nbd;
use stowage_testkit::netns::TestNet;

const MIB: u64 = 1 << 20;

fn read_at(file: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn nothing_runs(t: &Nbd, run: &Path) {
    assert_eq!(t.running().unwrap(), Running::default());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let run = run.to_string_lossy();
    assert!(!mounts.contains(&*run), "a mount left under {run}");
}

#[test]
fn an_export_serves_the_holder_of_its_key_and_no_one_else() {
    let net = TestNet::new(2);
    let (home_host, user_host) = (&net.hosts[0], &net.hosts[1]);
    let dirs = tempfile::tempdir().unwrap();
    let image = dirs.path().join("image");
    let (home_run, user_run) = (dirs.path().join("run-home"), dirs.path().join("run-user"));
    {
        let f = File::create(&image).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(b"written at home", MIB).unwrap();
    }
    let (home, user) = (
        Nbd::new(&Layout::new(dirs.path().join("data-home"), &home_run)),
        Nbd::new(&Layout::new(dirs.path().join("data-user"), &user_run)),
    );
    let psk = Psk::generate().unwrap();
    let export = |id: &'static str, psk: &Psk| {
        let spec = ExportSpec {
            id,
            image: &image,
            listen: home_host.addr.parse().unwrap(),
            psk,
            read_only: false,
        };
        home_host.within(|| home.export(&spec))
    };
    let attach = |id: &'static str, endpoint: &Endpoint, psk: &Psk| {
        let spec = AttachSpec {
            id,
            endpoint,
            psk,
            read_only: false,
        };
        user_host.within(|| user.attach(&spec))
    };

    let endpoint = export("a1", &psk).unwrap();
    assert_eq!(endpoint.address.ip().to_string(), home_host.addr);
    assert_eq!(export("a1", &psk).unwrap(), endpoint, "exporting again");
    let key_file = home_run.join("nbd/exports/a1/psk");
    let mode = std::fs::metadata(&key_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // The holder of the key reads what home wrote, and writes back.
    let file = attach("a1", &endpoint, &psk).unwrap();
    assert_eq!(attach("a1", &endpoint, &psk).unwrap(), file, "again");
    assert_eq!(read_at(&file, MIB, 15).unwrap(), b"written at home");
    {
        let mut f = OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(2 * MIB)).unwrap();
        f.write_all(b"written away").unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(user.running().unwrap().attachments, ["a1"]);
    user.detach("a1").unwrap();
    assert_eq!(read_at(&image, 2 * MIB, 12).unwrap(), b"written away");
    nothing_runs(&user, &user_run);

    // Another key, a guessed name, or no key at all: refused, and nothing
    // is left behind on the node that tried.
    let wrong = Psk::from_parts(&psk.identity, &"ab".repeat(32)).unwrap();
    let refused = attach("a2", &endpoint, &wrong).unwrap_err().to_string();
    eprintln!("another key: {refused}");
    assert!(refused.contains("with this attachment's key"), "{refused}");
    nothing_runs(&user, &user_run);
    let guessed = Endpoint {
        address: endpoint.address,
        name: "disk".into(),
    };
    assert!(attach("a3", &guessed, &psk).is_err());
    nothing_runs(&user, &user_run);
    let plain = user_host
        .command("nbdinfo")
        .arg("--size")
        .arg(format!("nbd://{}/{}", endpoint.address, endpoint.name))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "read without TLS");

    // Stopping the export cuts the attachment: its next read fails.
    let file = attach("a1", &endpoint, &psk).unwrap();
    assert_eq!(read_at(&file, MIB, 15).unwrap(), b"written at home");
    home.unexport("a1").unwrap();
    assert!(!key_file.exists(), "the key goes with the export");
    let cut = read_at(&file, 3 * MIB, 4096);
    eprintln!("a read after the export stopped: {cut:?}");
    assert!(cut.is_err(), "read after the export stopped: {cut:?}");
    user.detach("a1").unwrap();
    nothing_runs(&user, &user_run);
    nothing_runs(&home, &home_run);
}
