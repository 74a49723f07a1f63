//! Fixtures for the virtio tests: guest memory, a do-nothing device, and a driver-side view of a virtqueue built
//! on virtio-queue's `MockSplitQueue`.

use super::{VirtioCommon, VirtioDevice};
use crate::vstate::memory::{self, GuestMemory};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM size of the fixtures.
pub const MEM_SIZE: u64 = 16 << 20;
/// Where the fixtures' data buffers start (queues live below).
pub const DATA_START: u64 = 0x10_0000;
/// Flags of a device-writable descriptor.
pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// Flags of a chained descriptor.
pub const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

/// Guest memory for tests.
pub struct TestMem {
    /// The memory.
    pub mem: GuestMemory,
}

impl Default for TestMem {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for DummyDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl TestMem {
    /// 16 MiB of guest RAM.
    pub fn new() -> Self {
        TestMem {
            mem: memory::create(MEM_SIZE).unwrap(),
        }
    }

    /// Descriptor table, avail ring and used ring addresses for queue `i` (room for 256 entries each).
    pub fn queue_addrs(&self, i: usize) -> (u64, u64, u64) {
        let base = 0x1_0000 * (i as u64 + 1);
        (base, base + 0x1000, base + 0x2000)
    }
}

/// A device with two queues and a 4-byte config space, counting activations and resets.
pub struct DummyDevice {
    common: VirtioCommon,
    /// DRIVER_OK count.
    pub activations: u32,
    /// Reset count.
    pub resets: u32,
}

impl DummyDevice {
    /// Its device ID.
    pub const TYPE: u32 = 0x7f;
    /// Its feature bits besides VERSION_1.
    pub const FEATURES: u64 = 0b11;

    /// A fresh device.
    pub fn new() -> Self {
        DummyDevice {
            common: VirtioCommon::new(Self::TYPE, Self::FEATURES, &[16, 16]).unwrap(),
            activations: 0,
            resets: 0,
        }
    }
}

impl VirtioDevice for DummyDevice {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&[0xa0, 0xa1, 0xa2, 0xa3], offset, data);
    }
    fn activate(&mut self, mem: GuestMemory) -> Result<(), super::ActivateError> {
        self.common.activate(mem)?;
        self.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.common.reset();
        self.resets += 1;
    }
}

/// One descriptor as a test writes it: guest address, length, flags (`WRITE`; `NEXT` is added for chains).
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Descriptor flags.
    pub flags: u16,
}

/// A device-readable buffer.
pub fn ro(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        flags: 0,
    }
}
/// A device-writable buffer.
pub fn wo(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        flags: WRITE,
    }
}

/// The driver's side of one virtqueue: virtio-queue's mock for the descriptor table and the avail ring, and our
/// own used ring. (The 0.18 mock places its used ring by `SplitQueueRing::end()`, which counts ring entries as
/// bytes, so for queues of more than ~128 entries its used ring overlaps the avail ring.)
pub struct Driver<'a> {
    /// virtio-queue's mock.
    pub mock: MockSplitQueue<'a, GuestMemory>,
    used_addr: u64,
    mem: &'a GuestMemory,
    size: u16,
    next_desc: u16,
    seen_used: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries for queue index `i` of `mem`.
    pub fn new(mem: &'a TestMem, i: usize, size: u16) -> Self {
        let (desc, _, used) = mem.queue_addrs(i);
        Driver {
            mock: MockSplitQueue::create(&mem.mem, GuestAddress(desc), size),
            used_addr: used,
            mem: &mem.mem,
            size,
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// The device-side queue for this ring.
    pub fn queue(&self) -> Queue {
        let mut q: Queue = self.mock.create_queue::<Queue>().unwrap();
        q.set_used_ring_address(
            Some(self.used_addr as u32),
            Some((self.used_addr >> 32) as u32),
        );
        self.mem
            .write_obj(0u32, GuestAddress(self.used_addr))
            .unwrap();
        q
    }

    /// Writes raw descriptors at the next free table slots (their `next` fields as given) and makes `head`
    /// (relative to the first written) available.
    pub fn add_raw(&mut self, descs: &[SplitDescriptor], head: u16) -> u16 {
        let first = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (first + i as u16) % self.size;
            self.mock
                .desc_table()
                .store(idx, RawDescriptor::from(*d))
                .unwrap();
        }
        self.next_desc = (first + descs.len() as u16) % self.size;
        let head = (first + head) % self.size;
        self.push_avail(head);
        head
    }

    /// Publishes `head` in the avail ring.
    pub fn push_avail(&mut self, head: u16) {
        let avail = self.mock.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at((idx % self.size) as usize)
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Sets the avail index directly (a hostile driver).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// Adds a well-formed chain of `bufs` and returns its head index.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let first = self.next_desc;
        let descs: Vec<SplitDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == bufs.len();
                let next = (first + i as u16 + 1) % self.size;
                let flags = if last { b.flags } else { b.flags | NEXT };
                SplitDescriptor::new(b.addr, b.len, flags, if last { 0 } else { next })
            })
            .collect();
        self.add_raw(&descs, 0)
    }

    /// Used-ring entries the device added since the last call: (head, written length).
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used_addr + 2)).unwrap();
        let mut out = Vec::new();
        while self.seen_used != idx {
            let at = self.used_addr + 4 + 8 * u64::from(self.seen_used % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }

    /// Writes `bytes` at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Puts `queues` into `dev` as a driver would, accepts every offered feature and activates it.
pub fn activate<D: VirtioDevice + ?Sized>(dev: &mut D, mem: &TestMem, queues: Vec<Queue>) {
    let common = dev.common_mut();
    common.acked_features = common.avail_features;
    for (slot, q) in common.queues.iter_mut().zip(queues) {
        *slot = q;
    }
    dev.activate(mem.mem.clone()).unwrap();
}

/// Counts the heap bytes the current thread holds, so a test can measure the most a guest makes the VMM allocate.
/// Per thread because the test harness runs tests in parallel; a test that frees on another thread is not
/// measured right, none here does.
pub mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<i64> = const { Cell::new(0) };
        static PEAK: Cell<i64> = const { Cell::new(0) };
    }

    fn add(delta: i64) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    /// The counting allocator (System underneath).
    pub struct Counting;

    // SAFETY: every call is forwarded to `System` with the same arguments; the counters only observe sizes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as i64);
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as i64));
            // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded as received; the caller upholds realloc's contract.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as i64 - layout.size() as i64);
            }
            p
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Runs `f` and returns its result and the largest heap growth (bytes) it caused on this thread.
    pub fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, i64) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let r = f();
        (r, PEAK.with(Cell::get) - start)
    }
}
