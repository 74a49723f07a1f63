//! Connecting to a guest vsock port through a Firecracker-style hybrid vsock backend: the VMM listens on a unix
//! socket; the host connects, writes `CONNECT <port>\n` and reads `OK <host_port>\n`, after which the unix stream
//! is the guest connection.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Longest acknowledgement line we accept (`OK ` + a u32 + `\n` fits easily).
const MAX_ACK: usize = 32;

/// Connects to `port` in the guest through the VMM's vsock unix socket at `uds`.
pub fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    handshake(&mut stream, port)?;
    Ok(stream)
}

/// The `CONNECT`/`OK` exchange on an already open stream.
pub fn handshake<S: Read + Write>(stream: &mut S, port: u32) -> io::Result<()> {
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read byte by byte: anything after the newline already belongs to the guest connection.
    let mut line = Vec::with_capacity(MAX_ACK);
    let mut byte = [0u8; 1];
    while line.len() < MAX_ACK {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "vsock backend closed the connection to guest port {port} (nothing listening?)"
                ),
            ));
        }
        if byte[0] == b'\n' {
            return if line.starts_with(b"OK ") {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "vsock backend refused guest port {port}: {:?}",
                        String::from_utf8_lossy(&line)
                    ),
                ))
            };
        }
        line.push(byte[0]);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "vsock backend sent an overlong acknowledgement",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn handshake_accepts_ok_and_rejects_garbage() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut buf = [0u8; 13];
            b.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            b.write_all(b"OK 3\nrest").unwrap();
            b
        });
        handshake(&mut a, 1024).unwrap();
        let _b = t.join().unwrap();
        let mut rest = [0u8; 4];
        a.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");

        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"NO\n").unwrap();
        assert!(handshake(&mut a, 1).is_err());
        drop(b);
        let (mut a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(handshake(&mut a, 1).is_err());
    }
}
