//! The virtio-blk device: features, configuration space, and the request queue. Host I/O goes through
//! [`DiskBackend`].

use super::defs::*;
use super::request::{parse, ParseError, Request, RequestType};
use super::{DiskBackend, Error, QUEUE_SIZE};
use crate::devices::virtio::defs::TYPE_BLOCK;
use crate::devices::virtio::{next_chain, VirtioCommon, VirtioDevice};
use crate::rate_limiter::{RateLimit, RateLimiter};
use crate::vstate::memory::GuestMemory;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryBackend};

/// What the device has done, for logs, tests and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Read requests served.
    pub reads: u64,
    /// Write requests served.
    pub writes: u64,
    /// Flushes served.
    pub flushes: u64,
    /// GET_ID requests served.
    pub get_ids: u64,
    /// Bytes read from the disk into the guest.
    pub bytes_read: u64,
    /// Bytes written from the guest to the disk.
    pub bytes_written: u64,
    /// Writes refused because the disk is read-only.
    pub ro_writes_refused: u64,
    /// Requests answered IOERR for any other reason (malformed, out of range, host I/O failure).
    pub io_errors: u64,
    /// Requests of an unknown type (answered UNSUPP).
    pub unsupported: u64,
}

/// A virtio-blk device.
pub struct Block {
    pub(super) common: VirtioCommon,
    backend: Box<dyn DiskBackend>,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    capacity_sectors: u64,
    /// Data descriptors of the request being parsed; reused, never longer than a queue.
    data: Vec<Descriptor>,
    pub(super) queues_watched: bool,
    /// The optional bytes/s and requests/s limit.
    pub(super) limiter: Option<RateLimiter>,
    pub(super) limiter_watched: bool,
    /// Counters.
    pub stats: BlockStats,
}

/// The most requests served per event-loop turn; the rest wait for the next turn, so one busy disk cannot keep
/// the loop from the other devices.
pub const MAX_REQUESTS_PER_TURN: usize = QUEUE_SIZE as usize;

