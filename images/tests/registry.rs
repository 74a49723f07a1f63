//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1, images pushed with skopeo), with and without
//! htpasswd auth, checked byte for byte against the source layout; rootfs images built and mounted.

mod common;

use common::*;
use images::{ImageStore, PullOptions, RootfsFormat};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn tools() -> bool {
    skip_without(&["docker-registry", "skopeo", "htpasswd"])
}

fn store_at(dir: &Path) -> ImageStore {
    ImageStore::open(dir).expect("open store")
}

fn blob(store: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(store.join("blobs/sha256").join(&digest[7..])).expect("blob in store")
}

/// Mounts a rootfs image read-only (loop) and runs `f` on the mount point; returns None (with a SKIP line) when
/// mounting is not possible here.
fn with_mounted<T>(image: &Path, fstype: &str, f: impl FnOnce(&Path) -> T) -> Option<T> {
    if !is_root() {
        println!("SKIP: mounting {fstype} needs root");
        return None;
    }
    let mnt = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", fstype, "-o", "loop,ro"])
        .arg(image)
        .arg(mnt.path())
        .status()
        .unwrap();
    if !st.success() {
        println!("SKIP: cannot loop-mount {fstype} here");
        return None;
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mnt.path())));
    let _ = Command::new("umount").arg(mnt.path()).status();
    Some(r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
}

fn check_sample_tree(root: &Path) {
    assert_eq!(
        std::fs::read(root.join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
    assert!(!root.join("etc/remove-me").exists());
    assert!(!root.join("opq/old").exists());
    assert_eq!(std::fs::read(root.join("opq/new")).unwrap(), b"new");
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    use std::os::unix::fs::MetadataExt;
    let m = root.join("owned").metadata().unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o640));
    assert_eq!(
        root.join("bin/tool").metadata().unwrap().mode() & 0o7777,
        0o4755
    );
}

