//! Shared harness: a small guest memory whose first bytes (the queues' rings) come from the fuzzer.
#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::VirtioDevice;

/// Guest RAM of the harness: small, so fuzzed addresses land inside it often.
pub const MEM_SIZE: usize = 0x4_0000;
/// Queue `i` lives at `i * QUEUE_STRIDE`: descriptor table, avail ring at +0x100, used ring at +0x200.
pub const QUEUE_STRIDE: u64 = 0x400;
/// Queue size used for every queue.
pub const QSIZE: u16 = 16;

pub fn memory(data: &[u8]) -> GuestMemoryMmap<()> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    mem
}

/// Configures `dev`'s queues at the harness addresses, accepts every feature and activates it.
pub fn activate(dev: &mut dyn VirtioDevice, mem: &GuestMemoryMmap<()>) -> bool {
    let common = dev.common_mut();
    common.acked_features = common.avail_features;
    for (i, q) in common.queues.iter_mut().enumerate() {
        let base = i as u64 * QUEUE_STRIDE;
        let mut nq = Queue::new(q.max_size()).unwrap();
        nq.set_size(QSIZE);
        nq.set_desc_table_address(Some(base as u32), Some(0));
        nq.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        nq.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        nq.set_ready(true);
        *q = nq;
    }
    dev.activate(mem.clone()).is_ok()
}
