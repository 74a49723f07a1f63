//! virtio-net (virtio 1.2 section 5.1) on a host tap interface, with every offload off: the guest sends and
//! receives plain Ethernet frames behind a zeroed `virtio_net_hdr_v1`.
//!
//! device.rs moves frames between the rx/tx queues and a [`NetBackend`]; tap.rs opens the tap (through
//! /dev/net/tun, optionally inside another network namespace) and is the only host I/O.

mod device;
mod event_handler;
mod tap;

pub use device::{Net, NetStats};
pub use tap::Tap;

use std::os::fd::RawFd;

/// Constants from include/uapi/linux/virtio_net.h.
pub mod defs {
    /// The device has a MAC address in its config space.
    pub const VIRTIO_NET_F_MAC: u32 = 5;
    /// Size of `struct virtio_net_hdr_v1`, which precedes every frame with VIRTIO_F_VERSION_1.
    pub const VNET_HDR_LEN: usize = 12;
}

/// Queue sizes: rx, tx.
pub const QUEUE_SIZES: [u16; 2] = [256, 256];
/// The largest frame (with its virtio-net header) passed either way: a 64 KiB IP packet plus Ethernet and
/// virtio headers. Without GSO a guest or tap never produces more; anything larger is dropped.
pub const MAX_FRAME: usize = 65_562;

/// Errors of the net device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rate limiter's timer could not be made.
    #[error("failed to set up the virtio-net rate limiter")]
    RateLimiter(#[source] std::io::Error),
    /// /dev/net/tun could not be opened or the tap created.
    #[error("failed to open tap {name}")]
    Tap {
        /// Interface name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The network namespace could not be entered.
    #[error("failed to enter network namespace {path}")]
    Netns {
        /// The namespace file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Shared virtio set-up failed.
    #[error("failed to set up the virtio-net device")]
    Virtio(#[from] super::Error),
}

/// Where frames go: a tap, or a fake in tests. Frames carry the 12-byte virtio-net header in front.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; `Ok(None)` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
    /// Sends one frame; a full host queue drops it (`Ok(false)`), as a NIC would.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool>;
    /// The fd the event loop watches for incoming frames (edge-triggered).
    fn as_raw_fd(&self) -> RawFd;
}
