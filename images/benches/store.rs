//! Image store measurements (run with `cargo bench -p images --bench store`; as root, with docker-registry,
//! skopeo, erofs-utils and e2fsprogs installed). Prints a Markdown table; the figures in images/README.md come
//! from here.
//!
//! The multi-layer image is made from Debian packages' files on this host (python3.11's standard library, perl's
//! modules, tzdata + locales data, glibc's gconv modules), four gzip layers, pushed with skopeo to a local
//! docker-registry. Measured: pull (cold store), unpack, rootfs build erofs vs ext4 (time and size), and the
//! second run (cache hit: resolve + rootfs lookup).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use images::{ImageStore, PullOptions, RootfsFormat};
use std::path::Path;
use std::time::{Duration, Instant};

fn layer_from(
    dirs: &[&str],
    extra: impl FnOnce(&mut tar::Builder<Vec<u8>>),
) -> (Vec<u8>, &'static str, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for d in dirs {
        if Path::new(d).exists() {
            b.append_dir_all(d.trim_start_matches('/'), d)
                .expect("append dir");
        }
    }
    extra(&mut b);
    let tar = b.into_inner().expect("tar");
    (
        gzip(&tar),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        tar,
    )
}

/// CPU time (user + system) of this process and of its waited-for children: on a shared, loaded machine this is
/// steadier than wall time.
fn cpu() -> (Duration, Duration) {
    let get = |who| {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one rusage into the pointer we pass, which points to enough zeroed memory.
        let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
        assert_eq!(rc, 0, "getrusage");
        // SAFETY: getrusage succeeded, so the struct is initialized (it was zeroed before anyway).
        let ru = unsafe { ru.assume_init() };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

fn cpu_since(start: (Duration, Duration)) -> String {
    let now = cpu();
    format!(
        "cpu {:.2} s",
        ((now.0 - start.0) + (now.1 - start.1)).as_secs_f64()
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    if skip_without(&["docker-registry", "skopeo", "mkfs.erofs", "mkfs.ext4"]) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let layers = vec![
        layer_from(&["/usr/lib/python3.11"], |_| {}),
        layer_from(&["/usr/lib/x86_64-linux-gnu/perl"], |_| {}),
        layer_from(&["/usr/share/zoneinfo", "/usr/share/i18n"], |_| {}),
        layer_from(&["/usr/lib/x86_64-linux-gnu/gconv"], |b| {
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(
                &mut h,
                "usr/lib/python3.11/.wh.turtledemo",
                std::io::empty(),
            )
            .expect("whiteout");
        }),
    ];
    let raw: u64 = layers.iter().map(|l| l.2.len() as u64).sum();
    let gz: u64 = layers.iter().map(|l| l.0.len() as u64).sum();
    let layout = write_oci_layout(&work.path().join("oci"), "v1", &layers, &["python3"]);
    let reg = Registry::start(None);
    reg.push(&layout.dir, "v1", "bench/debian-files");
    let reference = format!("{}/bench/debian-files:v1", reg.host());

    let mut rows: Vec<(String, String)> = Vec::new();
    rows.push((
        "image".into(),
        format!("4 layers, {} uncompressed tar, {} gzip", mib(raw), mib(gz)),
    ));

    // Pull into a cold store.
    let root = work.path().join("store");
    let store = ImageStore::open(&root).expect("store");
    let (t, c) = (Instant::now(), cpu());
    let image = store.pull(&reference, &PullOptions::new()).expect("pull");
    rows.push((
        "pull (cold store, 127.0.0.1 registry)".into(),
        format!("{}, {}", secs(t.elapsed()), cpu_since(c)),
    ));

    // Unpack alone.
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    let (t, c) = (Instant::now(), cpu());
    let mut u =
        images::unpack::Unpacker::new(&tree, images::UnpackLimits::default()).expect("unpacker");
    for l in image.manifest().layers() {
        let f = std::fs::File::open(root.join("blobs/sha256").join(&l.digest().as_ref()[7..]))
            .expect("blob");
        u.unpack_layer(f).expect("unpack");
    }
    rows.push((
        "unpack 4 layers (gunzip + verify diff_ids + write)".into(),
        format!("{}, {}", secs(t.elapsed()), cpu_since(c)),
    ));
    let files = snapshot(&tree).len();
    rows.push(("unpacked tree".into(), format!("{files} entries")));

    for format in [RootfsFormat::Erofs, RootfsFormat::Ext4] {
        let out = work.path().join(format!("img.{}", format.extension()));
        let (t, c) = (Instant::now(), cpu());
        images::rootfs::build_image(&tree, &out, format).expect("mkfs");
        let took = format!("{}, {}", secs(t.elapsed()), cpu_since(c));
        let size = std::fs::metadata(&out).expect("stat").len();
        let used = std::fs::metadata(&out)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        rows.push((
            format!("mkfs {} (from the unpacked tree)", format.extension()),
            format!("{took}, file {} ({} allocated)", mib(size), mib(used)),
        ));
    }

    // Whole first run through the API (unpack + mkfs.erofs), then the cache hit.
    let (t, c) = (Instant::now(), cpu());
    let path = store.rootfs_image(&image).expect("rootfs");
    rows.push((
        "rootfs_image() first call (unpack + erofs)".into(),
        format!("{}, {}", secs(t.elapsed()), cpu_since(c)),
    ));
    let t = Instant::now();
    for _ in 0..100 {
        let img = store
            .resolve_or_pull(&reference, &PullOptions::new())
            .expect("resolve");
        assert_eq!(store.rootfs_image(&img).expect("cached"), path);
    }
    rows.push((
        "second run: resolve_or_pull + rootfs_image (cache hit)".into(),
        format!("{:.2} ms", t.elapsed().as_secs_f64() * 10.0),
    ));
    drop(reg);

    // The built-in busybox image.
    let bb_root = work.path().join("bb");
    let bb = ImageStore::open(&bb_root).expect("store");
    let t = Instant::now();
    let img = bb.ensure_builtin_busybox().expect("busybox");
    rows.push((
        "built-in busybox: create image".into(),
        format!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3),
    ));
    for format in [RootfsFormat::Erofs, RootfsFormat::Ext4] {
        let s = ImageStore::open(&bb_root)
            .expect("store")
            .with_rootfs_format(format);
        let t = Instant::now();
        let p = s.rootfs_image(&img).expect("rootfs");
        let took = t.elapsed();
        let m = std::fs::metadata(&p).expect("stat");
        rows.push((
            format!("busybox rootfs {} (unpack + mkfs)", format.extension()),
            format!(
                "{:.1} ms, file {} ({} allocated)",
                took.as_secs_f64() * 1e3,
                mib(m.len()),
                mib(std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            ),
        ));
    }

    println!("| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
