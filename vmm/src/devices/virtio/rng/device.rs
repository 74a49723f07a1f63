//! The virtio-rng device: virtio state and the request-queue logic, no host I/O of its own.

use super::{EntropySource, Error, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
use crate::devices::virtio::defs::TYPE_RNG;
use crate::devices::virtio::{next_chain, VirtioCommon, VirtioDevice};
use crate::vstate::memory::GuestMemory;
use std::io::Write;
use virtio_queue::QueueT;

/// The virtio-rng device.
pub struct Rng {
    pub(super) common: VirtioCommon,
    source: Box<dyn EntropySource>,
    pub(super) queues_watched: bool,
    /// Bytes handed to the guest.
    pub bytes_served: u64,
    /// Requests that could not be served (source failed, no writable buffer).
    pub failed_requests: u64,
}

impl Rng {
    /// A device fed by `source`.
    pub fn new(source: Box<dyn EntropySource>) -> Result<Self, Error> {
        Ok(Rng {
            common: VirtioCommon::new(TYPE_RNG, 0, &[QUEUE_SIZE])?,
            source,
            queues_watched: false,
            bytes_served: 0,
            failed_requests: 0,
        })
    }

    /// Serves every available request. Returns whether the used ring changed.
    pub fn process_queue(&mut self) -> bool {
        let Some(mem_arc) = self.common.mem.clone() else {
            return false;
        };
        let mem: &GuestMemory = &mem_arc;
        let mut used_any = false;
        let mut buf = [0u8; 4096];
        loop {
            let chain = match next_chain(&mut self.common.queues[0], mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("bad available ring: {e}"));
                    return used_any;
                }
            };
            let head = chain.head_index();
            let mut written = 0usize;
            match chain.writer(mem) {
                Ok(mut w) => {
                    let want = w.available_bytes().min(MAX_BYTES_PER_REQUEST);
                    while written < want {
                        let n = (want - written).min(buf.len());
                        if self.source.fill(&mut buf[..n]).is_err()
                            || w.write_all(&buf[..n]).is_err()
                        {
                            self.failed_requests += 1;
                            break;
                        }
                        written += n;
                    }
                }
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("unusable descriptor chain: {e}"));
                    return used_any;
                }
            }
            self.bytes_served += written as u64;
            if let Err(e) = self.common.queues[0].add_used(mem, head, written as u32) {
                self.common
                    .set_needs_reset(&format!("failed to write the used ring: {e}"));
                return used_any;
            }
            used_any = true;
        }
        used_any
    }
}

impl VirtioDevice for Rng {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        crate::devices::virtio::read_config_bytes(&[], offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{activate, ro, wo, Driver, TestMem, DATA_START};
    use virtio_queue::desc::split::Descriptor;

    struct Counting(u8);
    impl EntropySource for Counting {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }

    fn setup(mem: &TestMem) -> (Rng, Driver<'_>) {
        let mut rng = Rng::new(Box::new(Counting(0))).unwrap();
        let drv = Driver::new(mem, 0, QUEUE_SIZE);
        activate(&mut rng, mem, vec![drv.queue()]);
        (rng, drv)
    }

    #[test]
    fn fills_writable_buffers() {
        let mem = TestMem::new();
        let (mut rng, mut drv) = setup(&mem);
        let h = drv.add(&[wo(DATA_START, 16), wo(DATA_START + 0x100, 8)]);
        assert!(rng.process_queue());
        assert_eq!(drv.used(), vec![(u32::from(h), 24)]);
        assert_eq!(drv.read(DATA_START, 4), vec![1, 2, 3, 4]);
        assert_eq!(drv.read(DATA_START + 0x100, 2), vec![17, 18]);
        assert_eq!(
            rng.common.interrupt.status(),
            0,
            "the event handler signals, not process_queue"
        );
    }

    #[test]
    fn hostile_chains() {
        let mem = TestMem::new();
        // Read-only and zero-length buffers get nothing and are returned.
        let (mut rng, mut drv) = setup(&mem);
        let h1 = drv.add(&[ro(DATA_START, 16)]);
        let h2 = drv.add(&[wo(DATA_START, 0)]);
        assert!(rng.process_queue());
        assert_eq!(drv.used(), vec![(u32::from(h1), 0), (u32::from(h2), 0)]);
        // An oversized buffer is served only up to the cap.
        let h = drv.add(&[wo(DATA_START, 8 << 20)]);
        rng.process_queue();
        assert_eq!(
            drv.used(),
            vec![(u32::from(h), MAX_BYTES_PER_REQUEST as u32)]
        );
        // A buffer outside guest memory breaks the queue; the device asks for a reset.
        drv.add(&[wo(0xffff_0000, 16)]);
        rng.process_queue();
        assert!(rng.common.needs_reset());
        assert!(!rng.common.is_activated());

        // A loop in the chain (0 -> 1 -> 0) ends at the queue size and is refused as a whole.
        let (mut rng, mut drv) = setup(&mem);
        let w =
            crate::devices::virtio::test_utils::WRITE | crate::devices::virtio::test_utils::NEXT;
        drv.add_raw(
            &[
                Descriptor::new(DATA_START, 8, w, 1),
                Descriptor::new(DATA_START, 8, w, 0),
            ],
            0,
        );
        rng.process_queue();
        let used = drv.used();
        assert!(
            used.len() <= 1
                && used
                    .iter()
                    .all(|&(_, len)| len <= 8 * u32::from(QUEUE_SIZE))
        );

        // An avail index running more than a queue ahead.
        let (mut rng, mut drv) = setup(&mem);
        drv.set_avail_idx(QUEUE_SIZE + 1);
        assert!(!rng.process_queue());
        assert!(rng.common.needs_reset());
    }
}
