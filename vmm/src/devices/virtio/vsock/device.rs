//! The virtio-vsock device: config space (the guest CID) and the rx/tx/event queues. Packets are parsed by the
//! `virtio-vsock` crate; what they mean on the host is the [`VsockBackend`]'s business.

use super::defs::VSOCK_HOST_CID;
use super::{Error, VsockBackend, MAX_PKT_DATA, QUEUE_SIZES};
use crate::devices::virtio::defs::TYPE_VSOCK;
use crate::devices::virtio::{next_chain, VirtioCommon, VirtioDevice};
use crate::vstate::memory::GuestMemory;
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{Error as PacketError, VsockPacket, PKT_HEADER_SIZE};

/// Receive queue (device to guest).
pub const RXQ: usize = 0;
/// Transmit queue (guest to device).
pub const TXQ: usize = 1;
/// Event queue (transport resets; unused: the VMM is never migrated).
pub const EVQ: usize = 2;

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets taken from the guest and handed to the backend.
    pub tx_packets: u64,
    /// Packets given to the guest.
    pub rx_packets: u64,
    /// Guest packets dropped: malformed, forged length, or with CIDs that are not (guest, host).
    pub tx_dropped: u64,
    /// Receive buffers the guest gave that could not hold a packet.
    pub rx_bad_buffers: u64,
}

/// The virtio-vsock device.
pub struct Vsock {
    pub(super) common: VirtioCommon,
    guest_cid: u64,
    pub(super) backend: Box<dyn VsockBackend>,
    pub(super) queues_watched: bool,
    pub(super) backend_watched: bool,
    /// Counters.
    pub stats: VsockStats,
    /// The payload of a guest packet spread over several descriptors, copied out (at most [`MAX_PKT_DATA`]).
    tx_data: Vec<u8>,
}

/// Whether a packet error means the queue itself cannot be trusted (guest memory), rather than one bad packet.
fn is_memory_error(e: &PacketError) -> bool {
    matches!(
        e,
        PacketError::InvalidMemoryAccess(_)
            | PacketError::InvalidVolatileAccess(_)
            | PacketError::FragmentedMemory
    )
}

/// Reads a tx packet into `hdr` and `data` descriptor by descriptor. Linux 6.12.y and later send payloads above
/// 32 KiB as page fragments, one descriptor each after the header's; virtio 1.x lets a driver lay a buffer out
/// over descriptors as it likes. `data` never holds more than [`MAX_PKT_DATA`].
fn gather_tx(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
    hdr: &mut [u8; PKT_HEADER_SIZE],
    data: &mut Vec<u8>,
) -> Result<(), PacketError> {
    use vm_memory::{Address, Bytes};
    data.clear();
    let mut hdr_filled = 0;
    let mut want = None;
    for desc in chain {
        if desc.is_write_only() {
            return Err(PacketError::UnexpectedWriteOnlyDescriptor);
        }
        let mut addr = desc.addr();
        let mut left = desc.len() as usize;
        if hdr_filled < PKT_HEADER_SIZE {
            let n = left.min(PKT_HEADER_SIZE - hdr_filled);
            mem.read_slice(&mut hdr[hdr_filled..hdr_filled + n], addr)
                .map_err(PacketError::InvalidMemoryAccess)?;
            hdr_filled += n;
            left -= n;
            addr = addr
                .checked_add(n as u64)
                .ok_or(PacketError::DescriptorLengthTooSmall)?;
            if hdr_filled < PKT_HEADER_SIZE {
                continue;
            }
            // struct virtio_vsock_hdr: le32 len at offset 24.
            let len = u32::from_le_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]);
            if len > MAX_PKT_DATA {
                return Err(PacketError::InvalidHeaderLen(len));
            }
            want = Some(len as usize);
        }
        let Some(want) = want else { continue };
        let n = left.min(want - data.len());
        if n > 0 {
            let start = data.len();
            data.resize(start + n, 0);
            mem.read_slice(&mut data[start..], addr)
                .map_err(PacketError::InvalidMemoryAccess)?;
        }
        if data.len() == want {
            return Ok(());
        }
    }
    Err(if hdr_filled < PKT_HEADER_SIZE {
        PacketError::DescriptorLengthTooSmall
    } else {
        PacketError::DescriptorChainTooShort
    })
}

