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

/// A device of each type behind fakes that never block and never run dry forever, so fuzz targets can drive any of
/// them through the transport and the queues.
pub mod devices {
    use std::sync::{Arc, Mutex};
    use vm_memory::VolatileSlice;
    use vmm::devices::virtio::block::{Block, DiskBackend};
    use vmm::devices::virtio::net::{Net, NetBackend, MAX_FRAME};
    use vmm::devices::virtio::rng::{EntropySource, Rng};
    use vmm::devices::virtio::vsock::{UnixBackend, Vsock};
    use vmm::devices::virtio::VirtioDevice;

    /// An in-memory disk that asserts the device stays inside it.
    pub struct MemDisk(pub Vec<u8>);

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

    /// A tap with a few frames of one size waiting.
    pub struct FakeTap(pub usize, pub u32);

    impl NetBackend for FakeTap {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
            if self.1 == 0 {
                return Ok(None);
            }
            self.1 -= 1;
            let n = self.0.min(buf.len());
            buf[..n].fill(0xab);
            Ok(Some(n))
        }
        fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
            assert!(frame.len() <= MAX_FRAME);
            Ok(true)
        }
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    /// Zeros for entropy.
    pub struct Zeros;

    impl EntropySource for Zeros {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
    }

    /// One device of any type, kept both as itself (to serve its queues) and as the transport's `dyn`.
    pub enum Any {
        Blk(Arc<Mutex<Block>>),
        Net(Arc<Mutex<Net>>),
        Rng(Arc<Mutex<Rng>>),
        Vsock(Arc<Mutex<Vsock>>),
    }

    thread_local! {
        // One vsock socket per process (a bind per input would be slow); reset before each use.
        static VSOCK: (tempfile::TempDir, Arc<Mutex<Vsock>>) = {
            let dir = tempfile::tempdir().unwrap();
            let backend = UnixBackend::bind(&dir.path().join("v.sock")).unwrap();
            (dir, Arc::new(Mutex::new(Vsock::new(3, Box::new(backend)).unwrap())))
        };
    }

    impl Any {
        /// The device `selector` picks (blk, read-only blk, net, rng, vsock).
        pub fn new(selector: u8) -> Self {
            match selector % 5 {
                0 | 1 => Any::Blk(Arc::new(Mutex::new(
                    Block::new(
                        Box::new(MemDisk(vec![0x5a; 16 * 512])),
                        selector % 5 == 1,
                        "f",
                    )
                    .unwrap(),
                ))),
                2 => Any::Net(Arc::new(Mutex::new(
                    Net::new(
                        Box::new(FakeTap(usize::from(selector) * 16, 8)),
                        [2, 0, 0, 0, 0, 1],
                    )
                    .unwrap(),
                ))),
                3 => Any::Rng(Arc::new(Mutex::new(Rng::new(Box::new(Zeros)).unwrap()))),
                _ => {
                    let dev = VSOCK.with(|(_, d)| d.clone());
                    dev.lock().unwrap().reset();
                    Any::Vsock(dev)
                }
            }
        }

        /// The device as the transport holds it.
        pub fn as_dyn(&self) -> Arc<Mutex<dyn VirtioDevice>> {
            match self {
                Any::Blk(d) => d.clone(),
                Any::Net(d) => d.clone(),
                Any::Rng(d) => d.clone(),
                Any::Vsock(d) => d.clone(),
            }
        }

        /// Serves queue `q` as the event loop would on its notification (and a backend event for net/vsock).
        pub fn serve(&self, q: usize) {
            match self {
                Any::Blk(d) => {
                    d.lock().unwrap().process_queue();
                }
                Any::Net(d) => {
                    let mut d = d.lock().unwrap();
                    if q % 2 == 1 {
                        d.process_tx();
                    } else {
                        d.process_rx();
                    }
                }
                Any::Rng(d) => {
                    d.lock().unwrap().process_queue();
                }
                Any::Vsock(d) => {
                    let mut d = d.lock().unwrap();
                    if q % 3 == 1 {
                        d.process_tx();
                    }
                    d.process_rx();
                }
            }
        }

        /// Checks what must hold whatever the guest did.
        pub fn check(&self) {
            let dev = self.as_dyn();
            let d = dev.lock().unwrap();
            let c = d.common();
            assert_eq!(
                c.acked_features & !c.avail_features,
                0,
                "only offered features are accepted"
            );
            if let Any::Vsock(v) = self {
                drop(d);
                let buffered = v.lock().unwrap().buffered_bytes();
                assert!(
                    buffered
                        <= vmm::devices::virtio::vsock::MAX_CONNECTIONS
                            * vmm::devices::virtio::vsock::CONN_TX_BUF_SIZE as usize,
                    "vsock buffers stay bounded: {buffered}"
                );
            }
        }
    }
}
