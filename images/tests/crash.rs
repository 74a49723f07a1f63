//! Crash safety: pulls (and rootfs builds) in child processes are SIGKILLed at random points; after each kill the
//! store is readable and consistent, and the next pull completes. Also two processes pulling one image at once.

mod common;

use common::*;
use images::{ImageStore, PullOptions};
use rand::Rng;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The child half: runs only when the parent test re-executes this binary with MVRUN_CRASH_CHILD set.
#[test]
fn child_pull() {
    let Ok(spec) = std::env::var("MVRUN_CRASH_CHILD") else {
        return;
    };
    let (root, reference) = spec.split_once('|').expect("root|reference");
    let store = ImageStore::open(root).expect("open");
    let img = store.pull(reference, &PullOptions::new()).expect("pull");
    store.rootfs_image(&img).expect("rootfs");
}

fn spawn_child(root: &Path, reference: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_pull", "--test-threads=1", "--nocapture"])
        .env(
            "MVRUN_CRASH_CHILD",
            format!("{}|{reference}", root.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

/// A readable store: index parses, every image loads, every blob hashes to its name, any rootfs image present is
/// a complete file system, and opening it swept tmp/.
fn assert_consistent(root: &Path) {
    let store = ImageStore::open(root).expect("store opens after a crash");
    for i in store.list().expect("index readable") {
        store
            .lookup(&i.name)
            .expect("image loads")
            .expect("named image present");
    }
    for e in std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256(&data)[7..],
            *e.file_name().to_string_lossy(),
            "blob content matches its name"
        );
    }
    for e in std::fs::read_dir(root.join("rootfs")).unwrap().flatten() {
        let st = Command::new("fsck.erofs")
            .arg(e.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "rootfs image {} is complete",
            e.path().display()
        );
    }
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "work files swept on open"
    );
}

fn big_image(dir: &Path) -> Layout {
    // Incompressible layers, a few MB each, so a pull takes long enough to be cut at many points.
    let mut rng = rand::rng();
    let layers: Vec<_> = (0..4)
        .map(|i| {
            let mut data = vec![0u8; 3 << 19];
            rng.fill(&mut data[..]);
            let tar = RawTar::new()
                .file(&format!("data{i}"), &data)
                .file(&format!("small{i}"), b"x")
                .finish();
            (
                gzip(&tar),
                "application/vnd.oci.image.layer.v1.tar+gzip",
                tar,
            )
        })
        .collect();
    write_oci_layout(dir, "v1", &layers, &["sh"])
}

#[test]
fn killed_pulls_leave_a_consistent_store() {
    if skip_without(&["docker-registry", "skopeo", "fsck.erofs"]) {
        return;
    }
    let reg = Registry::start(None);
    let src = tempfile::tempdir().unwrap();
    let layout = big_image(&src.path().join("oci"));
    reg.push(&layout.dir, "v1", "crash/big");
    let reference = format!("{}/crash/big:v1", reg.host());

    // Calibrate: how long a whole pull + rootfs build takes in a child.
    let cal = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let out = spawn_child(cal.path(), &reference)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = t0.elapsed();
    println!("full pull + rootfs in a child: {full:?}");

    let root = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    for round in 0..8 {
        let mut child = spawn_child(root.path(), &reference);
        let at = Duration::from_micros(rng.random_range(0..full.as_micros() as u64));
        std::thread::sleep(at);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        println!(
            "round {round}: killed at {at:?}{}",
            if finished {
                " (had already finished)"
            } else {
                ""
            }
        );
        assert_consistent(root.path());
        // Later rounds resume from whatever earlier ones stored; now and then start over so that the kill can
        // land in the download phase again.
        if round % 2 == 1 {
            let store = ImageStore::open(root.path()).unwrap();
            let _ = store.remove(&reference);
            store.prune().unwrap();
        }
    }
    let store = ImageStore::open(root.path()).unwrap();
    let img = store
        .pull(&reference, &PullOptions::new())
        .expect("pull completes after the crashes");
    assert_eq!(img.digest().as_str(), layout.manifest_digest);
    store.rootfs_image(&img).expect("rootfs completes");
    assert_consistent(root.path());
}

#[test]
fn two_processes_pull_the_same_image_at_once() {
    if skip_without(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(None);
    let src = tempfile::tempdir().unwrap();
    let layout = write_oci_layout(&src.path().join("oci"), "v1", &sample_layers(), &["sh"]);
    reg.push(&layout.dir, "v1", "crash/twice");
    let root = tempfile::tempdir().unwrap();
    let reference = format!("{}/crash/twice:v1", reg.host());
    let children: Vec<_> = (0..2)
        .map(|_| spawn_child(root.path(), &reference))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_consistent(root.path());
    assert_eq!(
        ImageStore::open(root.path()).unwrap().list().unwrap().len(),
        1
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("rootfs"))
            .unwrap()
            .count(),
        1
    );
}
