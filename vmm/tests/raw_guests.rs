//! Hand-assembled guests run on /dev/kvm: fast checks of the VMM's own path (KVM setup, vCPU entry modes, port
//! I/O dispatch, the serial console, the i8042 reset, timeouts) without a kernel.

mod common;

use common::{kvm_usable, Console};
use std::time::{Duration, Instant};
use vmm::{build_vm, Payload, RawMode, VmConfig, VmExit};

/// `out dx, al` of each byte of `text` to COM1, then (optionally) 0xfe to the i8042 command port, then `hlt`.
/// The encodings are the same in real mode and long mode except `mov dx, imm16`, which needs an operand-size
/// prefix in 64-bit code.
fn serial_program(text: &[u8], long_mode: bool, reset: bool) -> Vec<u8> {
    let mut code = Vec::new();
    if long_mode {
        code.push(0x66);
    }
    code.extend_from_slice(&[0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    for b in text {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    if reset {
        code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    }
    code.push(0xf4); // hlt
    code
}

fn run(code: Vec<u8>, mode: RawMode, timeout: Duration) -> (vmm::RunOutcome, String) {
    let console = Console::default();
    let config = VmConfig {
        payload: Payload::Raw { code, mode },
        mem_mib: 16,
        vcpus: 1,
        ..Default::default()
    };
    let vmm = build_vm(&config, Box::new(console.clone()), Instant::now()).expect("build VM");
    let outcome = vmm.run(Some(timeout));
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    (outcome, text)
}

#[test]
fn real_mode_guest_prints_and_resets() {
    if !kvm_usable() {
        return;
    }
    let (outcome, text) = run(
        serial_program(b"hello from real mode\n", false, true),
        RawMode::Real,
        Duration::from_secs(10),
    );
    assert_eq!(text, "hello from real mode\n");
    assert_eq!(outcome.exit, VmExit::Reset);
    assert!(!outcome.timed_out);
    assert!(outcome.timings.first_kvm_run.is_some());
}

#[test]
fn long_mode_guest_prints_and_resets() {
    if !kvm_usable() {
        return;
    }
    let (outcome, text) = run(
        serial_program(b"hello from long mode\n", true, true),
        RawMode::Long64,
        Duration::from_secs(10),
    );
    assert_eq!(text, "hello from long mode\n");
    assert_eq!(outcome.exit, VmExit::Reset);
}

#[test]
fn halted_guest_times_out_and_vcpu_is_stopped() {
    if !kvm_usable() {
        return;
    }
    // Interrupts are off after `cli`, but the in-kernel LAPIC keeps a halted vCPU inside KVM: only the timeout
    // and the VMM's kick end it.
    let mut code = vec![0xfa]; // cli
    code.extend(serial_program(b"halting\n", false, false));
    code.extend_from_slice(&[0xeb, 0xfd]); // jmp back to hlt, should an interrupt wake it
    let started = Instant::now();
    let (outcome, text) = run(code, RawMode::Real, Duration::from_millis(500));
    assert_eq!(text, "halting\n");
    assert!(outcome.timed_out, "{:?}", outcome.exit);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn unmapped_ports_read_as_ones_and_ignore_writes() {
    if !kvm_usable() {
        return;
    }
    let mut code = vec![
        0xba, 0x34, 0x12, // mov dx, 0x1234
        0xb0, 0x55, 0xee, // mov al, 0x55; out dx, al
        0xec, // in al, dx: nothing is there, so 0xff
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al: print what `in` returned
    ];
    code.extend(serial_program(b"!", false, true));
    let (outcome, text) = run(code, RawMode::Real, Duration::from_secs(10));
    assert_eq!(outcome.exit, VmExit::Reset);
    // 0xff is not UTF-8: the lossy conversion shows it as U+FFFD.
    assert_eq!(text, "\u{fffd}!");
}

#[test]
fn several_vcpus_boot_and_stop() {
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let config = VmConfig {
        payload: Payload::Raw {
            code: serial_program(b"smp\n", false, true),
            mode: RawMode::Real,
        },
        mem_mib: 32,
        vcpus: 4,
        ..Default::default()
    };
    let vmm = build_vm(&config, Box::new(console.clone()), Instant::now()).expect("build VM");
    let outcome = vmm.run(Some(Duration::from_secs(10)));
    assert_eq!(outcome.exit, VmExit::Reset);
    assert_eq!(&*console.0.lock().unwrap(), b"smp\n");
}
