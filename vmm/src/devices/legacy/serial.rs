//! The guest's console: an 8250 UART (vm-superio) whose interrupt is an irqfd on GSI 4.

use crate::devices::bus::BusDevice;
use std::io::Write;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// The eventfd KVM turns into the serial interrupt.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// COM1 on the port-I/O bus.
pub struct SerialConsole {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

impl SerialConsole {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        SerialConsole {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queues host input for the guest to read (returns how much fitted in the FIFO).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are bytes; a wider access gets the register in its first byte.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.serial.write(off, value) {
            // A closed console (the reader went away) must not stop the guest.
            tracing::debug!("serial console write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_register_reaches_the_output() {
        let sink = Sink::default();
        let irq = EventFd::new(0).unwrap();
        let mut s = SerialConsole::new(irq, Box::new(sink.clone()));
        for b in b"ok\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut s = SerialConsole::new(EventFd::new(0).unwrap(), Box::new(std::io::sink()));
        s.write(0, &[]);
        s.write(u64::MAX, &[1]);
        let mut big = [0xffu8; 8];
        s.read(5, &mut big);
        s.read(u64::MAX, &mut []);
        assert_eq!(&big[1..], &[0; 7]);
    }
}
