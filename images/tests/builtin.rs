//! The built-in busybox image: made from the host's busybox-static, stored like any image, and its rootfs
//! (erofs and ext4) holds a working shell.

mod common;

use common::*;
use images::{ImageStore, PullOptions, RootfsFormat};
use std::process::Command;

#[test]
fn builtin_busybox_resolves_and_runs_from_its_rootfs() {
    if !images::builtin::busybox_path().exists() {
        println!(
            "SKIP: {} missing (install busybox-static)",
            images::builtin::busybox_path().display()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let img = store
        .resolve_or_pull("busybox", &PullOptions::new())
        .unwrap();
    assert_eq!(img.name(), Some("mvrun/busybox:latest"));
    assert_eq!(img.origin(), Some(&images::Origin::BuiltIn));
    let cfg = img.config().config().as_ref().unwrap();
    assert_eq!(cfg.cmd().as_deref(), Some(&["sh".to_string()][..]));
    assert!(cfg.env().as_ref().unwrap()[0].starts_with("PATH="));
    // Same digest every time (reproducible layer), and every alias finds it.
    let again = ImageStore::open(tempfile::tempdir().unwrap().path())
        .unwrap()
        .ensure_builtin_busybox()
        .unwrap();
    assert_eq!(again.digest(), img.digest());
    for alias in ["busybox:latest", "mvrun/busybox", "mvrun/busybox:latest"] {
        assert_eq!(
            store.lookup(alias).unwrap().unwrap().digest(),
            img.digest(),
            "{alias}"
        );
    }
    assert_eq!(store.list().unwrap()[0].name, "mvrun/busybox:latest");

    for format in [RootfsFormat::Erofs, RootfsFormat::Ext4] {
        let path = ImageStore::open(root.path())
            .unwrap()
            .with_rootfs_format(format)
            .rootfs_image(&img)
            .unwrap();
        if !is_root() {
            println!("SKIP: mounting needs root");
            continue;
        }
        let mnt = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", format.extension(), "-o", "loop,ro"])
            .arg(&path)
            .arg(mnt.path())
            .status()
            .unwrap();
        if !ok.success() {
            println!("SKIP: cannot loop-mount here");
            continue;
        }
        let out = Command::new("chroot")
            .arg(mnt.path())
            .args([
                "/bin/sh",
                "-c",
                "echo hello from $(id -un) && cat /etc/group",
            ])
            .output();
        let passwd = std::fs::read_to_string(mnt.path().join("etc/passwd"));
        let _ = Command::new("umount").arg(mnt.path()).status();
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello from root\nroot:x:0:"));
        assert!(passwd.unwrap().contains("nobody:x:65534"));
    }
}
