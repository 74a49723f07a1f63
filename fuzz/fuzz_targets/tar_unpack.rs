//! Fuzzes the image store's layer unpacker (images/src/unpack.rs) with arbitrary (optionally compressed) tar
//! bytes. Invariants: no panic, limits hold, and nothing appears or changes outside the unpack root.
//!
//! The unpacker's two source files are compiled in directly rather than depending on the `images` crate, whose
//! registry client (reqwest, rustls, aws-lc) would make every sanitizer build several minutes longer; unpack.rs
//! only needs digest.rs from the crate.
#![no_main]

#[allow(dead_code)]
#[path = "../../images/src/digest.rs"]
mod digest;
#[allow(dead_code)]
#[path = "../../images/src/unpack.rs"]
mod unpack;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(dir.path().join("sentinel"), b"untouched").expect("sentinel");
    let limits = unpack::UnpackLimits { max_total_bytes: 4 << 20, max_entries: 2_000, max_extension_bytes: 64 << 10 };
    let mut u = unpack::Unpacker::new(&root, limits).expect("open root");
    let _ = u.unpack_layer(data);
    // Apply it twice: the second pass meets the first one's symlinks and directories.
    let _ = u.unpack_layer(data);
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).expect("read").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    assert_eq!(names, ["root", "sentinel"], "nothing created next to the unpack root");
    assert_eq!(std::fs::read(dir.path().join("sentinel")).expect("read"), b"untouched");
});
