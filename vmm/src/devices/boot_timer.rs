//! A Firecracker-style boot timer: the guest's init writes [`BOOT_TIMER_MAGIC`] at offset 0 of this MMIO page when
//! it is ready, and the VMM records the time since launch. It measures launch -> init without trusting the guest's
//! clock.

use crate::devices::bus::BusDevice;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The byte the guest writes.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// The boot-timer device.
pub struct BootTimer {
    start: Instant,
    recorded: Arc<OnceLock<Duration>>,
}

impl BootTimer {
    /// A timer counting from `start`; the first magic write is stored in `recorded`.
    pub fn new(start: Instant, recorded: Arc<OnceLock<Duration>>) -> Self {
        BootTimer { start, recorded }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            let elapsed = self.start.elapsed();
            if self.recorded.set(elapsed).is_ok() {
                tracing::info!(
                    "guest boot time: {} ms from VMM launch to init ready",
                    elapsed.as_millis()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_counts_and_only_once() {
        let rec = Arc::new(OnceLock::new());
        let mut t = BootTimer::new(Instant::now(), rec.clone());
        t.write(1, &[BOOT_TIMER_MAGIC]);
        t.write(0, &[7]);
        t.write(0, &[]);
        assert!(rec.get().is_none());
        t.write(0, &[BOOT_TIMER_MAGIC]);
        let first = *rec.get().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        t.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(*rec.get().unwrap(), first);
    }
}