impl Vsock {
    /// A device for a guest with `guest_cid`, its host side in `backend`.
    pub fn new(guest_cid: u64, backend: Box<dyn VsockBackend>) -> Result<Self, Error> {
        Ok(Vsock {
            common: VirtioCommon::new(TYPE_VSOCK, 0, &QUEUE_SIZES)?,
            guest_cid,
            backend,
            queues_watched: false,
            backend_watched: false,
            stats: VsockStats::default(),
            tx_data: Vec::new(),
        })
    }

    /// Guest bytes the host side holds for peers that have not read them yet (bounded by
    /// `MAX_CONNECTIONS * CONN_TX_BUF_SIZE`).
    pub fn buffered_bytes(&self) -> usize {
        self.backend.buffered_bytes()
    }

    /// Hands every packet the guest queued to the backend. Returns whether the used ring changed.
    pub fn process_tx(&mut self) -> bool {
        let Some(mem_arc) = self.common.mem.clone() else {
            return false;
        };
        let mem: &GuestMemory = &mem_arc;
        let mut used_any = false;
        loop {
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
            let mut hdr = [0u8; PKT_HEADER_SIZE];
            let parsed =
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain.clone(), MAX_PKT_DATA) {
                    // The crate takes the payload from one descriptor only; the guest may have spread it over
                    // several (any layout is allowed).
                    Err(e) if !is_memory_error(&e) => {
                        gather_tx(mem, chain, &mut hdr, &mut self.tx_data).and_then(|()| {
                            let raw = hdr;
                            let data = (!self.tx_data.is_empty()).then_some(&mut self.tx_data[..]);
                            // SAFETY: `hdr` and `tx_data` are this function's and this device's own buffers; the
                            // packet is dropped at the end of this iteration, before either is touched again.
                            let mut pkt = unsafe { VsockPacket::new(&mut hdr, data) }?;
                            pkt.set_header_from_raw(&raw)?;
                            Ok(pkt)
                        })
                    }
                    other => other,
                };
            match parsed {
                Ok(pkt) if pkt.src_cid() == self.guest_cid && pkt.dst_cid() == VSOCK_HOST_CID => {
                    self.stats.tx_packets += 1;
                    self.backend.send_pkt(&pkt);
                }
                Ok(pkt) => {
                    tracing::debug!(
                        src = pkt.src_cid(),
                        dst = pkt.dst_cid(),
                        "vsock: packet with foreign CIDs dropped"
                    );
                    self.stats.tx_dropped += 1;
                }
                Err(e) if is_memory_error(&e) => {
                    self.common
                        .set_needs_reset(&format!("tx descriptor outside guest memory: {e}"));
                    break;
                }
                Err(e) => {
                    tracing::debug!("vsock: malformed tx packet dropped: {e}");
                    self.stats.tx_dropped += 1;
                }
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

    /// Fills the guest's receive buffers with what the backend has. Returns whether the used ring changed.
    pub fn process_rx(&mut self) -> bool {
        let Some(mem_arc) = self.common.mem.clone() else {
            return false;
        };
        let mem: &GuestMemory = &mem_arc;
        let mut used_any = false;
        while self.backend.has_pending_rx() {
            let mut chain = match next_chain(&mut self.common.queues[RXQ], mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.common
                        .set_needs_reset(&format!("bad rx available ring: {e}"));
                    break;
                }
            };
            let head = chain.head_index();
            let used_len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    if !self.backend.recv_pkt(&mut pkt) {
                        // Nothing after all: give the buffer back for later.
                        self.common.queues[RXQ].go_to_previous_position();
                        break;
                    }
                    pkt.set_src_cid(VSOCK_HOST_CID).set_dst_cid(self.guest_cid);
                    self.stats.rx_packets += 1;
                    PKT_HEADER_SIZE as u32 + pkt.len()
                }
                Err(e) if is_memory_error(&e) => {
                    self.common
                        .set_needs_reset(&format!("rx descriptor outside guest memory: {e}"));
                    break;
                }
                Err(e) => {
                    tracing::debug!("vsock: unusable rx buffer returned empty: {e}");
                    self.stats.rx_bad_buffers += 1;
                    0
                }
            };
            if self.common.queues[RXQ]
                .add_used(mem, head, used_len)
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

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        crate::devices::virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }
    fn reset(&mut self) {
        self.backend.reset();
        self.common.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{activate, ro, wo, Driver, TestMem, DATA_START};
    use crate::devices::virtio::vsock::defs::*;
    use crate::devices::virtio::vsock::{UnixBackend, CONN_TX_BUF_SIZE};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    const CID: u64 = 3;
    const TX_HDR: u64 = DATA_START;
    const TX_DATA: u64 = DATA_START + 0x1000;
    const RX_BASE: u64 = DATA_START + 0x10_0000;

    #[derive(Clone, Copy, Default)]
    struct Hdr {
        src_cid: u64,
        dst_cid: u64,
        src_port: u32,
        dst_port: u32,
        len: u32,
        type_: u16,
        op: u16,
        flags: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    }

    impl Hdr {
        fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::with_capacity(44);
            b.extend_from_slice(&self.src_cid.to_le_bytes());
            b.extend_from_slice(&self.dst_cid.to_le_bytes());
            b.extend_from_slice(&self.src_port.to_le_bytes());
            b.extend_from_slice(&self.dst_port.to_le_bytes());
            b.extend_from_slice(&self.len.to_le_bytes());
            b.extend_from_slice(&self.type_.to_le_bytes());
            b.extend_from_slice(&self.op.to_le_bytes());
            b.extend_from_slice(&self.flags.to_le_bytes());
            b.extend_from_slice(&self.buf_alloc.to_le_bytes());
            b.extend_from_slice(&self.fwd_cnt.to_le_bytes());
            b
        }
        fn parse(b: &[u8]) -> Hdr {
            let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
            let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
            Hdr {
                src_cid: u64_at(0),
                dst_cid: u64_at(8),
                src_port: u32_at(16),
                dst_port: u32_at(20),
                len: u32_at(24),
                type_: u16_at(28),
                op: u16_at(30),
                flags: u32_at(32),
                buf_alloc: u32_at(36),
                fwd_cnt: u32_at(40),
            }
        }
    }

