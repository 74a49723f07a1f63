//! Fuzzes the agent protocol decoder (agent-protocol/src/frame.rs) with arbitrary bytes, as a hostile peer would
//! send them. Invariants: no panic; decoding stops at the first unrecoverable error; every frame that decodes
//! re-encodes and decodes to the same value.
#![no_main]

use std::io::Cursor;

use agent_protocol::frame::{encode, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Cursor::new(data);
    // Every frame consumes at least its 8-byte header, so this loop ends.
    loop {
        match read_frame(&mut r) {
            Ok(None) => break,
            Ok(Some(frame)) => {
                let bytes = encode(&frame).expect("a decoded frame re-encodes");
                let again = read_frame(&mut Cursor::new(bytes)).expect("re-decodes").expect("one frame");
                assert_eq!(again, frame);
            }
            Err(e) if e.is_recoverable() => continue,
            Err(_) => break,
        }
    }
});
