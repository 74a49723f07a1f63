//! The virtio-net device: MAC in the config space, frames between the rx/tx queues and a [`NetBackend`].
//!
//! Frames are staged in one buffer of [`MAX_FRAME`] bytes per direction, allocated once: descriptors may split a
//! frame anywhere, and a copy per frame keeps the guest-facing code simple and its memory fixed.

use super::defs::VIRTIO_NET_F_MAC;
use super::{Error, NetBackend, MAX_FRAME, QUEUE_SIZES};
use crate::devices::virtio::defs::TYPE_NET;
use crate::devices::virtio::{next_chain, VirtioCommon, VirtioDevice};
use crate::rate_limiter::{RateLimit, RateLimiter};
use crate::vstate::memory::GuestMemory;
use std::io::{Read, Write};
use virtio_queue::{QueueOwnedT, QueueT};

/// Receive queue.
pub const RXQ: usize = 0;
/// Transmit queue.
pub const TXQ: usize = 1;

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Guest frames dropped (too big, too small, host queue full, host error).
    pub tx_dropped: u64,
    /// Host frames dropped (larger than the guest's buffer).
    pub rx_dropped: u64,
}

/// The virtio-net device.
pub struct Net {
    pub(super) common: VirtioCommon,
    mac: [u8; 6],
    pub(super) backend: Box<dyn NetBackend>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// Length of a frame read from the host that waits for a receive buffer.
    rx_pending: Option<usize>,
    /// The backend may have frames (edge-triggered: set by its event, cleared when a read finds none).
    pub(super) backend_readable: bool,
    pub(super) queues_watched: bool,
    pub(super) backend_watched: bool,
    /// Optional limits on what the guest sends and what it receives, each its own bucket.
    pub(super) tx_limiter: Option<RateLimiter>,
    pub(super) rx_limiter: Option<RateLimiter>,
    pub(super) limiters_watched: bool,
    /// Counters.
    pub stats: NetStats,
}

