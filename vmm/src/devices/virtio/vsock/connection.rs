//! One vsock connection between a guest socket and a host unix stream: state, credit accounting (virtio 1.2
//! section 5.10.6.3) and the bounded buffer of guest data the host has not read yet.

use super::defs::*;
use super::{CONN_TX_BUF_SIZE, MAX_PKT_DATA};
use std::io::{ErrorKind, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use virtio_vsock::packet::VsockPacket;
use vm_memory::{ReadVolatile, WriteVolatile};

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// A host process asked for it; waiting for the guest's RESPONSE.
    HostInitiated,
    /// Both sides connected.
    Established,
    /// The host side is gone; waiting for the guest's RST after our SHUTDOWN.
    Closing,
}

/// Control packets owed to the guest.
pub(super) mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const RST: u8 = 16;
}

/// What `fill_rx` produced.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fill {
    /// A packet; `done` when the connection is finished after it (RST sent).
    Packet { done: bool },
    /// Nothing to send now.
    Nothing,
}

/// A connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub stream: UnixStream,
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    pub state: State,
    /// The stream has data (edge-triggered epoll: set on EPOLLIN, cleared at EAGAIN).
    pub readable: bool,
    pub pending: u8,
    /// Whether it is in the backend's queue of connections with something for the guest.
    pub in_rxq: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_buf: Vec<u8>,
    /// The guest said it will send no more: shut the stream's write side once `tx_buf` drains.
    peer_send_closed: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            readable: false,
            pending: 0,
            in_rxq: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: Vec::new(),
            peer_send_closed: false,
        }
    }

    /// Takes the credit fields every guest packet carries.
    pub fn update_peer_credit(&mut self, pkt: &VsockPacket<'_, ()>) {
        self.peer_buf_alloc = pkt.buf_alloc();
        self.peer_fwd_cnt = Wrapping(pkt.fwd_cnt());
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether there is anything for the guest.
    pub fn wants_rx(&self) -> bool {
        self.pending != 0
            || (self.state == State::Established && self.readable && self.peer_credit() > 0)
    }

    /// Guest data for the host. Err when the guest overran the credit it was given (the caller resets).
    pub fn push_guest_data(&mut self, data: &vm_memory::VolatileSlice<'_, ()>) -> Result<(), ()> {
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match self.stream.write_volatile(data) {
                Ok(n) => written = n,
                Err(vm_memory::VolatileMemoryError::IOError(e))
                    if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Err(()),
            }
        }
        let rest = data.len() - written;
        if self.tx_buf.len() + rest > CONN_TX_BUF_SIZE as usize {
            return Err(());
        }
        if rest > 0 {
            let start = self.tx_buf.len();
            self.tx_buf.resize(start + rest, 0);
            let sub = data.subslice(written, rest).map_err(|_| ())?;
            sub.copy_to(&mut self.tx_buf[start..]);
        }
        self.account_forwarded(written);
        Ok(())
    }

    /// Writes buffered guest data the stream can now take (EPOLLOUT). Err when the stream failed.
    pub fn flush_tx(&mut self) -> Result<(), ()> {
        while !self.tx_buf.is_empty() {
            match self.stream.write(&self.tx_buf) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.account_forwarded(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        if self.tx_buf.is_empty() && self.peer_send_closed {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// The guest will send no more.
    pub fn peer_shutdown_send(&mut self) {
        self.peer_send_closed = true;
        let _ = self.flush_tx();
    }

    fn account_forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        // Tell the guest about freed space once half the buffer is free again, so it never stalls for long.
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_TX_BUF_SIZE / 2 {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// Bytes of guest data held in the VMM.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    fn header(&mut self, pkt: &mut VsockPacket<'_, ()>, op: u16, flags: u32, len: u32) {
        pkt.set_src_port(self.local_port)
            .set_dst_port(self.peer_port)
            .set_type(VSOCK_TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_len(len)
            .set_buf_alloc(CONN_TX_BUF_SIZE)
            .set_fwd_cnt(self.fwd_cnt.0);
        self.last_fwd_cnt_sent = self.fwd_cnt;
    }

    /// Writes the next packet for the guest into `pkt`: owed control packets first, then stream data as far as
    /// the guest's credit and buffer allow.
    pub fn fill_rx(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Fill {
        use pending::*;
        for (bit, op, flags) in [
            (RST, VSOCK_OP_RST, 0),
            (REQUEST, VSOCK_OP_REQUEST, 0),
            (RESPONSE, VSOCK_OP_RESPONSE, 0),
            (
                SHUTDOWN,
                VSOCK_OP_SHUTDOWN,
                VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND,
            ),
            (CREDIT_UPDATE, VSOCK_OP_CREDIT_UPDATE, 0),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                self.header(pkt, op, flags, 0);
                return Fill::Packet { done: bit == RST };
            }
        }
        if !(self.state == State::Established && self.readable) {
            return Fill::Nothing;
        }
        let credit = self.peer_credit().min(MAX_PKT_DATA) as usize;
        let Some(buf) = pkt.data_slice().copied() else {
            return Fill::Nothing;
        };
        let want = credit.min(buf.len());
        if want == 0 {
            return Fill::Nothing;
        }
        let Ok(mut dst) = buf.subslice(0, want) else {
            return Fill::Nothing;
        };
        match self.stream.read_volatile(&mut dst) {
            Ok(0) => {
                // The host side closed: tell the guest, wait for its RST.
                self.readable = false;
                self.state = State::Closing;
                self.header(
                    pkt,
                    VSOCK_OP_SHUTDOWN,
                    VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND,
                    0,
                );
                Fill::Packet { done: false }
            }
            Ok(n) => {
                self.rx_cnt += Wrapping(n as u32);
                self.header(pkt, VSOCK_OP_RW, 0, n as u32);
                Fill::Packet { done: false }
            }
            Err(vm_memory::VolatileMemoryError::IOError(e))
                if e.kind() == ErrorKind::WouldBlock =>
            {
                self.readable = false;
                Fill::Nothing
            }
            Err(_) => {
                self.header(pkt, VSOCK_OP_RST, 0, 0);
                Fill::Packet { done: true }
            }
        }
    }
}
