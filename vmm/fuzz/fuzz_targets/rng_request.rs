//! virtio-rng requests on a fuzzed queue.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::rng::{EntropySource, Rng};

struct Zeros;

impl EntropySource for Zeros {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let mut dev = Rng::new(Box::new(Zeros)).unwrap();
    if common::activate(&mut dev, &mem) {
        dev.process_queue();
    }
});
