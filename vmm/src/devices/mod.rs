//! Devices the guest reaches: the buses, legacy PC devices and the boot timer.

pub mod boot_timer;
pub mod bus;
pub mod legacy;
