//! The i8042 keyboard controller, reduced to its CPU-reset line: with `reboot=k` a guest's `reboot` writes 0xfe to
//! port 0x64 and the VM ends, as in Firecracker.

use crate::devices::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;
use vm_superio::{I8042Device, Trigger};

/// Records the reset as the VM's exit.
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.signal(VmExit::Reset);
        Ok(())
    }
}

/// The i8042 on the port-I/O bus at 0x60..0x65.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose reset ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = self.dev.write(off, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let exit = ExitSignal::new().unwrap();
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]);
        assert_eq!(exit.reason(), None, "0xfe on the data port is not a reset");
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }
}
