//! The mvrun agent protocol: how the host talks to `guest-init` (PID 1 of the guest).
//!
//! Transport: any byte stream (`Read + Write`): virtio-vsock in the guest, the VMM's hybrid unix socket on the host
//! (see [`hybrid`]), a socketpair in tests. One control connection carries request/reply frames; stdin, stdout and
//! stderr each travel on their own connection (own vsock port), so a large output never stalls the control channel.
//! The wire format is documented in `guest-init/PROTOCOL.md`.
//!
//! Encoding: an 8-byte binary header (magic, version, message kind, payload length) followed by a JSON payload.
//! The header lets a reader reject an unknown kind or an oversized frame before it allocates or parses anything;
//! the payloads are nested optional structures (the container spec) where serde_json is smaller and better tested
//! than a hand-rolled encoding would be.

pub mod client;
pub mod frame;
pub mod hybrid;
mod types;

pub use client::Client;
pub use frame::{read_frame, write_frame, Frame, FrameError};
pub use types::*;

/// Protocol version carried in every frame header.
pub const VERSION: u8 = 1;
/// Hard limit on a frame's payload, in bytes.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// vsock port of the control channel (request/reply frames).
pub const CONTROL_PORT: u32 = 1024;
/// vsock port for stdin streams (host -> guest).
pub const STDIN_PORT: u32 = 1025;
/// vsock port for stdout streams (guest -> host).
pub const STDOUT_PORT: u32 = 1026;
/// vsock port for stderr streams (guest -> host).
pub const STDERR_PORT: u32 = 1027;

/// The process id of the container's main workload; `Exec` processes use ids the host chooses, never 0.
pub const WORKLOAD: u32 = 0;
