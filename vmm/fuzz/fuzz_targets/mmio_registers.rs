//! virtio-mmio register reads and writes, any width and offset (config space included), on every device type;
//! between accesses the device serves a queue as the event loop would. Checks the transport's invariants after
//! each access: the Status register only ever holds a state the status machine allows, and the driver never gets
//! a feature the device did not offer.
#![no_main]

mod common;

use common::devices::Any;
use libfuzzer_sys::fuzz_target;
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::transport::mmio::MmioTransport;

/// Status values the driver can ever read back (virtio 1.2, 3.1.1), with or without FAILED / NEEDS_RESET.
fn status_ok(s: u32) -> bool {
    let base = s & !(0x80 | 0x40);
    [0, 1, 3, 11, 15].contains(&base)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, ops)) = data.split_first() else {
        return;
    };
    // Real queue addresses are in the first 16 KiB, so writes with small values often make valid queues.
    let mem = common::memory(&[]);
    let dev = Any::new(selector);
    let mut t = MmioTransport::new(dev.as_dyn(), mem);
    // Each op: kind (bit 0: read/write, bits 1-2: width, bits 3-5: queue to serve), offset (u16), value (u32).
    for op in ops.chunks_exact(7).take(512) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0x1ff;
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 1) & 3];
        let value = u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]]));
        if op[0] & 1 == 0 {
            t.write(offset, &value.to_le_bytes()[..width]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        }
        dev.serve(usize::from(op[0] >> 3) & 7);
        assert!(status_ok(t.status()), "status {:#x}", t.status());
        dev.check();
    }
});
