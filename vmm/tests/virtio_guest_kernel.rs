//! A real guest kernel meets the virtio devices: it boots with a read-only virtio-blk disk, the entropy device and
//! the vsock device, and its log must show the disk as `vda` with the right size.
//!
//! The kernel comes from `MVRUN_TEST_KERNEL` (a vmlinux) or else from mvrun's kernel store
//! (`$MVRUN_ROOT/kernels/<variant>-*/vmlinux`, filled by `mvrun kernel build`/`mvrun kernel path`), picking the
//! `emulated` variant on a nested-PVM host. Without one the test prints SKIP. On an emulated-KVM host the boot up
//! to the virtio probe takes tens of seconds.

mod common;

use common::Console;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm::config::{BlockConfig, VsockConfig};
use vmm::{build_vm, Payload, VmConfig, VmExit};

fn find_kernel() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MVRUN_TEST_KERNEL") {
        return Ok(PathBuf::from(p));
    }
    let variant = if Path::new("/sys/module/kvm_pvm").exists() {
        "emulated"
    } else {
        "normal"
    };
    let root = std::env::var_os("MVRUN_ROOT")
        .map_or_else(|| PathBuf::from("/var/lib/mvrun"), PathBuf::from);
    let store = root.join("kernels");
    let found = std::fs::read_dir(&store).ok().and_then(|entries| {
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{variant}-"))
            })
            .map(|e| e.path().join("vmlinux"))
            .filter(|p| p.exists())
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    });
    found.ok_or_else(|| {
        format!(
            "no {variant} kernel: set MVRUN_TEST_KERNEL or build one (mvrun kernel path --variant {variant}) into {}",
            store.display()
        )
    })
}

#[test]
fn the_guest_kernel_finds_its_virtio_disk() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIP: /dev/kvm is missing or not usable by this user");
        return;
    }
    let kernel = match find_kernel() {
        Ok(k) => k,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let config = VmConfig {
        payload: Payload::Kernel {
            kernel: kernel.clone(),
            initrd: None,
            cmdline: format!("{} root=/dev/vda ro", vmm::DEFAULT_CMDLINE),
        },
        mem_mib: 256,
        block: vec![BlockConfig {
            path: disk,
            read_only: true,
            id: "rootfs".into(),
        }],
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("v.sock"),
        }),
        rng: true,
        ..Default::default()
    };
    let console = Console::default();
    let vmm = build_vm(&config, Box::new(console.clone()), Instant::now()).expect("build VM");
    // Stop as soon as the disk shows up (or the guest ends by itself: no rootfs means a panic and a reset).
    let exit = vmm.exit_handle();
    let watch = console.clone();
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        while exit.reason().is_none() && start.elapsed() < Duration::from_secs(300) {
            if watch.text().contains("[vda]") {
                std::thread::sleep(Duration::from_millis(200));
                exit.signal(VmExit::Stopped);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let outcome = vmm.run(Some(Duration::from_secs(300)));
    watcher.join().unwrap();
    let text = console.text();
    let line = text.lines().find(|l| l.contains("[vda]"));
    assert!(
        line.is_some_and(|l| l.contains("virtio_blk") && l.contains("2048 512-byte logical blocks")),
        "kernel {} did not list vda (exit: {}); console tail:\n{}",
        kernel.display(),
        outcome.exit,
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    // Read-only-ness is the VIRTIO_BLK_F_RO feature bit, which this kernel does not log; the device's unit tests
    // check that writes to a read-only disk are refused with VIRTIO_BLK_S_IOERR.
}
