//! Shared by the VMM's integration tests: a console that records what the guest prints, and the /dev/kvm check.
// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The guest's serial output, kept for assertions.
#[derive(Clone, Default)]
pub struct Console(pub Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// Everything printed so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Whether /dev/kvm can be opened; prints the reason the caller skips when it cannot.
pub fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("SKIP: /dev/kvm is missing or not usable by this user");
    }
    ok
}
