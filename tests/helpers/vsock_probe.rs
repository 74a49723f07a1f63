//! Guest-side helper of tests/full_path.rs (built static by the test, copied into a running sandbox): connects to
//! vsock CID `cid` port `port` (busybox has no vsock client), sends a line and `bytes` bytes of payload, half-closes,
//! and prints the host's answer and how long sending took.
//!
//! Usage: `vsock_probe CID PORT BYTES`. Plain std plus three libc calls: every guest instruction is emulated on the
//! hosts this runs on, so the probe stays small.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::Instant;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SHUT_WR: i32 = 1;

/// `struct sockaddr_vm` (<linux/vm_sockets.h>).
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
}

fn fail(what: &str) -> ! {
    println!("probe: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or(0))
        .collect();
    let [cid, port, bytes] = args[..] else {
        println!("usage: vsock_probe CID PORT BYTES");
        std::process::exit(2);
    };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) };
    if fd < 0 {
        fail("socket(AF_VSOCK)");
    }
    let addr = SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid,
        flags: 0,
        zero: [0; 3],
    };
    // SAFETY: `addr` is a live sockaddr_vm of the size passed.
    if unsafe { connect(fd, &addr, std::mem::size_of::<SockaddrVm>() as u32) } < 0 {
        fail("connect");
    }
    // SAFETY: fd is a connected socket nothing else owns.
    let mut sock = unsafe { File::from_raw_fd(fd) };
    let start = Instant::now();
    let payload = vec![b'v'; bytes as usize];
    if sock.write_all(b"hello from the guest\n").is_err() || sock.write_all(&payload).is_err() {
        fail("send");
    }
    // SAFETY: shutdown(2) on the socket we own.
    if unsafe { shutdown(fd, SHUT_WR) } < 0 {
        fail("shutdown");
    }
    let sent = start.elapsed();
    let mut answer = String::new();
    if sock.read_to_string(&mut answer).is_err() {
        fail("receive");
    }
    println!(
        "sent {bytes} bytes in {} us; host answered: {}",
        sent.as_micros(),
        answer.trim_end()
    );
}
