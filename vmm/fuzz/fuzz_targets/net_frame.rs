//! virtio-net frames on fuzzed tx and rx queues, against a fake tap that has 64 frames of one fuzzed size.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::{Net, NetBackend, MAX_FRAME};

struct FakeTap(usize, u32);

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        // A real tap runs dry too; an endless one would keep any NIC busy.
        if self.1 == 0 {
            return Ok(None);
        }
        self.1 -= 1;
        let n = self.0.min(buf.len());
        buf[..n].fill(0xab);
        Ok(Some(n))
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
        assert!(frame.len() <= MAX_FRAME);
        Ok(true)
    }
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        -1
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let mem = common::memory(rest);
    let mut dev = Net::new(
        Box::new(FakeTap(usize::from(size) * 64, 64)),
        [2, 0, 0, 0, 0, 1],
    )
    .unwrap();
    if common::activate(&mut dev, &mem) {
        dev.process_tx();
        dev.process_rx();
    }
});
