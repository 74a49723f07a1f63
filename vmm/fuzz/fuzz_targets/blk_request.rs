//! virtio-blk request parsing and execution on fuzzed queues; the fake disk asserts the device never asks for
//! bytes outside the disk.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vm_memory::VolatileSlice;
use vmm::devices::virtio::block::{Block, DiskBackend};

struct MemDisk(Vec<u8>);

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &VolatileSlice<'_>) -> std::io::Result<()> {
        let start = offset as usize;
        let end = start.checked_add(buf.len()).unwrap();
        assert!(end <= self.0.len(), "device read past the disk");
        buf.copy_from(&self.0[start..end]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &VolatileSlice<'_>) -> std::io::Result<()> {
        let start = offset as usize;
        let end = start.checked_add(buf.len()).unwrap();
        assert!(end <= self.0.len(), "device wrote past the disk");
        buf.copy_to(&mut self.0[start..end]);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let read_only = flags & 1 != 0;
    let mem = common::memory(rest);
    let mut blk = Block::new(Box::new(MemDisk(vec![0x5a; 16 * 512])), read_only, "fuzz").unwrap();
    if common::activate(&mut blk, &mem) {
        blk.process_queue();
        if read_only {
            assert_eq!(blk.stats.writes, 0);
        }
    }
});
