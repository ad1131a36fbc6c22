//! Attacks on the paths a CO hands over: Stowage unmounts only mounts it
//! can prove are the volume's, and never mounts in its own roots, above
//! them, or in the system's trees.

use std::path::Path;

use stowage_testkit::{fs_type_at, run};
use tonic::Code;

use crate::{code, create_req, Fixture, MIB};

/// A tmpfs that is not Stowage's, mounted at a fresh directory.
struct Victim {
    dir: tempfile::TempDir,
}

impl Victim {
    fn mount() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "victim", dir.path().to_str().unwrap()],
        );
        std::fs::write(dir.path().join("precious"), b"x").unwrap();
        Victim { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn intact(&self) -> bool {
        fs_type_at(self.path()).as_deref() == Some("tmpfs") && self.path().join("precious").exists()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn unpublish_and_unstage_leave_mounts_that_are_not_the_volumes() {
    let f = Fixture::start().await;
    let victim = Victim::mount();
    for (name, driver, size) in [
        ("idle1", "local", 0),
        ("idle2", "block", 64 * MIB),
        ("idle3", "tmpfs", 0),
    ] {
        let id = f
            .create(create_req(name, driver, size))
            .await
            .unwrap()
            .volume_id;
        let r = f.unpublish(&id, victim.path()).await;
        assert_eq!(code(r), Code::FailedPrecondition, "{driver}: unpublish");
        assert!(victim.intact(), "{driver}: unpublish detached the victim");
        let r = f.unstage(&id, victim.path()).await;
        assert_eq!(code(r), Code::FailedPrecondition, "{driver}: unstage");
        assert!(victim.intact(), "{driver}: unstage detached the victim");
    }

    // Another volume's publication is not this one's either.
    let a = f
        .create(create_req("a", "local", 0))
        .await
        .unwrap()
        .volume_id;
    let b = f
        .create(create_req("b", "block", 64 * MIB))
        .await
        .unwrap()
        .volume_id;
    let (staging, target) = (f.staging("b"), f.target("b"));
    f.stage(&b, &staging).await.unwrap();
    f.publish(&b, &staging, &target, false).await.unwrap();
    std::fs::write(target.join("data"), b"b's").unwrap();
    let a_staging = f.staging("a");
    f.stage(&a, &a_staging).await.unwrap();
    assert_eq!(
        code(f.unpublish(&a, &target).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(f.unstage(&a, &staging).await),
        Code::FailedPrecondition
    );
    assert_eq!(std::fs::read(target.join("data")).unwrap(), b"b's");

    // Its own mounts it still takes down, and a path that holds nothing
    // is simply not published.
    f.unpublish(&b, &target).await.unwrap();
    f.unstage(&b, &staging).await.unwrap();
    f.unstage(&a, &a_staging).await.unwrap();
    assert!(f.leftover_mounts().is_empty(), "{:?}", f.leftover_mounts());
    f.unpublish(&a, &target).await.unwrap();
    assert!(victim.intact());
}

#[tokio::test]
async fn staging_and_target_paths_are_confined() {
    let f = Fixture::start().await;
    let id = f
        .create(create_req("v", "local", 0))
        .await
        .unwrap()
        .volume_id;
    let staging = f.staging("v");
    let data = f.daemon.data.clone();
    let mounts = f.daemon.run.join("mounts");
    for bad in [
        Path::new("/etc"),
        Path::new("/"),
        Path::new("/usr/lib"),
        Path::new("/proc/self"),
        Path::new("/tmp"),
        &data,
        &data.join("volumes"),
        &mounts,
        data.parent().unwrap(),
    ] {
        // Mounts exactly there: other tests mount beneath these meanwhile.
        let at = |p: &Path| {
            let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let table = stowage_sys::parse_mountinfo(&table);
            table.iter().filter(|m| m.mount_point == p).count()
        };
        let before = at(bad);
        assert_eq!(
            code(f.stage(&id, bad).await),
            Code::InvalidArgument,
            "stage at {}",
            bad.display()
        );
        f.stage(&id, &staging).await.unwrap();
        let r = f.publish(&id, &staging, bad, false).await;
        assert_eq!(
            code(r),
            Code::InvalidArgument,
            "publish at {}",
            bad.display()
        );
        assert_eq!(at(bad), before, "{}", bad.display());
    }
    f.unstage(&id, &staging).await.unwrap();
    let err = f.stage(&id, Path::new("/etc")).await.unwrap_err();
    assert!(
        err.message().contains("system directory"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn allowed_paths_narrow_where_a_co_may_mount() {
    let allowed = tempfile::tempdir().unwrap();
    let allowed_arg = format!("--csi-allowed-paths={}", allowed.path().display());
    let f = Fixture::start_with(&[&allowed_arg]).await;
    let id = f
        .create(create_req("v", "local", 0))
        .await
        .unwrap()
        .volume_id;
    let err = f.stage(&id, &f.staging("outside")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("outside the allowed paths"),
        "{}",
        err.message()
    );
    let inside = allowed.path().join("staging");
    std::fs::create_dir(&inside).unwrap();
    f.stage(&id, &inside).await.unwrap();
    f.unstage(&id, &inside).await.unwrap();
}