    /// A guest socket's packet from port `src` to host port `dst`.
    fn guest_pkt(op: u16, src: u32, dst: u32, len: u32) -> Hdr {
        Hdr {
            src_cid: CID,
            dst_cid: VSOCK_HOST_CID,
            src_port: src,
            dst_port: dst,
            len,
            type_: VSOCK_TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Default::default()
        }
    }

    struct Rig<'a> {
        dev: Vsock,
        rx: Driver<'a>,
        tx: Driver<'a>,
        rx_slot: u64,
        rx_addrs: std::collections::HashMap<u32, u64>,
        uds: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a TestMem) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("v.sock");
            let backend = UnixBackend::bind(&uds).unwrap();
            let mut dev = Vsock::new(CID, Box::new(backend)).unwrap();
            let rx = Driver::new(mem, 0, QUEUE_SIZES[0]);
            let tx = Driver::new(mem, 1, QUEUE_SIZES[1]);
            let ev = Driver::new(mem, 2, QUEUE_SIZES[2]);
            activate(&mut dev, mem, vec![rx.queue(), tx.queue(), ev.queue()]);
            Rig {
                dev,
                rx,
                tx,
                rx_slot: 0,
                rx_addrs: Default::default(),
                uds,
                _dir: dir,
            }
        }

        /// The guest sends a packet; returns after the device handled it.
        fn send(&mut self, h: Hdr, data: &[u8]) {
            self.tx.write(TX_HDR, &h.bytes());
            if data.is_empty() {
                self.tx.add(&[ro(TX_HDR, 44)]);
            } else {
                self.tx.write(TX_DATA, data);
                self.tx
                    .add(&[ro(TX_HDR, 44), ro(TX_DATA, data.len() as u32)]);
            }
            self.dev.process_tx();
        }

        /// Gives the device `n` receive buffers and returns the packets it put there.
        /// A guest connection from `guest_port` to a host listener on `host_port` (`<uds>_<port>`), accepted:
        /// the host's end, once the guest has its RESPONSE.
        fn connect_to_host(&mut self, guest_port: u32, host_port: u32) -> UnixStream {
            let listener =
                UnixListener::bind(format!("{}_{host_port}", self.uds.display())).unwrap();
            self.send(guest_pkt(VSOCK_OP_REQUEST, guest_port, host_port, 0), &[]);
            let (host, _) = listener.accept().unwrap();
            assert_eq!(self.recv(1)[0].0.op, VSOCK_OP_RESPONSE);
            host
        }

        fn recv(&mut self, n: usize) -> Vec<(Hdr, Vec<u8>)> {
            for _ in 0..n {
                let a = RX_BASE + (self.rx_slot % 64) * 0x2_0000;
                self.rx_slot += 1;
                let h = self.rx.add(&[wo(a, 44), wo(a + 0x1000, 0x1_0000)]);
                self.rx_addrs.insert(u32::from(h), a);
            }
            self.dev.backend.notify();
            self.dev.process_rx();
            self.rx
                .used()
                .into_iter()
                .map(|(id, len)| {
                    let a = self.rx_addrs[&id];
                    let h = Hdr::parse(&self.rx.read(a, 44));
                    assert_eq!(len, 44 + h.len);
                    (h, self.rx.read(a + 0x1000, h.len as usize))
                })
                .collect()
        }
    }

    #[test]
    fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let listener = UnixListener::bind(format!("{}_1234", rig.uds.display())).unwrap();
        rig.send(guest_pkt(VSOCK_OP_REQUEST, 5000, 1234, 0), &[]);
        let (mut host, _) = listener.accept().unwrap();
        let got = rig.recv(4);
        assert_eq!(got.len(), 1);
        let h = got[0].0;
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
            (VSOCK_OP_RESPONSE, 2, CID, 1234, 5000)
        );
        assert_eq!(h.buf_alloc, CONN_TX_BUF_SIZE);
        // Guest to host.
        rig.send(guest_pkt(VSOCK_OP_RW, 5000, 1234, 5), b"hello");
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Host to guest.
        host.write_all(b"world").unwrap();
        let got = rig.recv(1);
        assert_eq!(got[0].0.op, VSOCK_OP_RW);
        assert_eq!(got[0].1, b"world");
        // The host closes: the guest is told, answers RST, the connection is gone.
        drop(host);
        let got = rig.recv(1);
        assert_eq!(got[0].0.op, VSOCK_OP_SHUTDOWN);
        rig.send(guest_pkt(VSOCK_OP_RST, 5000, 1234, 0), &[]);
        assert!(rig.recv(1).is_empty());
        assert_eq!(rig.dev.stats.tx_dropped, 0);
    }

    /// Linux 6.12.y sends payloads above 32 KiB as a header descriptor and one descriptor per page fragment; any
    /// other layout (a header split in two, data after the header in its descriptor) is as valid. Every byte
    /// reaches the host in order; a chain shorter than its header's length is dropped, the connection kept.
    #[test]
    fn guest_payload_spread_over_descriptors_reaches_the_host() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let mut host = rig.connect_to_host(5000, 1300);

        // Header, then 40000 bytes in fragments of 4096, 32768 and 3136 (as alloc_skb_with_frags makes them).
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let h = guest_pkt(VSOCK_OP_RW, 5000, 1300, payload.len() as u32);
        rig.tx.write(TX_HDR, &h.bytes());
        let frags = [
            (0x2_0000u64, 0usize, 4096usize),
            (0x4_0000, 4096, 32_768),
            (0x6_0000, 36_864, 3136),
        ];
        let mut bufs = vec![ro(TX_HDR, 44)];
        for (off, from, len) in frags {
            rig.tx.write(TX_DATA + off, &payload[from..from + len]);
            bufs.push(ro(TX_DATA + off, len as u32));
        }
        rig.tx.add(&bufs);
        rig.dev.process_tx();
        let mut got = vec![0u8; payload.len()];
        host.read_exact(&mut got).unwrap();
        assert!(got == payload, "the payload arrives whole and in order");

        // The header split over two descriptors, the data starting in the second one's tail.
        let h = guest_pkt(VSOCK_OP_RW, 5000, 1300, 6);
        let mut bytes = h.bytes();
        bytes.extend_from_slice(b"abcdef");
        rig.tx.write(TX_HDR, &bytes[..20]);
        rig.tx.write(TX_DATA, &bytes[20..]);
        rig.tx.add(&[ro(TX_HDR, 20), ro(TX_DATA, 30)]);
        rig.dev.process_tx();
        let mut got = [0u8; 6];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcdef");

        // A header that promises more than the chain holds: dropped, nothing written, the connection stays.
        let dropped = rig.dev.stats.tx_dropped;
        rig.tx
            .write(TX_HDR, &guest_pkt(VSOCK_OP_RW, 5000, 1300, 100).bytes());
        rig.tx.add(&[ro(TX_HDR, 44), ro(TX_DATA, 50)]);
        rig.dev.process_tx();
        assert_eq!(rig.dev.stats.tx_dropped, dropped + 1);
        rig.send(guest_pkt(VSOCK_OP_RW, 5000, 1300, 2), b"ok");
        let mut got = [0u8; 2];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
    }

    #[test]
    fn host_connects_to_a_guest_port() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let mut host = UnixStream::connect(&rig.uds).unwrap();
        host.write_all(b"CONNECT 52\nearly").unwrap();
        let got = rig.recv(2);
        assert_eq!(got.len(), 1);
        let req = got[0].0;
        assert_eq!((req.op, req.dst_port), (VSOCK_OP_REQUEST, 52));
        let local = req.src_port;
        // The guest accepts.
        rig.send(guest_pkt(VSOCK_OP_RESPONSE, 52, local, 0), &[]);
        let mut line = [0u8; 64];
        let n = host.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {local}\n")
        );
        // What the host sent right after its CONNECT line reaches the guest.
        let got = rig.recv(1);
        assert_eq!(got[0].1, b"early");
    }

    #[test]
    fn host_connection_to_a_port_nobody_listens_on_is_closed() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let mut host = UnixStream::connect(&rig.uds).unwrap();
        host.write_all(b"CONNECT 7\n").unwrap();
        let req = rig.recv(1)[0].0;
        rig.send(guest_pkt(VSOCK_OP_RST, 7, req.src_port, 0), &[]);
        let mut b = [0u8; 8];
        assert_eq!(host.read(&mut b).unwrap(), 0, "closed without OK");
        // A bad CONNECT line is refused too.
        let mut bad = UnixStream::connect(&rig.uds).unwrap();
        bad.write_all(b"HELLO THERE\n").unwrap();
        assert!(rig.recv(1).is_empty());
        assert_eq!(bad.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn hostile_packets() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        // No host listener: RST.
        rig.send(guest_pkt(VSOCK_OP_REQUEST, 5000, 999, 0), &[]);
        let got = rig.recv(1);
        assert_eq!(got[0].0.op, VSOCK_OP_RST);
        // Data for a connection that does not exist: RST; a RST for one: nothing.
        rig.send(guest_pkt(VSOCK_OP_RW, 5001, 998, 3), b"abc");
        rig.send(guest_pkt(VSOCK_OP_RST, 5002, 998, 0), &[]);
        let got = rig.recv(4);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.op, got[0].0.dst_port), (VSOCK_OP_RST, 5001));
        // A forged length: larger than the data buffer, larger than any packet.
        rig.send(guest_pkt(VSOCK_OP_RW, 5001, 998, 4096), b"abc");
        rig.send(guest_pkt(VSOCK_OP_RW, 5001, 998, u32::MAX), b"abc");
        assert_eq!(rig.dev.stats.tx_dropped, 2);
        // Forged CIDs.
        let mut h = guest_pkt(VSOCK_OP_REQUEST, 1, 2, 0);
        h.src_cid = 77;
        rig.send(h, &[]);
        assert_eq!(rig.dev.stats.tx_dropped, 3);
        // A header descriptor too short, and a device-writable one.
        rig.tx.add(&[ro(TX_HDR, 20)]);
        rig.tx.add(&[wo(TX_HDR, 44)]);
        rig.dev.process_tx();
        assert_eq!(rig.dev.stats.tx_dropped, 5);
        assert!(!rig.dev.common.needs_reset());
        // Flooding RSTs for unknown connections never queues more than a bounded number.
        for p in 0..1000 {
            rig.send(guest_pkt(VSOCK_OP_RW, p, 1, 0), &[]);
        }
        let mut total = 0;
        loop {
            let n = rig.recv(16).len();
            total += n;
            if n < 16 {
                break;
            }
        }
        assert!((200..=256).contains(&total), "{total} resets queued");
        // A header outside guest memory breaks the queue.
        rig.tx.add(&[ro(0xfff0_0000, 44)]);
        rig.dev.process_tx();
        assert!(rig.dev.common.needs_reset());
    }

    #[test]
    fn a_host_peer_that_never_reads_bounds_buffering() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let _host = rig.connect_to_host(6000, 80);
        // A guest that ignores credit and keeps sending 4 KiB packets.
        let chunk = vec![0x5a; 4096];
        let mut most = 0;
        let mut sent = 0;
        for _ in 0..400 {
            rig.send(guest_pkt(VSOCK_OP_RW, 6000, 80, 4096), &chunk);
            sent += 4096;
            most = most.max(buffered(&rig.dev));
        }
        assert!(sent > 1 << 20);
        assert!(most <= CONN_TX_BUF_SIZE as usize, "buffered {most}");
        // The connection was reset when the guest overran its credit.
        let got = rig.recv(8);
        assert!(got
            .iter()
            .any(|(h, _)| h.op == VSOCK_OP_RST && h.dst_port == 6000));
        assert_eq!(buffered(&rig.dev), 0);
    }

    #[test]
    fn connections_are_capped_and_a_listener_that_never_accepts_does_not_block() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        // A listener that never accepts: connects beyond its backlog must not stall the VMM.
        let _idle = UnixListener::bind(format!("{}_91", rig.uds.display())).unwrap();
        for p in 0..300 {
            rig.send(guest_pkt(VSOCK_OP_REQUEST, 10_000 + p, 91, 0), &[]);
        }
        let mut ops = Vec::new();
        loop {
            let got = rig.recv(16);
            let n = got.len();
            ops.extend(got.into_iter().map(|(h, _)| h.op));
            if n < 16 {
                break;
            }
        }
        let accepted = ops.iter().filter(|&&o| o == VSOCK_OP_RESPONSE).count();
        let reset = ops.iter().filter(|&&o| o == VSOCK_OP_RST).count();
        assert!(
            accepted <= crate::devices::virtio::vsock::MAX_CONNECTIONS,
            "{accepted}"
        );
        assert_eq!(accepted + reset, 300);
    }

    /// The worst a guest can do to the VMM's heap through vsock: as many connections as allowed, each to a host
    /// peer that never reads, each sent data past its credit until reset; plus a flood of packets for unknown
    /// connections. The bound is MAX_CONNECTIONS x CONN_TX_BUF_SIZE (8 MiB) plus bookkeeping.
    #[test]
    fn the_largest_heap_growth_a_guest_can_cause_through_vsock_is_bounded() {
        use crate::devices::virtio::test_utils::heap;
        use crate::devices::virtio::vsock::MAX_CONNECTIONS;
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let listener = UnixListener::bind(format!("{}_95", rig.uds.display())).unwrap();
        listener.set_nonblocking(true).unwrap();
        let chunk = vec![0x77u8; 4096];
        let mut peers = Vec::new();
        let ((), growth) = heap::peak_growth(|| {
            for c in 0..MAX_CONNECTIONS as u32 + 8 {
                let port = 20_000 + c;
                rig.send(guest_pkt(VSOCK_OP_REQUEST, port, 95, 0), &[]);
                if let Ok((s, _)) = listener.accept() {
                    peers.push(s);
                }
                // Fill the host socket, then this connection's VMM buffer to just below its cap, so that every
                // connection holds the most it can at the same time.
                let before = buffered(&rig.dev);
                for _ in 0..200 {
                    if buffered(&rig.dev) - before + 4096 > CONN_TX_BUF_SIZE as usize {
                        break;
                    }
                    rig.send(guest_pkt(VSOCK_OP_RW, port, 95, 4096), &chunk);
                }
            }
            for p in 0..2000 {
                rig.send(guest_pkt(VSOCK_OP_RW, 40_000 + p, 1, 0), &[]);
            }
        });
        let held = buffered(&rig.dev);
        eprintln!(
            "vsock: {held} bytes of guest data held for {} silent peers",
            peers.len()
        );
        eprintln!("vsock: largest VMM heap growth under the worst guest: {growth} bytes");
        let bound = (MAX_CONNECTIONS * CONN_TX_BUF_SIZE as usize) as i64 + (1 << 20);
        assert!(growth <= bound, "{growth} > {bound}");
        assert!(peers.len() <= MAX_CONNECTIONS);
    }

    fn buffered(dev: &Vsock) -> usize {
        dev.backend.buffered_bytes()
    }

    #[test]
    fn reset_in_the_middle_of_io_drops_connections() {
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let listener = UnixListener::bind(format!("{}_81", rig.uds.display())).unwrap();
        rig.send(guest_pkt(VSOCK_OP_REQUEST, 6001, 81, 0), &[]);
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(b"pending data").unwrap();
        rig.dev.reset();
        let mut b = [0u8; 4];
        assert!(
            matches!(host.read(&mut b), Ok(0) | Err(_)),
            "the host side sees the connection end"
        );
        assert!(!rig.dev.process_rx());
        assert!(!rig.dev.process_tx());
    }

    /// Instructions per vsock packet, each way: run under callgrind with
    /// `--toggle-collect='*Vsock::process_tx*'` (guest to host) or `--toggle-collect='*Vsock::process_rx*'
    /// --toggle-collect='*UnixBackend*notify*'` (host to guest), and divide by `BENCH_PACKETS`.
    #[test]
    #[ignore = "a measurement, run under callgrind"]
    fn bench_packets() {
        const BENCH_PACKETS: usize = 1000;
        let mem = TestMem::new();
        let mut rig = Rig::new(&mem);
        let mut host = rig.connect_to_host(7000, 90);
        let payload = [0x42u8; 64];
        let mut sink = [0u8; 64];
        for _ in 0..BENCH_PACKETS {
            // Guest to host: one 64-byte RW packet.
            rig.send(guest_pkt(VSOCK_OP_RW, 7000, 90, 64), &payload);
            host.read_exact(&mut sink).unwrap();
            // Host to guest: 64 bytes into one receive buffer.
            host.write_all(&payload).unwrap();
            let got = rig.recv(1);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1.len(), 64);
        }
    }
}
