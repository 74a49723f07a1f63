//! The virtio devices through the real VMM on /dev/kvm: a hand-assembled 64-bit guest (guests/virtio_blk_read.S)
//! drives virtio-mmio slot 0 as a block driver would, through KVM's ioeventfd and the VMM's event loop, and
//! prints what it read. Also checks that every device type registers (MMIO slot, irqfd, ioeventfds).

mod common;

use common::{kvm_usable, Console};
use std::path::Path;
use std::time::{Duration, Instant};
use vmm::config::{BlockConfig, NetConfig, VsockConfig};
use vmm::{build_vm, Payload, RawMode, VmConfig, VmExit};

const BLK_GUEST: &[u8] = include_bytes!("guests/virtio_blk_read.bin");

fn run(config: &VmConfig) -> (vmm::RunOutcome, String) {
    let console = Console::default();
    let vmm = build_vm(config, Box::new(console.clone()), Instant::now()).expect("build VM");
    let outcome = vmm.run(Some(Duration::from_secs(20)));
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    (outcome, text)
}

#[test]
fn a_guest_reads_a_sector_through_virtio_blk_and_kvm() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("rootfs.img");
    let mut image = b"MVRUNOK!".to_vec();
    image.resize(4096, 0);
    std::fs::write(&disk, &image).unwrap();
    let uds = dir.path().join("vsock.sock");
    let config = VmConfig {
        payload: Payload::Raw {
            code: BLK_GUEST.to_vec(),
            mode: RawMode::Long64,
        },
        mem_mib: 32,
        block: vec![
            BlockConfig {
                path: disk.clone(),
                read_only: true,
                id: "rootfs".into(),
            },
            BlockConfig {
                path: disk.clone(),
                read_only: false,
                id: "scratch".into(),
            },
        ],
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        rng: true,
        ..Default::default()
    };
    let (outcome, text) = run(&config);
    // Status 0 (OK), the sector's first bytes, InterruptStatus 1 (used ring).
    assert_eq!(text, "0MVRUNOK!1\n", "exit: {}", outcome.exit);
    assert_eq!(outcome.exit, VmExit::Reset);
    assert!(!uds.exists(), "the vsock socket is removed with the VMM");
    assert_eq!(std::fs::read(&disk).unwrap(), image, "nothing was written");
}

#[test]
fn a_net_device_on_a_tap_registers() {
    if !kvm_usable() {
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: /dev/net/tun is missing");
        return;
    }
    let config = VmConfig {
        payload: Payload::Raw {
            // mov al, 0xfe; out 0x64, al; hlt
            code: vec![0xb0, 0xfe, 0xe6, 0x64, 0xf4],
            mode: RawMode::Real,
        },
        mem_mib: 16,
        net: Some(NetConfig {
            tap_name: format!("mvv{}", std::process::id() % 100_000),
            netns: None,
            mac: [2, 0, 0, 0, 0, 1],
        }),
        ..Default::default()
    };
    let console = Console::default();
    let vmm = match build_vm(&config, Box::new(console), Instant::now()) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("failed to open tap") => {
            eprintln!("SKIP: cannot create a tap here: {e}");
            return;
        }
        Err(e) => panic!("build VM: {e}"),
    };
    assert_eq!(vmm.run(Some(Duration::from_secs(10))).exit, VmExit::Reset);
}

#[test]
fn device_errors_are_one_clear_line() {
    let config = VmConfig {
        payload: Payload::Raw {
            code: vec![0xf4],
            mode: RawMode::Real,
        },
        mem_mib: 16,
        block: vec![BlockConfig {
            path: "/nonexistent/rootfs.img".into(),
            read_only: true,
            id: String::new(),
        }],
        ..Default::default()
    };
    let err = build_vm(&config, Box::new(std::io::sink()), Instant::now())
        .err()
        .expect("a missing disk is refused");
    assert_eq!(
        err.to_string(),
        "disk image /nonexistent/rootfs.img does not exist"
    );
}
