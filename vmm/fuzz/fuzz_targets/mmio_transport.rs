//! Driver writes and reads on the virtio-mmio transport of a block device, in any order; after each write the
//! device serves its queue as the event loop would.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::block::{Block, DiskBackend};
use vmm::devices::virtio::transport::mmio::MmioTransport;

struct NullDisk;

impl DiskBackend for NullDisk {
    fn size(&self) -> u64 {
        8 * 512
    }
    fn read_at(&mut self, _: u64, _: &vm_memory::VolatileSlice<'_>) -> std::io::Result<()> {
        Ok(())
    }
    fn write_at(&mut self, _: u64, _: &vm_memory::VolatileSlice<'_>) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(&[]);
    let blk = Arc::new(Mutex::new(
        Block::new(Box::new(NullDisk), false, "f").unwrap(),
    ));
    let mut t = MmioTransport::new(blk.clone(), mem);
    // Each op: kind (bit 0: read/write, bits 1..: width), offset (u16), value (u32).
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0x1ff;
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 1) & 3];
        let value = u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]]));
        if op[0] & 1 == 0 {
            t.write(offset, &value.to_le_bytes()[..width]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        }
        blk.lock().unwrap().process_queue();
    }
});
