//! virtio-vsock packets on fuzzed tx and rx queues, through the real unix-socket backend (no listeners, so
//! connection requests are reset). One device per process, reset between inputs as a driver would, so each input
//! starts from a fresh device without the cost of a new socket.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use vmm::devices::virtio::vsock::{UnixBackend, Vsock};
use vmm::devices::virtio::VirtioDevice;

thread_local! {
    static DEV: RefCell<(tempfile::TempDir, Vsock)> = RefCell::new({
        let dir = tempfile::tempdir().unwrap();
        let backend = UnixBackend::bind(&dir.path().join("v.sock")).unwrap();
        let dev = Vsock::new(3, Box::new(backend)).unwrap();
        (dir, dev)
    });
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    DEV.with(|d| {
        let dev = &mut d.borrow_mut().1;
        dev.reset();
        if common::activate(dev, &mem) {
            dev.process_tx();
            dev.process_rx();
            dev.process_tx();
            dev.process_rx();
        }
    });
});