impl Net {
    /// A NIC with `mac` on `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Result<Self, Error> {
        Ok(Net {
            common: VirtioCommon::new(TYPE_NET, 1 << VIRTIO_NET_F_MAC, &QUEUE_SIZES)?,
            mac,
            backend,
            tx_buf: vec![0; MAX_FRAME],
            rx_buf: vec![0; MAX_FRAME],
            rx_pending: None,
            backend_readable: true,
            queues_watched: false,
            backend_watched: false,
            tx_limiter: None,
            rx_limiter: None,
            limiters_watched: false,
            stats: NetStats::default(),
        })
    }

    /// Limits each direction to `limit` (bytes/s of frames, frames/s).
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Result<Self, Error> {
        self.tx_limiter = RateLimiter::new(limit).map_err(Error::RateLimiter)?;
        self.rx_limiter = RateLimiter::new(limit).map_err(Error::RateLimiter)?;
        Ok(self)
    }

    /// Sends every frame the guest queued. Returns whether the used ring changed.
    pub fn process_tx(&mut self) -> bool {
        let Some(mem_arc) = self.common.mem.clone() else {
            return false;
        };
        let mem: &GuestMemory = &mem_arc;
        let mut used_any = false;
        loop {
            if self.tx_limiter.as_mut().is_some_and(|l| !l.ready()) {
                break;
            }
            let chain = match next_chain(&mut self.common.queues[TXQ], mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("bad tx available ring: {e}"));
                    break;
                }
            };
            let head = chain.head_index();
            let mut reader = match chain.reader(mem) {
                Ok(r) => r,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("tx chain outside guest memory: {e}"));
                    break;
                }
            };
            let len = reader.available_bytes();
            if let Some(l) = self.tx_limiter.as_mut() {
                l.consume(len as u64);
            }
            let sent = if len <= super::defs::VNET_HDR_LEN || len > MAX_FRAME {
                false
            } else {
                reader.read_exact(&mut self.tx_buf[..len]).is_ok()
                    && matches!(self.backend.write_frame(&self.tx_buf[..len]), Ok(true))
            };
            if sent {
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_dropped += 1;
            }
            if self.common.queues[TXQ].add_used(mem, head, 0).is_err() {
                self.common
                    .set_needs_reset("failed to write the tx used ring");
                break;
            }
            used_any = true;
        }
        used_any
    }

    /// Moves frames from the host into the guest's receive buffers. Returns whether the used ring changed.
    pub fn process_rx(&mut self) -> bool {
        let Some(mem_arc) = self.common.mem.clone() else {
            return false;
        };
        let mem: &GuestMemory = &mem_arc;
        let mut used_any = false;
        loop {
            if self.rx_limiter.as_mut().is_some_and(|l| !l.ready()) {
                // The frame (or the tap's readiness) waits for the limiter's timer.
                break;
            }
            let len = match self.rx_pending {
                Some(n) => n,
                None if !self.backend_readable => break,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        self.backend_readable = false;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("virtio-net: tap read failed: {e}");
                        self.backend_readable = false;
                        break;
                    }
                },
            };
            self.rx_pending = Some(len);
            let chain = match next_chain(&mut self.common.queues[RXQ], mem) {
                Ok(Some(c)) => c,
                // No buffer: the frame waits for the guest's next rx notification.
                Ok(None) => break,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("bad rx available ring: {e}"));
                    break;
                }
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(mem) {
                Ok(w) => w,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("rx chain outside guest memory: {e}"));
                    break;
                }
            };
            self.rx_pending = None;
            if writer.available_bytes() < len {
                // The guest's buffers are too small (no mergeable buffers are offered): drop the frame and
                // keep the buffer for the next one.
                self.stats.rx_dropped += 1;
                self.common.queues[RXQ].go_to_previous_position();
                continue;
            }
            if writer.write_all(&self.rx_buf[..len]).is_err() {
                self.common
                    .set_needs_reset("failed to write a received frame");
                break;
            }
            self.stats.rx_frames += 1;
            if let Some(l) = self.rx_limiter.as_mut() {
                l.consume(len as u64);
            }
            if self.common.queues[RXQ]
                .add_used(mem, head, len as u32)
                .is_err()
            {
                self.common
                    .set_needs_reset("failed to write the rx used ring");
                break;
            }
            used_any = true;
        }
        used_any
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6] first; status and the rest need features we do not offer.
        crate::devices::virtio::read_config_bytes(&self.mac, offset, data);
    }
    fn reset(&mut self) {
        self.rx_pending = None;
        self.common.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{activate, ro, wo, Driver, TestMem, DATA_START};
    use crate::rate_limiter::RateLimit;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Fake {
        incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
    }
    impl NetBackend for Fake {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
            Ok(self.incoming.lock().unwrap().pop_front().map(|f| {
                buf[..f.len()].copy_from_slice(&f);
                f.len()
            }))
        }
        fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
            self.sent.lock().unwrap().push(frame.to_vec());
            Ok(true)
        }
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    fn setup(mem: &TestMem) -> (Net, Fake, Driver<'_>, Driver<'_>) {
        let fake = Fake::default();
        let mut net = Net::new(Box::new(fake.clone()), [2, 0, 0, 0, 0, 7]).unwrap();
        let rx = Driver::new(mem, 0, QUEUE_SIZES[0]);
        let tx = Driver::new(mem, 1, QUEUE_SIZES[1]);
        activate(&mut net, mem, vec![rx.queue(), tx.queue()]);
        (net, fake, rx, tx)
    }

    #[test]
    fn frames_flow_both_ways() {
        let mem = TestMem::new();
        let (mut net, fake, mut rx, mut tx) = setup(&mem);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 7]);
        // A frame split over header and payload descriptors.
        tx.write(DATA_START, &[0; 12]);
        tx.write(DATA_START + 0x100, &[0xee; 60]);
        tx.add(&[ro(DATA_START, 12), ro(DATA_START + 0x100, 60)]);
        assert!(net.process_tx());
        assert_eq!(fake.sent.lock().unwrap()[0].len(), 72);
        // A host frame into a guest buffer.
        fake.incoming.lock().unwrap().push_back(vec![0x11; 80]);
        let h = rx.add(&[wo(DATA_START + 0x1000, 1526)]);
        assert!(net.process_rx());
        assert_eq!(rx.used(), vec![(u32::from(h), 80)]);
        assert_eq!(rx.read(DATA_START + 0x1000, 80), vec![0x11; 80]);
    }

    #[test]
    fn each_direction_has_its_own_rate_limit() {
        let mem = TestMem::new();
        let fake = Fake::default();
        // 1000 bytes/s each way: one 72-byte and one 1000-byte frame fit (the second into debt), the third waits.
        let mut net = Net::new(Box::new(fake.clone()), [2, 0, 0, 0, 0, 7])
            .unwrap()
            .with_rate_limit(RateLimit {
                bytes_per_sec: Some(1000),
                ops_per_sec: None,
            })
            .unwrap();
        let mut rx = Driver::new(&mem, 0, QUEUE_SIZES[0]);
        let mut tx = Driver::new(&mem, 1, QUEUE_SIZES[1]);
        activate(&mut net, &mem, vec![rx.queue(), tx.queue()]);
        for len in [72, 1000, 72] {
            tx.add(&[ro(DATA_START, len)]);
        }
        assert!(net.process_tx());
        assert_eq!(fake.sent.lock().unwrap().len(), 2);
        assert!(net.tx_limiter.as_ref().unwrap().is_paused());
        // The receive side is not held back by what the guest sent.
        fake.incoming.lock().unwrap().push_back(vec![0x11; 80]);
        rx.add(&[wo(DATA_START + 0x1000, 1526)]);
        assert!(net.process_rx());
        // The timer resumes the sender.
        net.tx_limiter.as_mut().unwrap().on_timer();
        assert!(net.process_tx());
        assert_eq!(fake.sent.lock().unwrap().len(), 3);
    }

    #[test]
    fn hostile_frames() {
        let mem = TestMem::new();
        let (mut net, fake, mut rx, mut tx) = setup(&mem);
        // Too small, zero-length, oversized: dropped, returned, counted.
        tx.add(&[ro(DATA_START, 4)]);
        tx.add(&[ro(DATA_START, 0)]);
        tx.add(&[ro(DATA_START, (MAX_FRAME + 1) as u32)]);
        net.process_tx();
        assert_eq!(tx.used().len(), 3);
        assert_eq!(net.stats.tx_dropped, 3);
        assert!(fake.sent.lock().unwrap().is_empty());
        // A frame larger than the guest's buffer is dropped, the buffer kept for the next frame.
        fake.incoming.lock().unwrap().push_back(vec![1; 3000]);
        fake.incoming.lock().unwrap().push_back(vec![2; 100]);
        let h = rx.add(&[wo(DATA_START + 0x1000, 1526)]);
        net.process_rx();
        assert_eq!(rx.used(), vec![(u32::from(h), 100)]);
        assert_eq!(net.stats.rx_dropped, 1);
        // No buffers: the frame waits, nothing is lost.
        fake.incoming.lock().unwrap().push_back(vec![3; 100]);
        net.backend_readable = true;
        assert!(!net.process_rx());
        let h = rx.add(&[wo(DATA_START + 0x1000, 1526)]);
        assert!(net.process_rx());
        assert_eq!(rx.used(), vec![(u32::from(h), 100)]);
        // A buffer outside guest memory breaks the queue.
        tx.add(&[ro(0xffff_0000, 64)]);
        net.process_tx();
        assert!(net.common.needs_reset());
    }
}
