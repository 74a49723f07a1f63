//! Virtio transports. mvrun's guests only see virtio-mmio.

pub mod mmio;
