//! Whole-queue sequences on every device type, as a driver that turns hostile half-way would run them: the device
//! is set up through the real virtio-mmio transport (negotiation, queue addresses, DRIVER_OK), then the input is a
//! program of steps: write bytes anywhere in guest memory (descriptor tables, rings, buffers: loops, giant
//! lengths, wild addresses), notify a queue (the device serves it), write a register, or reset and set up again.
//! After every step: no panic, only offered features, bounded host buffers, and a device that either works or
//! says DEVICE_NEEDS_RESET.
#![no_main]

mod common;

use common::devices::Any;
use common::{MEM_SIZE, QSIZE, QUEUE_STRIDE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::transport::mmio::MmioTransport;

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// The driver's side of set-up, through the registers: accept every offered feature, queues at the harness
/// addresses, DRIVER_OK.
fn setup(t: &mut MmioTransport, queues: usize) {
    w(t, 0x70, 0); // reset
    w(t, 0x70, 1);
    w(t, 0x70, 3);
    for sel in 0..2u32 {
        w(t, 0x14, sel);
        let mut b = [0u8; 4];
        t.read(0x10, &mut b);
        w(t, 0x24, sel);
        w(t, 0x20, u32::from_le_bytes(b));
    }
    w(t, 0x70, 0xb);
    for q in 0..queues {
        let base = q as u64 * QUEUE_STRIDE;
        w(t, 0x30, q as u32);
        w(t, 0x38, u32::from(QSIZE));
        w(t, 0x80, base as u32);
        w(t, 0x84, 0);
        w(t, 0x90, (base + 0x100) as u32);
        w(t, 0x94, 0);
        w(t, 0xa0, (base + 0x200) as u32);
        w(t, 0xa4, 0);
        w(t, 0x44, 1);
    }
    w(t, 0x70, 0xf);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut prog)) = data.split_first() else {
        return;
    };
    let mem = common::memory(&[]);
    let dev = Any::new(selector);
    let queues = dev.as_dyn().lock().unwrap().common().queues.len();
    let mut t = MmioTransport::new(dev.as_dyn(), mem.clone());
    setup(&mut t, queues);
    let mut steps = 0;
    while let Some((&op, rest)) = prog.split_first() {
        steps += 1;
        if steps > 256 {
            break;
        }
        prog = rest;
        match op % 4 {
            // Write up to 64 bytes at an address in the first 64 KiB (queues, buffers) or anywhere.
            0 => {
                if prog.len() < 3 {
                    break;
                }
                let addr = u64::from(u16::from_le_bytes([prog[0], prog[1]]));
                let addr = if op & 0x80 != 0 {
                    addr * 4 % MEM_SIZE as u64
                } else {
                    addr
                };
                let len = usize::from(prog[2] % 64).min(prog.len() - 3);
                let _ = mem.write_slice(&prog[3..3 + len], GuestAddress(addr));
                prog = &prog[3 + len..];
            }
            // Notify queue q.
            1 => {
                dev.serve(usize::from(op >> 2));
            }
            // A register write.
            2 => {
                if prog.len() < 5 {
                    break;
                }
                let off = u64::from(prog[0]) * 4 % 0x100;
                let v = u32::from_le_bytes([prog[1], prog[2], prog[3], prog[4]]);
                w(&mut t, off, v);
                prog = &prog[5..];
            }
            // The driver resets the device and sets it up again.
            _ => setup(&mut t, queues),
        }
        dev.check();
    }
});