impl Block {
    /// A disk on `backend`; `id` (at most 20 bytes are kept) answers GET_ID and becomes /sys/block/vdX/serial.
    pub fn new(backend: Box<dyn DiskBackend>, read_only: bool, id: &str) -> Result<Self, Error> {
        // SEG_MAX: without it Linux sends one data segment per request, i.e. one page at a time.
        let mut features = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut id_bytes = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block {
            common: VirtioCommon::new(TYPE_BLOCK, features, &[QUEUE_SIZE])?,
            capacity_sectors: backend.size() / SECTOR_SIZE,
            backend,
            read_only,
            id: id_bytes,
            data: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            queues_watched: false,
            limiter: None,
            limiter_watched: false,
            stats: BlockStats::default(),
        })
    }

    /// Limits the disk to `limit` (bytes/s of data, requests/s).
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Result<Self, Error> {
        self.limiter = RateLimiter::new(limit).map_err(Error::RateLimiter)?;
        Ok(self)
    }

    /// How often the rate limit made the disk wait.
    pub fn throttled(&self) -> u64 {
        self.limiter.as_ref().map_or(0, |l| l.throttled)
    }

    /// The disk's size in 512-byte sectors (a partial last sector is not exposed).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Puts `backend` behind the disk while the guest runs (a runtime block slot: an image attached, or the empty
    /// backend to detach it), as Firecracker's `PATCH /drives` does: the capacity changes, and a
    /// configuration-change interrupt makes the guest's driver read it again. Requests already served read the
    /// old image; the guest drops its cached blocks itself when it mounts the new one.
    pub fn replace_backend(&mut self, backend: Box<dyn DiskBackend>) {
        self.capacity_sectors = backend.size() / SECTOR_SIZE;
        self.backend = backend;
        self.common.config_changed();
    }

    /// Serves every available request. Returns whether the used ring changed.
    pub fn process_queue(&mut self) -> bool {
        let Some(mem_arc) = self.common.mem.clone() else {
            return false;
        };
        let mem: &GuestMemory = &mem_arc;
        let mut used_any = false;
        let mut served = 0;
        loop {
            if self.limiter.as_mut().is_some_and(|l| !l.ready()) {
                // The limiter's timer brings the loop back here.
                break;
            }
            if served == MAX_REQUESTS_PER_TURN {
                // Come back on the next turn of the event loop.
                if let Err(e) = self.common.queue_evts[0].write(1) {
                    tracing::warn!("virtio-blk: failed to requeue its own notification: {e}");
                }
                break;
            }
            served += 1;
            let chain = match next_chain(&mut self.common.queues[0], mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("bad available ring: {e}"));
                    break;
                }
            };
            let head = chain.head_index();
            let (status_addr, code, used_len) =
                match parse(chain, mem, self.capacity_sectors, &mut self.data) {
                    Ok(req) => {
                        if let Some(l) = self.limiter.as_mut() {
                            l.consume(self.data.iter().map(|d| u64::from(d.len())).sum());
                        }
                        let (code, len) = self.execute(mem, &req);
                        (req.status, code, len)
                    }
                    Err(ParseError::Refused { code, status, kind }) => {
                        self.count_refusal(code, kind);
                        (status, code, 1)
                    }
                    Err(e) => {
                        self.common.set_needs_reset(&e.to_string());
                        break;
                    }
                };
            // The parser checked the status byte lies in guest memory.
            let wrote = mem.write_obj(code, status_addr).is_ok();
            if !wrote || self.common.queues[0].add_used(mem, head, used_len).is_err() {
                self.common
                    .set_needs_reset("failed to write the status byte or the used ring");
                break;
            }
            used_any = true;
        }
        used_any
    }

    fn count_refusal(&mut self, code: u8, kind: Option<RequestType>) {
        match (code, kind) {
            (VIRTIO_BLK_S_UNSUPP, _) => self.stats.unsupported += 1,
            (_, Some(RequestType::Out)) if self.read_only => self.stats.ro_writes_refused += 1,
            _ => self.stats.io_errors += 1,
        }
    }

    /// Runs a parsed request; returns the status and the used length (bytes written into the guest).
    fn execute(&mut self, mem: &GuestMemory, req: &Request) -> (u8, u32) {
        // Only reads and writes had their sector range-checked; other types may carry any sector (found by the
        // blk_request fuzz target: FLUSH with sector 2^63 overflowed here).
        let mut offset = req.sector.saturating_mul(SECTOR_SIZE);
        let result = match req.kind {
            RequestType::In => {
                let r = self.data.iter().try_for_each(|d| {
                    let slice = mem
                        .get_slice(d.addr(), d.len() as usize)
                        .map_err(std::io::Error::other)?;
                    self.backend.read_at(offset, &slice)?;
                    offset += u64::from(d.len());
                    Ok::<_, std::io::Error>(())
                });
                r.map(|()| {
                    self.stats.reads += 1;
                    self.stats.bytes_read += u64::from(req.data_len);
                    req.data_len + 1
                })
            }
            RequestType::Out if self.read_only => {
                self.stats.ro_writes_refused += 1;
                tracing::debug!(sector = req.sector, "write to a read-only disk refused");
                return (VIRTIO_BLK_S_IOERR, 1);
            }
            RequestType::Out => {
                let r = self.data.iter().try_for_each(|d| {
                    let slice = mem
                        .get_slice(d.addr(), d.len() as usize)
                        .map_err(std::io::Error::other)?;
                    self.backend.write_at(offset, &slice)?;
                    offset += u64::from(d.len());
                    Ok::<_, std::io::Error>(())
                });
                r.map(|()| {
                    self.stats.writes += 1;
                    self.stats.bytes_written += u64::from(req.data_len);
                    1
                })
            }
            RequestType::Flush => {
                self.stats.flushes += 1;
                // Nothing to make durable on a read-only disk.
                if self.read_only {
                    Ok(1)
                } else {
                    self.backend.flush().map(|()| 1)
                }
            }
            RequestType::GetId => {
                let mut id: &[u8] = &self.id;
                let mut written = 0u32;
                for d in &self.data {
                    let n = id.len().min(d.len() as usize);
                    if mem.write_slice(&id[..n], d.addr()).is_err() {
                        break;
                    }
                    id = &id[n..];
                    written += n as u32;
                }
                self.stats.get_ids += 1;
                Ok(written + 1)
            }
            // The parser answers unknown types itself.
            RequestType::Unsupported(_) => return (VIRTIO_BLK_S_UNSUPP, 1),
        };
        match result {
            Ok(len) => (VIRTIO_BLK_S_OK, len),
            Err(e) => {
                self.stats.io_errors += 1;
                tracing::warn!(sector = req.sector, "virtio-blk host I/O failed: {e}");
                (VIRTIO_BLK_S_IOERR, 1)
            }
        }
    }
}

impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config: le64 capacity, le32 size_max (not offered), le32 seg_max. A chain holds the
        // header and the status besides the data.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        config[12..].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        crate::devices::virtio::read_config_bytes(&config, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::request::OutHdr;
    use crate::devices::virtio::block::FileBackend;
    use crate::devices::virtio::test_utils::{activate, ro, wo, Driver, TestMem, DATA_START};
    use crate::rate_limiter::RateLimit;
    use std::io::Write;
    use vm_memory::ByteValued;

    const H: u64 = DATA_START;
    const S: u64 = DATA_START + 0x100;
    const D: u64 = DATA_START + 0x1000;

    fn disk(sectors: u64) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for s in 0..sectors {
            f.write_all(&[s as u8; 512]).unwrap();
        }
        f
    }

    fn setup<'a>(
        mem: &'a TestMem,
        file: &tempfile::NamedTempFile,
        read_only: bool,
    ) -> (Block, Driver<'a>) {
        let backend = FileBackend::open(file.path(), read_only).unwrap();
        let mut blk =
            Block::new(Box::new(backend), read_only, "rootfs-id-is-longer-than-20").unwrap();
        let drv = Driver::new(mem, 0, QUEUE_SIZE);
        activate(&mut blk, mem, vec![drv.queue()]);
        (blk, drv)
    }

    fn request(
        drv: &mut Driver<'_>,
        type_: u32,
        sector: u64,
        data: &[crate::devices::virtio::test_utils::Buf],
    ) -> u16 {
        drv.write(
            H,
            OutHdr {
                type_,
                reserved: 0,
                sector,
            }
            .as_slice(),
        );
        drv.write(S, &[0xff]);
        let mut bufs = vec![ro(H, 16)];
        bufs.extend_from_slice(data);
        bufs.push(wo(S, 1));
        drv.add(&bufs)
    }

    #[test]
    fn config_space_and_features() {
        let mem = TestMem::new();
        let f = disk(8);
        let (blk, _) = setup(&mem, &f, true);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut seg_max = [0u8; 4];
        blk.read_config(12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), u32::from(QUEUE_SIZE) - 2);
        assert!(blk.common.has_feature(VIRTIO_BLK_F_SEG_MAX));
        assert!(blk.common.has_feature(VIRTIO_BLK_F_RO));
        assert!(blk.common.has_feature(VIRTIO_BLK_F_FLUSH));
    }

    #[test]
    fn read_write_flush_get_id() {
        let mem = TestMem::new();
        let f = disk(8);
        let (mut blk, mut drv) = setup(&mem, &f, false);
        // Read sectors 2..4 into two buffers.
        let h = request(
            &mut drv,
            VIRTIO_BLK_T_IN,
            2,
            &[wo(D, 512), wo(D + 0x2000, 512)],
        );
        assert!(blk.process_queue());
        assert_eq!(drv.used(), vec![(u32::from(h), 1025)]);
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_OK]);
        assert_eq!(drv.read(D, 512), vec![2; 512]);
        assert_eq!(drv.read(D + 0x2000, 512), vec![3; 512]);
        // Write sector 5, flush, read it back.
        drv.write(D, &[0xab; 512]);
        request(&mut drv, VIRTIO_BLK_T_OUT, 5, &[ro(D, 512)]);
        blk.process_queue();
        request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
        blk.process_queue();
        assert_eq!(drv.used().len(), 2);
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_OK]);
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[5 * 512..6 * 512], &[0xab; 512]);
        // GET_ID: 20 bytes, not NUL-terminated when full.
        let h = request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, &[wo(D, 64)]);
        blk.process_queue();
        assert_eq!(drv.used(), vec![(u32::from(h), 21)]);
        assert_eq!(drv.read(D, 20), b"rootfs-id-is-longer-".to_vec());
        assert_eq!(
            blk.stats,
            BlockStats {
                reads: 1,
                writes: 1,
                flushes: 1,
                get_ids: 1,
                bytes_read: 1024,
                bytes_written: 512,
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_rate_limit_pauses_the_queue_until_its_timer() {
        let mem = TestMem::new();
        let f = disk(8);
        let backend = FileBackend::open(f.path(), true).unwrap();
        // 1000 bytes/s: the first 512-byte read goes, the second too (into 24 bytes of debt), then the queue waits.
        let mut blk = Block::new(Box::new(backend), true, "x")
            .unwrap()
            .with_rate_limit(RateLimit {
                bytes_per_sec: Some(1000),
                ops_per_sec: None,
            })
            .unwrap();
        let mut drv = Driver::new(&mem, 0, QUEUE_SIZE);
        activate(&mut blk, &mem, vec![drv.queue()]);
        for _ in 0..4 {
            request(&mut drv, VIRTIO_BLK_T_IN, 0, &[wo(D, 512)]);
        }
        assert!(blk.process_queue());
        assert_eq!(drv.used().len(), 2, "two reads fit the bucket");
        assert_eq!(blk.throttled(), 1);
        assert!(
            !blk.process_queue(),
            "a notification does not get past the limit"
        );
        // The event loop would wait for the timer (25 ms: the debt plus one byte) and then serve the next.
        let t = std::time::Instant::now();
        blk.limiter.as_mut().unwrap().on_timer();
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(15),
            "{:?}",
            t.elapsed()
        );
        assert!(blk.process_queue());
        assert!(!drv.used().is_empty());
        assert!(!blk.common.needs_reset());
    }

    #[test]
    fn writes_to_a_read_only_disk_are_refused_and_counted() {
        let mem = TestMem::new();
        let f = disk(8);
        let before = std::fs::read(f.path()).unwrap();
        let (mut blk, mut drv) = setup(&mem, &f, true);
        drv.write(D, &[0xcd; 512]);
        request(&mut drv, VIRTIO_BLK_T_OUT, 1, &[ro(D, 512)]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_IOERR]);
        // A malformed write (odd length) on the read-only disk is also a refused write.
        request(&mut drv, VIRTIO_BLK_T_OUT, 1, &[ro(D, 100)]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_IOERR]);
        assert_eq!(blk.stats.ro_writes_refused, 2);
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        // Flush is harmless.
        request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_OK]);
        assert!(!blk.common.needs_reset());
    }

    #[test]
    fn hostile_requests() {
        let mem = TestMem::new();
        let f = disk(8);
        let (mut blk, mut drv) = setup(&mem, &f, false);
        // Unknown type, out of range, zero-length: answered, the queue keeps going.
        request(&mut drv, 0x1234, 0, &[]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_UNSUPP]);
        request(&mut drv, VIRTIO_BLK_T_IN, 8, &[wo(D, 512)]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_IOERR]);
        request(&mut drv, VIRTIO_BLK_T_IN, 0, &[wo(D, 0)]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_IOERR]);
        // Any sector on a request that has none.
        request(&mut drv, VIRTIO_BLK_T_FLUSH, u64::MAX, &[]);
        blk.process_queue();
        assert_eq!(drv.read(S, 1), vec![VIRTIO_BLK_S_OK]);
        assert_eq!(drv.used().len(), 4);
        assert_eq!((blk.stats.unsupported, blk.stats.io_errors), (1, 2));
        assert!(!blk.common.needs_reset());
        // A buffer outside guest memory: the queue is broken, the device waits for a reset, nothing panics.
        request(&mut drv, VIRTIO_BLK_T_IN, 0, &[wo(0xfff0_0000, 512)]);
        blk.process_queue();
        assert!(blk.common.needs_reset());
        assert!(drv.used().is_empty());
        // Further notifications do nothing until the driver resets.
        request(&mut drv, VIRTIO_BLK_T_IN, 0, &[wo(D, 512)]);
        assert!(!blk.process_queue());
        blk.reset();
        assert!(!blk.common.needs_reset());
    }

    #[test]
    fn serving_requests_does_not_grow_the_heap() {
        use crate::devices::virtio::test_utils::heap;
        let mem = TestMem::new();
        let f = disk(64);
        let (mut blk, mut drv) = setup(&mem, &f, true);
        let mut most = 0;
        for i in 0..200u64 {
            // Reads, refused writes, unknown types and out-of-range sectors, 255-buffer chains.
            match i % 4 {
                0 => request(&mut drv, VIRTIO_BLK_T_IN, i % 60, &[wo(D, 2048)]),
                1 => request(&mut drv, VIRTIO_BLK_T_OUT, 0, &[ro(D, 512)]),
                2 => request(&mut drv, 99, 0, &[]),
                _ => request(&mut drv, VIRTIO_BLK_T_IN, 1 << 40, &[wo(D, 512); 253]),
            };
            let (_, growth) = heap::peak_growth(|| blk.process_queue());
            most = most.max(growth);
        }
        assert!(!blk.common.needs_reset());
        assert_eq!(most, 0, "heap growth while serving requests");
    }

    #[test]
    fn avail_index_beyond_the_queue_breaks_it() {
        let mem = TestMem::new();
        let f = disk(8);
        let (mut blk, mut drv) = setup(&mem, &f, false);
        drv.set_avail_idx(QUEUE_SIZE + 5);
        assert!(!blk.process_queue());
        assert!(blk.common.needs_reset());
    }

    #[test]
    fn a_disk_of_odd_size_exposes_whole_sectors_only() {
        let mut f = disk(2);
        f.write_all(&[1; 100]).unwrap();
        let blk = Block::new(
            Box::new(FileBackend::open(f.path(), true).unwrap()),
            true,
            "",
        )
        .unwrap();
        assert_eq!(blk.capacity_sectors(), 2);
        assert!(
            FileBackend::open(std::path::Path::new("/nonexistent/disk"), true)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/disk")
        );
    }

    /// Instructions per 4 KiB read: run under callgrind (see docs in the report):
    /// `valgrind --tool=callgrind --toggle-collect='*Block::process_queue*' <test binary> --ignored bench_4k_reads`
    /// and divide the total by `BENCH_REQUESTS`.
    #[test]
    #[ignore = "a measurement, run under callgrind"]
    fn bench_4k_reads() {
        const BENCH_REQUESTS: u64 = 1000;
        let mem = TestMem::new();
        let f = disk(64);
        let (mut blk, mut drv) = setup(&mem, &f, true);
        for i in 0..BENCH_REQUESTS {
            request(&mut drv, VIRTIO_BLK_T_IN, (i * 8) % 56, &[wo(D, 4096)]);
            assert!(blk.process_queue());
        }
        assert_eq!(blk.stats.reads, BENCH_REQUESTS);
    }
}
