//! Import without a registry: an OCI layout made by umoci (directory and tar), a `docker save` archive made here,
//! and archives that lie about their contents.

mod common;

use common::*;
use images::ImageStore;
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unpacked(store: &ImageStore, image: &images::Image) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let mut u = images::unpack::Unpacker::new(t.path(), images::UnpackLimits::default()).unwrap();
    for l in image.manifest().layers() {
        let p = store
            .root()
            .join("blobs/sha256")
            .join(&l.digest().as_ref()[7..]);
        u.unpack_layer(std::fs::File::open(p).unwrap()).unwrap();
    }
    t
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn umoci_layout_directory_and_tar() {
    if skip_without(&["umoci"]) {
        return;
    }
    if !is_root() {
        println!("SKIP: umoci unpack/repack here needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let bundle = t.path().join("bundle");
    let image = format!("{}:v1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
    std::fs::write(bundle.join("rootfs/etc/greeting"), b"made by umoci\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "A=1",
    ]));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));

    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let img = store.import(&layout, "umoci/test:v1").unwrap();
    assert_eq!(img.name(), Some("docker.io/umoci/test:v1"));
    assert_eq!(
        img.config().config().as_ref().unwrap().cmd().as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    let tree = unpacked(&store, &img);
    assert_eq!(
        std::fs::read(tree.path().join("etc/greeting")).unwrap(),
        b"made by umoci\n"
    );

    // The same layout as a tar.
    let tarball = t.path().join("layout.tar");
    tar_dir(&layout, &tarball);
    let img2 = store.import(&tarball, "umoci/test:tar").unwrap();
    assert_eq!(img2.digest(), img.digest());
    // Provenance: what the user imported (the tar, not its extraction directory), kept in the index.
    let origin = images::Origin::Import {
        path: tarball.display().to_string(),
    };
    assert_eq!(img2.origin(), Some(&origin));
    assert_eq!(
        store.lookup("umoci/test:tar").unwrap().unwrap().origin(),
        Some(&origin)
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0,
        "work dir removed"
    );
}

/// A `docker save` archive: manifest.json, <config hex>.json, <id>/layer.tar (uncompressed), repositories.
fn docker_archive(dir: &Path, corrupt_layer: bool, wrong_config_name: bool) -> (Vec<u8>, String) {
    std::fs::create_dir_all(dir).unwrap();
    let layers = sample_layers();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(&l.2)).collect();
    let config = serde_json::to_vec(&json!({"architecture":"amd64","os":"linux","config":{"Cmd":["echo","hi"],"Env":["PATH=/bin"]},
        "rootfs":{"type":"layers","diff_ids":diff_ids}}))
    .unwrap();
    let config_name = if wrong_config_name {
        format!("{}.json", "0".repeat(64))
    } else {
        format!("{}.json", &sha256(&config)[7..])
    };
    std::fs::write(dir.join(&config_name), &config).unwrap();
    let mut names = Vec::new();
    for (i, (_, _, tar)) in layers.iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        std::fs::create_dir_all(dir.join(&id)).unwrap();
        let mut data = tar.clone();
        if corrupt_layer && i == 1 {
            data[600] ^= 1;
        }
        std::fs::write(dir.join(&id).join("layer.tar"), &data).unwrap();
        std::fs::write(dir.join(&id).join("VERSION"), b"1.0").unwrap();
        names.push(format!("{id}/layer.tar"));
    }
    let manifest = json!([{"Config": config_name, "RepoTags": ["demo/app:1"], "Layers": names}]);
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("repositories"), br#"{"demo/app":{"1":"x"}}"#).unwrap();
    let out = dir.with_extension("tar");
    tar_dir(dir, &out);
    (config, out.display().to_string())
}

#[test]
fn docker_save_archive() {
    let t = tempfile::tempdir().unwrap();
    let (config, archive) = docker_archive(&t.path().join("save"), false, false);
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let img = store.import(&archive, "demo/app:1").unwrap();
    assert_eq!(img.manifest().config().digest().as_ref(), sha256(&config));
    assert_eq!(img.manifest().layers().len(), 3);
    let tree = unpacked(&store, &img);
    assert_eq!(std::fs::read(tree.path().join("opq/new")).unwrap(), b"new");
    assert!(!tree.path().join("etc/remove-me").exists());
    // gzip-compressed archive works too.
    let gz = t.path().join("save.tar.gz");
    std::fs::write(&gz, gzip(&std::fs::read(&archive).unwrap())).unwrap();
    assert_eq!(
        store.import(&gz, "demo/app:gz").unwrap().digest(),
        img.digest()
    );
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn lying_archives_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();

    let (_, archive) = docker_archive(&t.path().join("corrupt"), true, false);
    let err = store.import(&archive, "x:1").unwrap_err().to_string();
    assert!(
        err.contains("diff_id") && err.contains("expected digest"),
        "{err}"
    );

    let (_, archive) = docker_archive(&t.path().join("badname"), false, true);
    let err = store.import(&archive, "x:1").unwrap_err().to_string();
    assert!(err.contains("failed to verify config"), "{err}");

    // An OCI layout whose layer blob was altered after the manifest was written.
    let l = write_oci_layout(&t.path().join("oci"), "v1", &sample_layers(), &["sh"]);
    let layer = l.dir.join("blobs/sha256").join(&sha256(&l.layers[0])[7..]);
    let mut data = std::fs::read(&layer).unwrap();
    data[20] ^= 0xff;
    std::fs::write(&layer, data).unwrap();
    let err = store.import(&l.dir, "x:1").unwrap_err().to_string();
    assert!(err.contains("failed to verify layer"), "{err}");

    // A tar that tries to escape while being unpacked for import.
    let evil = t.path().join("evil.tar");
    std::fs::write(&evil, RawTar::new().file("../../evil", b"x").finish()).unwrap();
    let err = format!("{:#?}", store.import(&evil, "x:1").unwrap_err());
    assert!(err.contains("../../evil"), "{err}");

    let err = store.import(t.path(), "x:1").unwrap_err().to_string();
    assert!(err.contains("neither an OCI image layout"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
}
