//! A hostile kernel-less guest (guests/hostile_virtio.S) against the real VMM on /dev/kvm: it drives virtio-blk
//! through MMIO and KVM's ioeventfd with a descriptor loop, a descriptor table at a garbage address, a 4 GiB
//! descriptor and an avail index far past the queue. The VMM must log each, mark the device DEVICE_NEEDS_RESET,
//! keep serving the guest's console and port I/O, let a reset bring the device back, and keep its memory bounded.

mod common;

use common::{kvm_usable, Console};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::config::BlockConfig;
use vmm::{build_vm, Payload, RawMode, VmConfig, VmExit};

const HOSTILE_GUEST: &[u8] = include_bytes!("guests/hostile_virtio.bin");

/// Everything the VMM logs, kept for assertions.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The peak resident set of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_hostile_guest_breaks_only_its_device_and_the_vmm_stays_bounded() {
    if !kvm_usable() {
        return;
    }
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let mut image = b"MVRUNOK!".to_vec();
    image.resize(4096, 0);
    std::fs::write(&disk, &image).unwrap();
    const MEM_MIB: u64 = 32;
    let config = VmConfig {
        payload: Payload::Raw {
            code: HOSTILE_GUEST.to_vec(),
            mode: RawMode::Long64,
        },
        mem_mib: MEM_MIB,
        block: vec![BlockConfig {
            path: disk,
            read_only: true,
            id: "rootfs".into(),
        }],
        ..Default::default()
    };
    let before = vmm::rss_kib().unwrap();
    let console = Console::default();
    let vmm = build_vm(&config, Box::new(console.clone()), Instant::now()).unwrap();
    let outcome = vmm.run(Some(Duration::from_secs(20)));
    let peak = peak_rss_kib();
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    eprintln!(
        "console: {:?}\nexit: {}\nlogs:\n{logs}",
        console.text(),
        outcome.exit
    );

    // L: the loop, A: the garbage table (Status had NEEDS_RESET: 1), G: the 4 GiB descriptor, J: the jump;
    // each N is the device saying DEVICE_NEEDS_RESET. R0: after a reset a normal read works (status 0), and
    // its first byte arrived. The guest printed all of it and reset the VM: the console and port I/O never
    // stopped.
    assert_eq!(console.text(), "LNA1GNJNR0 M\n");
    assert_eq!(outcome.exit, VmExit::Reset);
    assert!(!outcome.timed_out);
    assert_eq!(
        logs.matches("virtio device needs reset").count(),
        4,
        "one warning per round"
    );
    for why in [
        "descriptor chain is broken",
        "failed to activate: queue 0 is not ready or not in guest memory",
        "bad available ring",
    ] {
        assert!(logs.contains(why), "{why}: {logs}");
    }
    // The VMM's memory: at most the guest's RAM (touched by the guest) plus a few MiB of its own, whatever
    // lengths the guest wrote.
    let grown_kib = peak.saturating_sub(before);
    eprintln!("peak RSS grew {grown_kib} KiB during the run (guest RAM {MEM_MIB} MiB)");
    assert!(
        grown_kib < MEM_MIB * 1024 + 16 * 1024,
        "peak RSS grew {grown_kib} KiB"
    );
}