#[test]
fn pull_matches_source_byte_for_byte_and_builds_rootfs() {
    if tools() {
        return;
    }
    let reg = Registry::start(None);
    let src = tempfile::tempdir().unwrap();
    let layout = write_oci_layout(
        &src.path().join("oci"),
        "v1",
        &sample_layers(),
        &["/bin/sh"],
    );
    reg.push(&layout.dir, "v1", "test/sample");

    let root = tempfile::tempdir().unwrap();
    let store = store_at(root.path());
    let reference = format!("{}/test/sample:v1", reg.host());
    let image = store
        .resolve_or_pull(
            &reference,
            &PullOptions::new().with_progress(Arc::new(images::ConsoleProgress::auto())),
        )
        .unwrap();
    assert_eq!(
        image.digest().as_str(),
        layout.manifest_digest,
        "same manifest digest as the source"
    );
    assert_eq!(blob(root.path(), &layout.manifest_digest), layout.manifest);
    // Provenance: a localhost registry is spoken to over plain HTTP, and the store says so, also on a later lookup.
    let registry_origin = images::Origin::Registry {
        registry: reg.host().to_string(),
        tls: false,
    };
    assert_eq!(image.origin(), Some(&registry_origin));
    let again = store.lookup(&reference).unwrap().unwrap();
    assert_eq!(again.origin(), Some(&registry_origin));
    assert_eq!(
        blob(root.path(), image.manifest().config().digest().as_ref()),
        layout.config
    );
    for (l, src_bytes) in image.manifest().layers().iter().zip(&layout.layers) {
        assert_eq!(
            &blob(root.path(), l.digest().as_ref()),
            src_bytes,
            "layer {} byte for byte",
            l.digest()
        );
    }
    let cfg = image.config().config().as_ref().unwrap();
    assert_eq!(cfg.cmd().as_deref(), Some(&["/bin/sh".to_string()][..]));

    // Listed, found locally (registry gone), by name and by digest.
    assert_eq!(store.list().unwrap().len(), 1);
    drop(reg);
    let again = store
        .resolve_or_pull(&reference, &PullOptions::new())
        .unwrap();
    assert_eq!(again.digest(), image.digest());
    let by_digest = store
        .lookup(&format!("{}/test/sample@{}", "127.0.0.1:1", image.digest()))
        .unwrap();
    assert!(
        by_digest.is_some(),
        "a digest reference is found by content"
    );

    for format in [RootfsFormat::Erofs, RootfsFormat::Ext4] {
        let store = store_at(root.path()).with_rootfs_format(format);
        let path = store.rootfs_image(&image).unwrap();
        assert!(path.to_string_lossy().ends_with(format.extension()));
        assert_eq!(store.rootfs_image(&image).unwrap(), path, "cached");
        with_mounted(&path, format.extension(), check_sample_tree);
    }
    // Nothing left in tmp/.
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn htpasswd_auth_and_clear_errors() {
    if tools() {
        return;
    }
    let reg = Registry::start(Some(("alice", "s3cret")));
    let src = tempfile::tempdir().unwrap();
    let layout = write_oci_layout(
        &src.path().join("oci"),
        "v1",
        &sample_layers()[..1],
        &["sh"],
    );
    reg.push(&layout.dir, "v1", "private/app");
    let root = tempfile::tempdir().unwrap();
    let store = store_at(root.path());
    let reference = format!("{}/private/app:v1", reg.host());
    let anon = PullOptions::new()
        .with_docker_config(false)
        .with_attempts(1);

    let err = store.pull(&reference, &anon).unwrap_err().to_string();
    assert!(err.contains("refused access"), "{err}");
    let err = store
        .pull(&reference, &anon.clone().with_credentials("alice", "wrong"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused access"), "{err}");

    let image = store
        .pull(
            &reference,
            &anon.clone().with_credentials("alice", "s3cret"),
        )
        .unwrap();
    assert_eq!(image.digest().as_str(), layout.manifest_digest);

    // Credentials from a Docker config file.
    let cfg = tempfile::tempdir().unwrap();
    let auth = base64_encode(b"alice:s3cret");
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    std::env::set_var("DOCKER_CONFIG", cfg.path());
    let root2 = tempfile::tempdir().unwrap();
    let image = store_at(root2.path())
        .pull(&reference, &PullOptions::new().with_attempts(1))
        .unwrap();
    std::env::remove_var("DOCKER_CONFIG");
    assert_eq!(image.digest().as_str(), layout.manifest_digest);

    let creds = PullOptions::new()
        .with_credentials("alice", "s3cret")
        .with_attempts(1);
    let err = store
        .pull(&format!("{}/private/missing:v1", reg.host()), &creds)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
    let err = store
        .pull(&format!("{}/private/app:nope", reg.host()), &creds)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
    let err = store
        .pull(
            "no-such-registry.invalid/x:1",
            &PullOptions::new().with_attempts(1),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown host"), "{err}");
    // Nothing named by the failures.
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn two_concurrent_pulls_of_one_image() {
    if tools() {
        return;
    }
    let reg = Registry::start(None);
    let src = tempfile::tempdir().unwrap();
    let layout = write_oci_layout(&src.path().join("oci"), "v1", &sample_layers(), &["sh"]);
    reg.push(&layout.dir, "v1", "test/concurrent");
    let root = tempfile::tempdir().unwrap();
    let reference = format!("{}/test/concurrent:v1", reg.host());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (root, reference) = (root.path().to_path_buf(), reference.clone());
            std::thread::spawn(move || {
                let store = ImageStore::open(&root).unwrap();
                let img = store.pull(&reference, &PullOptions::new()).unwrap();
                store.rootfs_image(&img).unwrap()
            })
        })
        .collect();
    let paths: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(paths[0], paths[1]);
    let store = store_at(root.path());
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(root.path().join("rootfs"))
            .unwrap()
            .count(),
        1,
        "built once"
    );
}

#[test]
fn rm_and_prune() {
    if tools() {
        return;
    }
    let reg = Registry::start(None);
    let src = tempfile::tempdir().unwrap();
    let layout = write_oci_layout(&src.path().join("oci"), "v1", &sample_layers(), &["sh"]);
    reg.push(&layout.dir, "v1", "test/prune");
    let root = tempfile::tempdir().unwrap();
    let store = store_at(root.path());
    let img = store
        .pull(
            &format!("{}/test/prune:v1", reg.host()),
            &PullOptions::new(),
        )
        .unwrap();
    store.rootfs_image(&img).unwrap();
    let busybox = store.ensure_builtin_busybox();
    let r = store.prune().unwrap();
    assert_eq!(
        (r.blobs, r.rootfs_images),
        (0, 0),
        "everything is referenced"
    );
    store
        .remove(&format!("{}/test/prune:v1", reg.host()))
        .unwrap();
    let r = store.prune().unwrap();
    assert_eq!(
        (r.blobs, r.rootfs_images),
        (5, 1),
        "manifest, config, 3 layers and the rootfs go"
    );
    if busybox.is_ok() {
        assert!(
            store.lookup("busybox").unwrap().is_some(),
            "other images stay"
        );
    }
    assert!(store
        .remove("nothere:1")
        .unwrap_err()
        .to_string()
        .contains("not in the local store"));
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
