//! virtio-blk (virtio 1.2 section 5.2): the guest's disks. mvrun gives the guest a read-only rootfs image and,
//! optionally, a writable scratch image for the overlay's upper layer.
//!
//! request.rs parses a descriptor chain into a [`request::Request`] (pure, fuzzed), device.rs runs the queue and
//! owns the virtio state, event_handler.rs is the event-loop glue, and file_backend.rs does the host I/O behind
//! [`DiskBackend`].

mod device;
mod event_handler;
mod file_backend;
pub mod request;
pub mod slots;

pub use device::{Block, BlockStats};
pub use file_backend::{EmptyBackend, FileBackend};

use vm_memory::VolatileSlice;

/// Constants from include/uapi/linux/virtio_blk.h.
pub mod defs {
    /// The device says how many data segments a request may have (`seg_max`).
    pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
    /// The device is read-only.
    pub const VIRTIO_BLK_F_RO: u32 = 5;
    /// The device supports the flush command.
    pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
    /// Read.
    pub const VIRTIO_BLK_T_IN: u32 = 0;
    /// Write.
    pub const VIRTIO_BLK_T_OUT: u32 = 1;
    /// Flush.
    pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
    /// Get the device ID string.
    pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
    /// Success.
    pub const VIRTIO_BLK_S_OK: u8 = 0;
    /// I/O error.
    pub const VIRTIO_BLK_S_IOERR: u8 = 1;
    /// Unsupported request.
    pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
    /// Length of the ID string (VIRTIO_BLK_ID_BYTES).
    pub const VIRTIO_BLK_ID_BYTES: usize = 20;
    /// Sector size of the virtio-blk protocol, whatever the disk's own block size.
    pub const SECTOR_SIZE: u64 = 512;
}

/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk image could not be opened.
    #[error("failed to open disk image {path}")]
    Open {
        /// The image.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Shared virtio set-up failed.
    #[error("failed to set up the virtio-blk device")]
    Virtio(#[from] super::Error),
    /// The rate limiter's timer could not be made.
    #[error("failed to set up the virtio-blk rate limiter")]
    RateLimiter(#[source] std::io::Error),
}

/// Host storage behind a virtio-blk device.
pub trait DiskBackend: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from byte `offset` (which the device has checked lies inside the disk).
    fn read_at(&mut self, offset: u64, buf: &VolatileSlice<'_>) -> std::io::Result<()>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&mut self, offset: u64, buf: &VolatileSlice<'_>) -> std::io::Result<()>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> std::io::Result<()>;
}
