//! Raw block access: the volume's loop device itself, bound at the paths
//! the CO gives, its data reaching the workload byte for byte; read-only
//! devices that refuse writes; and devices that outlive a killed daemon
//! but not their last staging.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::time::Duration;

use stowage_testkit::csi::proto;
use stowage_testkit::{loop_devices_backing, wait_until};
use tonic::Code;

use proto::volume_capability::access_mode::Mode;

use crate::{block_cap, code, create_req, s, Fixture, MIB};

/// A CreateVolume request for a raw block volume of `size` bytes.
fn raw_req(name: &str, size: i64, mode: Mode) -> proto::CreateVolumeRequest {
    let mut req = create_req(name, "block", size);
    req.volume_capabilities = vec![block_cap(mode)];
    req
}

/// Waits until no loop device backs a file under `dir`. The kernel
/// finishes a detach at the device's last close, which a udev probe may
/// delay.
fn wait_detached(dir: &Path) {
    let none = || loop_devices_backing(dir).is_empty();
    wait_until("loop devices detached", Duration::from_secs(5), none);
}

fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

#[tokio::test]
async fn a_raw_block_volume_is_its_device_from_stage_to_delete() {
    let f = Fixture::start().await;
    let cap = block_cap(Mode::SingleNodeWriter);
    f.create(raw_req("raw", 64 * MIB, Mode::SingleNodeWriter))
        .await
        .unwrap();
    let staging = f.staging("raw");
    let writer = f.target("writer");
    let second = f.target("second");

    f.stage_as("raw", &staging, cap.clone()).await.unwrap();
    f.stage_as("raw", &staging, cap.clone()).await.unwrap();
    assert_eq!(loop_devices_backing(&f.daemon.base()).len(), 1);
    assert!(is_block_device(&staging.join("device")));
    for target in [&writer, &second] {
        f.publish_as("raw", &staging, target, cap.clone(), false)
            .await
            .unwrap();
        assert!(is_block_device(target), "{}", target.display());
    }
    f.publish_as("raw", &staging, &writer, cap.clone(), false)
        .await
        .unwrap();

    // What the workload writes to the device is what the device holds.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let dev = OpenOptions::new().write(true).open(&writer).unwrap();
    dev.write_all_at(&pattern, 8 * MIB as u64).unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    let mut read = vec![0; pattern.len()];
    let other = OpenOptions::new().read(true).open(&second).unwrap();
    other.read_exact_at(&mut read, 8 * MIB as u64).unwrap();
    assert_eq!(read, pattern);
    // A device still open when unstaged goes at its last close.
    drop(other);

    let stats = f.stats("raw", &writer).await;
    assert_eq!(stats.usage.len(), 1);
    assert_eq!(stats.usage[0].total, 64 * MIB);

    // While the device is in raw use, its filesystem is not mounted, the
    // volume is not deleted, and a read-only publication (which a device
    // node's mount cannot enforce) is refused.
    let fs_staging = f.staging("raw-as-fs");
    let as_fs = f.stage("raw", &fs_staging).await;
    assert_eq!(code(as_fs), Code::FailedPrecondition);
    assert_eq!(code(f.delete("raw").await), Code::FailedPrecondition);
    let ro = f.target("ro");
    let ro_publish = f.publish_as("raw", &staging, &ro, cap.clone(), true).await;
    assert_eq!(code(ro_publish), Code::FailedPrecondition);
    assert!(!ro.exists(), "a refused publish leaves no target behind");

    for target in [&writer, &second] {
        f.unpublish("raw", target).await.unwrap();
        assert!(!target.exists());
    }
    f.unstage("raw", &staging).await.unwrap();
    f.unstage("raw", &staging).await.unwrap();
    assert!(!staging.join("device").exists());
    wait_detached(&f.daemon.base());
    assert!(f.leftover_mounts().is_empty());

    // Afterwards the same volume mounts as a filesystem again.
    f.stage("raw", &fs_staging).await.unwrap();
    f.unstage("raw", &fs_staging).await.unwrap();
    assert_eq!(code(f.delete("raw").await), Code::Ok);
}

