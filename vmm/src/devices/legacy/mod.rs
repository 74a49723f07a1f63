//! Legacy PC devices on port I/O: the 8250 serial console and the i8042's CPU-reset line.

pub mod i8042;
pub mod serial;

/// Base port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Base port of the i8042 (data 0x60, command/status 0x64).
pub const I8042_PORT: u64 = 0x60;
