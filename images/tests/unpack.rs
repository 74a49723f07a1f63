//! The layer unpacker against well-formed and hostile layers: every hostile case is refused with an error naming
//! the entry, and nothing outside the unpack directory changes.

mod common;

use common::*;
use images::unpack::Unpacker;
use images::UnpackLimits;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn unpack_all(
    root: &Path,
    layers: &[Vec<u8>],
    limits: UnpackLimits,
) -> Result<Vec<String>, String> {
    let mut u = Unpacker::new(root, limits).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for l in layers {
        let d = u.unpack_layer(&l[..]).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        ids.push(d.to_string());
    }
    Ok(ids)
}

#[test]
fn layers_apply_in_order_with_whiteouts_links_modes_and_owners() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let layers = sample_layers();
    let ids = unpack_all(
        &root,
        &layers.iter().map(|l| l.0.clone()).collect::<Vec<_>>(),
        UnpackLimits::default(),
    )
    .unwrap();
    // The returned digests are the uncompressed tars' digests (the diff_ids).
    assert_eq!(ids, layers.iter().map(|l| sha256(&l.2)).collect::<Vec<_>>());
    assert_eq!(
        std::fs::read(root.join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
    assert!(
        !root.join("etc/remove-me").exists(),
        "whiteout removes the lower file"
    );
    assert!(
        !root.join("opq/old").exists(),
        "opaque dir hides lower entries"
    );
    assert_eq!(
        std::fs::read(root.join("opq/new")).unwrap(),
        b"new",
        "opaque dir keeps this layer's entries"
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    let (a, b) = (
        root.join("bin/tool").metadata().unwrap(),
        root.join("bin/tool2").metadata().unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard link shares the inode");
    assert_eq!(a.mode() & 0o7777, 0o4755, "set-uid mode kept");
    let o = root.join("owned").metadata().unwrap();
    assert_eq!(o.mode() & 0o7777, 0o640);
    if is_root() {
        assert_eq!((o.uid(), o.gid()), (1000, 1001), "ownership kept");
    } else {
        println!("SKIP: ownership check needs root");
    }
}

#[test]
fn xattrs_are_kept_and_host_steering_ones_dropped() {
    let t = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .file("f", b"data")
        .finish();
    unpack_all(t.path(), &[tar], UnpackLimits::default()).unwrap();
    let p = t.path().join("f");
    let mut buf = [0u8; 16];
    match rustix::fs::getxattr(&p, "user.note", &mut buf) {
        Ok(n) => assert_eq!(&buf[..n], b"hello"),
        Err(e) => println!("SKIP: user xattrs unsupported here: {e}"),
    }
    assert!(
        rustix::fs::getxattr(&p, "trusted.overlay.opaque", &mut buf).is_err(),
        "trusted.* is dropped"
    );
}

/// Unpacks `layers` into a fresh dir inside a parent that also holds a sentinel; expects a refusal mentioning
/// `needle`, and checks the parent (outside the unpack dir) is unchanged.
fn assert_refused(layers: &[Vec<u8>], limits: UnpackLimits, needle: &str) {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    let root = t.path().join("a/b/root");
    std::fs::create_dir_all(&root).unwrap();
    let before = snapshot(&outside);
    let err = unpack_all(&root, layers, limits).expect_err("hostile layer must be refused");
    assert!(
        err.contains(needle),
        "error {err:?} should mention {needle:?}"
    );
    assert_eq!(snapshot(&outside), before, "nothing outside changed");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    let parent_entries: Vec<_> = std::fs::read_dir(t.path().join("a/b"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        parent_entries,
        vec![std::ffi::OsString::from("root")],
        "nothing created next to the root"
    );
    println!("refused as expected: {err}");
}

#[test]
fn dotdot_and_absolute_paths_are_refused() {
    assert_refused(
        &[RawTar::new().file("../escape", b"x").finish()],
        UnpackLimits::default(),
        "\"../escape\"",
    );
    assert_refused(
        &[RawTar::new().file("a/../../escape", b"x").finish()],
        UnpackLimits::default(),
        "'..'",
    );
    assert_refused(
        &[RawTar::new().file("/abs/escape", b"x").finish()],
        UnpackLimits::default(),
        "absolute path",
    );
    assert_refused(
        &[RawTar::new().file(".wh..", b"").finish()],
        UnpackLimits::default(),
        "malformed whiteout",
    );
}

#[test]
fn writes_through_symlinks_out_of_root_are_refused() {
    // Relative symlink climbing out, then a write through it (also from a later layer).
    let l1 = RawTar::new().symlink("up", "../../..").finish();
    let l2 = RawTar::new().file("up/outside/pwned", b"x").finish();
    assert_refused(&[l1, l2], UnpackLimits::default(), "\"up/outside/pwned\"");
    // Absolute symlink to a host directory.
    let abs = RawTar::new()
        .symlink("etc", "/etc")
        .file("etc/pwned", b"x")
        .finish();
    assert_refused(&[abs], UnpackLimits::default(), "out of the image root");
}

#[test]
fn replacing_a_symlink_never_writes_its_target() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"original").unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let l1 = RawTar::new()
        .symlink("x", victim.to_str().unwrap())
        .finish();
    let l2 = RawTar::new().file("x", b"overwritten").finish();
    unpack_all(&root, &[l1, l2], UnpackLimits::default()).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert_eq!(std::fs::read(root.join("x")).unwrap(), b"overwritten");
    assert!(!root
        .join("x")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn hard_links_out_of_root_are_refused() {
    assert_refused(
        &[RawTar::new().hardlink("h", "../../outside/victim").finish()],
        UnpackLimits::default(),
        "\"h\"",
    );
    assert_refused(
        &[RawTar::new().hardlink("h", "/etc/passwd").finish()],
        UnpackLimits::default(),
        "absolute path",
    );
    let via_symlink = RawTar::new()
        .symlink("s", "/etc")
        .hardlink("h", "s/passwd")
        .finish();
    assert_refused(
        &[via_symlink],
        UnpackLimits::default(),
        "out of the image root",
    );
    assert_refused(
        &[RawTar::new().hardlink("h", "missing").finish()],
        UnpackLimits::default(),
        "not in the image",
    );
}

#[test]
fn device_nodes_are_refused() {
    assert_refused(
        &[RawTar::new().device("dev/sda").finish()],
        UnpackLimits::default(),
        "device nodes",
    );
}

#[test]
fn size_and_entry_limits_stop_bombs() {
    let small = UnpackLimits {
        max_total_bytes: 1 << 20,
        max_entries: 10,
        max_extension_bytes: 64 << 10,
    };
    // A 64 MiB file of zeros gzips to ~64 KiB: the limit stops it after 1 MiB.
    let big = RawTar::new().file("bomb", &vec![0u8; 64 << 20]).finish();
    assert_refused(&[gzip(&big)], small.clone(), "\"bomb\"");
    let mut many = RawTar::new();
    for i in 0..20 {
        many = many.file(&format!("f{i}"), b"");
    }
    assert_refused(&[many.finish()], small.clone(), "more than 10 entries");
    // A PAX header claiming 10 MiB is refused before the tar crate reads it into memory.
    let pax = RawTar::new()
        .raw_header("PaxHeader", tar::EntryType::XHeader, 10 << 20, &[])
        .finish();
    assert_refused(&[pax], small.clone(), "extension header");
    // Limits span layers.
    let half = RawTar::new().file("half", &vec![1u8; 700 << 10]).finish();
    let half2 = RawTar::new().file("half2", &vec![1u8; 700 << 10]).finish();
    assert_refused(&[half, half2], small, "\"half2\"");
}

#[test]
fn truncated_and_garbage_layers_fail_cleanly() {
    let tar = RawTar::new().file("f", &[7u8; 4096]).finish();
    let err = unpack_all(
        tempfile::tempdir().unwrap().path(),
        &[tar[..1000].to_vec()],
        UnpackLimits::default(),
    )
    .unwrap_err();
    assert!(err.contains("failed to"), "{err}");
    let g = gzip(&tar);
    let err = unpack_all(
        tempfile::tempdir().unwrap().path(),
        &[g[..g.len() / 2].to_vec()],
        UnpackLimits::default(),
    )
    .unwrap_err();
    assert!(err.contains("failed to"), "{err}");
}

#[test]
fn long_names_and_pax_size_are_followed_without_false_alarms() {
    // GNU long names (tar::Builder writes an 'L' header for paths over 100 bytes).
    let long = format!("{}/file", "d".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let gnu = b.into_inner().unwrap();
    // A PAX size record overriding the header's size field (0 here). The file's 512 bytes of content look like
    // a PAX header claiming 10 MiB: a guard that ignored the PAX size would take them for a header and refuse.
    let mut decoy = tar::Header::new_ustar();
    decoy.set_entry_type(tar::EntryType::XHeader);
    decoy.set_size(10 << 20);
    decoy.set_cksum();
    let content = decoy.as_bytes().to_vec();
    let mut pax = RawTar::new().pax(&[("size", b"512")]);
    pax = pax.raw_header("sized", tar::EntryType::Regular, 0, &content);
    let pax = pax.file("after", b"next").finish();

    let t = tempfile::tempdir().unwrap();
    unpack_all(
        t.path(),
        &[gnu, pax],
        UnpackLimits {
            max_extension_bytes: 4096,
            ..UnpackLimits::default()
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(t.path().join(&long)).unwrap(), b"abc");
    assert_eq!(std::fs::read(t.path().join("sized")).unwrap(), content);
    assert_eq!(std::fs::read(t.path().join("after")).unwrap(), b"next");
}
