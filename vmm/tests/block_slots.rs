//! Runtime block slots in a running VM: the host attaches an image (an open fd over the slot socket) and detaches
//! it while a guest runs, and the event-loop thread serving the socket does so under its seccomp filter (a call
//! outside its allowlist would kill this process with SIGSYS).

mod common;

use common::{kvm_usable, Console};
use std::io::Write;
use std::time::{Duration, Instant};
use vmm::config::{BlockConfig, BlockSlotsConfig};
use vmm::devices::virtio::block::slots;
use vmm::{build_vm, Payload, RawMode, VmConfig, VmExit};

#[test]
fn images_attach_and_detach_while_the_guest_runs_under_the_seccomp_filters() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot.img");
    std::fs::write(&boot, [0u8; 4096]).unwrap();
    let uds = dir.path().join("slots.sock");
    let config = VmConfig {
        // jmp $: the guest spins until the VMM stops it.
        payload: Payload::Raw {
            code: vec![0xeb, 0xfe],
            mode: RawMode::Real,
        },
        mem_mib: 16,
        vcpus: 1,
        block: vec![BlockConfig {
            path: boot,
            read_only: true,
            id: "rootfs".into(),
        }],
        block_slots: Some(BlockSlotsConfig {
            count: 2,
            uds_path: uds.clone(),
        }),
        ..Default::default()
    };
    let vmm = build_vm(&config, Box::new(Console::default()), Instant::now()).expect("build VM");
    let exit = vmm.exit_handle();
    let runner = std::thread::spawn(move || vmm.run(Some(Duration::from_secs(60))));

    let mut image = tempfile::NamedTempFile::new().unwrap();
    image.write_all(&[7u8; 512 * 16]).unwrap();
    let t = Instant::now();
    let sectors = slots::attach(&uds, 1, image.as_file()).expect("attach");
    let attach_time = t.elapsed();
    assert_eq!(sectors, 16);
    assert!(slots::attach(&uds, 1, image.as_file())
        .unwrap_err()
        .to_string()
        .contains("detach it first"));
    assert!(slots::attach(&uds, 2, image.as_file())
        .unwrap_err()
        .to_string()
        .contains("no slot 2"));
    slots::detach(&uds, 1).expect("detach");
    // The slot takes an image again (the next container of the pod).
    assert_eq!(slots::attach(&uds, 1, image.as_file()).unwrap(), 16);
    println!(
        "attach over the slot socket: {:.0} us",
        attach_time.as_secs_f64() * 1e6
    );

    exit.signal(VmExit::Stopped);
    let outcome = runner.join().unwrap();
    assert!(
        matches!(outcome.exit, VmExit::Stopped),
        "{:?}",
        outcome.exit
    );
    assert!(!uds.exists(), "the VMM removes its slot socket");
}
