//! Devices the guest reaches: the buses, legacy PC devices, the boot timer and the virtio devices.

pub mod boot_timer;
pub mod bus;
pub mod legacy;
pub mod virtio;