#[tokio::test]
async fn a_read_only_device_refuses_writes_and_raw_needs_a_device() {
    let f = Fixture::start().await;
    let cap = block_cap(Mode::SingleNodeReaderOnly);
    f.create(raw_req("raw-ro", 64 * MIB, Mode::SingleNodeReaderOnly))
        .await
        .unwrap();
    let staging = f.staging("raw-ro");
    let target = f.target("raw-ro");
    f.stage_as("raw-ro", &staging, cap.clone()).await.unwrap();
    // The node is staged read-only: a writable staging elsewhere conflicts.
    let rw = f
        .stage_as(
            "raw-ro",
            &f.staging("rw"),
            block_cap(Mode::SingleNodeWriter),
        )
        .await;
    assert_eq!(code(rw), Code::FailedPrecondition);
    f.publish_as("raw-ro", &staging, &target, cap.clone(), true)
        .await
        .unwrap();
    let refused = OpenOptions::new()
        .write(true)
        .open(&target)
        .and_then(|d| d.write_all_at(b"nope", 0));
    assert!(refused.is_err(), "a read-only device took a write");
    let mut first = [0u8; 4];
    let dev = OpenOptions::new().read(true).open(&target).unwrap();
    dev.read_exact_at(&mut first, 1024).unwrap();
    drop(dev);
    f.unpublish("raw-ro", &target).await.unwrap();
    f.unstage("raw-ro", &staging).await.unwrap();
    wait_detached(&f.daemon.base());
    f.delete("raw-ro").await.unwrap();

    // Directory volumes have no device to hand out.
    let mut req = raw_req("raw-local", 0, Mode::SingleNodeWriter);
    req.parameters.insert("driver".into(), "local".into());
    assert_eq!(code(f.create(req).await), Code::InvalidArgument);
    f.create(create_req("dir", "local", 0)).await.unwrap();
    let staging = f.staging("dir");
    let stage = f
        .stage_as("dir", &staging, block_cap(Mode::SingleNodeWriter))
        .await;
    assert_eq!(code(stage), Code::InvalidArgument);
    assert!(f.leftover_mounts().is_empty());
    f.delete("dir").await.unwrap();
}

#[tokio::test]
async fn a_device_outlives_a_killed_daemon_but_not_its_last_staging() {
    let mut f = Fixture::start().await;
    let cap = block_cap(Mode::SingleNodeWriter);
    f.create(raw_req("raw-kill", 64 * MIB, Mode::SingleNodeWriter))
        .await
        .unwrap();
    let staging = f.staging("raw-kill");
    let target = f.target("raw-kill");
    f.stage_as("raw-kill", &staging, cap.clone()).await.unwrap();
    f.publish_as("raw-kill", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    let dev = OpenOptions::new().write(true).open(&target).unwrap();
    dev.write_all_at(b"before the crash", 0).unwrap();
    dev.sync_all().unwrap();
    drop(dev);

    f.daemon.kill9();
    f.daemon.spawn();
    f.reconnect().await;
    // Still attached and bound; the CO's retries are repeats.
    f.stage_as("raw-kill", &staging, cap.clone()).await.unwrap();
    f.publish_as("raw-kill", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    let mut read = [0u8; 16];
    let dev = OpenOptions::new().read(true).open(&target).unwrap();
    dev.read_exact_at(&mut read, 0).unwrap();
    assert_eq!(&read, b"before the crash");
    drop(dev);
    f.unpublish("raw-kill", &target).await.unwrap();

    // The staging binding vanishes while the daemon is down (as after a
    // crash mid-unstage): at start the device is detached and forgotten.
    f.daemon.kill9();
    stowage_testkit::run("umount", &[&s(&staging.join("device"))]);
    f.daemon.spawn();
    f.reconnect().await;
    wait_detached(&f.daemon.base());
    assert!(f.daemon.log().contains("raw device staging gone"));
    f.unstage("raw-kill", &staging).await.unwrap();
    assert_eq!(code(f.delete("raw-kill").await), Code::Ok);
}
