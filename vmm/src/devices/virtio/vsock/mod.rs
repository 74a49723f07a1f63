//! virtio-vsock (virtio 1.2 section 5.10) with Firecracker's hybrid unix-socket backend: the host side of every
//! guest socket is a unix stream, so the host needs no vhost-vsock (these machines have none).
//!
//! - Host to guest: a host process connects to the VM's socket (`uds_path`) and writes `CONNECT <port>\n`; the
//!   VMM asks the guest to connect to that port and answers `OK <host_port>\n` once the guest accepts, or closes
//!   the stream if nothing listens there.
//! - Guest to host: a guest connection to host port P is connected to a listener at `<uds_path>_<P>`.
//!
//! device.rs moves packets between the virtqueues and a [`VsockBackend`] (packet parsing is the `virtio-vsock`
//! crate's); unix_backend.rs is the muxer of unix streams and connection.rs one connection's state and credit.
//! Buffering is bounded: at most [`MAX_CONNECTIONS`] connections, each holding at most [`CONN_TX_BUF_SIZE`] bytes
//! of guest data its host peer has not read yet; a guest that sends past the credit it was given gets its
//! connection reset. Host data is read straight into the guest's receive buffers, only as far as the guest's
//! credit allows.

mod connection;
mod device;
mod event_handler;
mod unix_backend;

pub use device::{Vsock, VsockStats};
pub use unix_backend::UnixBackend;

use std::os::fd::RawFd;
use virtio_vsock::packet::VsockPacket;

/// Constants from include/uapi/linux/virtio_vsock.h.
pub mod defs {
    /// The host's CID.
    pub const VSOCK_HOST_CID: u64 = 2;
    /// Stream sockets.
    pub const VSOCK_TYPE_STREAM: u16 = 1;
    /// Connection request.
    pub const VSOCK_OP_REQUEST: u16 = 1;
    /// Connection accepted.
    pub const VSOCK_OP_RESPONSE: u16 = 2;
    /// Connection reset.
    pub const VSOCK_OP_RST: u16 = 3;
    /// Half or full shutdown.
    pub const VSOCK_OP_SHUTDOWN: u16 = 4;
    /// Data.
    pub const VSOCK_OP_RW: u16 = 5;
    /// Credit update.
    pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
    /// Credit request.
    pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;
    /// Shutdown flag: the sender will receive no more.
    pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
    /// Shutdown flag: the sender will send no more.
    pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;
}

/// Queue sizes: rx, tx, event.
pub const QUEUE_SIZES: [u16; 3] = [256, 256, 16];
/// The largest packet payload accepted from the guest (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// The receive buffer each connection advertises to the guest, and the most guest data it buffers.
pub const CONN_TX_BUF_SIZE: u32 = 64 * 1024;
/// The most connections at once; further requests are reset.
pub const MAX_CONNECTIONS: usize = 128;
/// The most host connections still sending their `CONNECT` line.
pub const MAX_PENDING_HOST_CONNECTIONS: usize = 32;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host socket could not be created.
    #[error("failed to listen on vsock socket {path}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend's epoll could not be set up.
    #[error("failed to set up the vsock backend's epoll")]
    Epoll(#[source] std::io::Error),
    /// Shared virtio set-up failed.
    #[error("failed to set up the virtio-vsock device")]
    Virtio(#[from] super::Error),
}

/// The host side of the device's packets.
pub trait VsockBackend: Send {
    /// A packet from the guest (addresses already checked by the device).
    fn send_pkt(&mut self, pkt: &VsockPacket<'_, ()>);
    /// Fills `pkt` (ports, op, flags, credit, data; the device sets the CIDs) with the next packet for the guest.
    /// Returns false when there is none after all.
    fn recv_pkt(&mut self, pkt: &mut VsockPacket<'_, ()>) -> bool;
    /// Whether `recv_pkt` may have something.
    fn has_pending_rx(&self) -> bool;
    /// An fd the event loop watches: readable when `notify` has work.
    fn as_raw_fd(&self) -> RawFd;
    /// Handles whatever made the fd readable.
    fn notify(&mut self);
    /// Drops every connection (device reset).
    fn reset(&mut self);
    /// Guest bytes held for host peers that have not read them yet (bounded; for tests and metrics).
    fn buffered_bytes(&self) -> usize;
}
