//! virtio-rng (virtio 1.2 section 5.4): one request queue whose device-writable buffers the device fills with
//! host entropy, so the guest kernel's CRNG is seeded at once instead of waiting for jitter entropy.
//!
//! device.rs is the guest-facing queue logic, event_handler.rs the event-loop glue, getrandom_backend.rs the host
//! source behind the [`EntropySource`] trait.

mod device;
mod event_handler;
mod getrandom_backend;

pub use device::Rng;
pub use getrandom_backend::Getrandom;

/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// The most bytes served per request: bounds the time one request takes; the driver asks again for more.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// Errors of the rng device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared virtio set-up failed.
    #[error("failed to set up the virtio-rng device")]
    Virtio(#[from] super::Error),
}

/// Where entropy comes from.
pub trait EntropySource: Send {
    /// Fills all of `buf`.
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}
