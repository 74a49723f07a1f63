//! A tap interface opened through /dev/net/tun (Documentation/networking/tuntap.rst), with the virtio-net header
//! on (IFF_VNET_HDR, 12 bytes) so frames pass between the guest and the tap unchanged, and offloads off.

use super::defs::VNET_HDR_LEN;
use super::{Error, NetBackend};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// _IOW('T', 202, int) from include/uapi/linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// _IOW('T', 208, unsigned int).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// _IOW('T', 216, int).
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// `struct ifreq` with the flags member of its union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating if needed) tap `name`, in the network namespace at `netns` when given. The VMM's own
    /// threads stay in their namespace: a short-lived thread enters `netns` to open the device, and the fd keeps
    /// working from anywhere.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Tap, Error> {
        match netns {
            None => Self::open_here(name),
            Some(ns) => {
                let ns = ns.to_path_buf();
                let name = name.to_string();
                std::thread::spawn(move || {
                    let f = File::open(&ns).map_err(|source| Error::Netns {
                        path: ns.clone(),
                        source,
                    })?;
                    // SAFETY: setns on a valid fd; it changes only this (short-lived) thread's namespace.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(Error::Netns {
                            path: ns,
                            source: std::io::Error::last_os_error(),
                        });
                    }
                    Self::open_here(&name)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(Error::Tap {
                        name: String::new(),
                        source: std::io::Error::other("tap opener thread panicked"),
                    })
                })
            }
        }
    }

    fn open_here(name: &str) -> Result<Tap, Error> {
        let err = |source| Error::Tap {
            name: name.to_string(),
            source,
        };
        if name.is_empty() || name.len() > 15 {
            return Err(err(ErrorKind::InvalidInput.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(err)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let fd = file.as_raw_fd();
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is (same size and layout).
        if unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req) } < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which is valid.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // No checksum or segmentation offload: the guest is offered none either.
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, 0 as libc::c_ulong) } < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
        loop {
            match self.file.write(frame) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    #[test]
    fn opens_a_tap_here_and_in_another_netns() {
        if !Path::new("/dev/net/tun").exists() {
            eprintln!("SKIP: /dev/net/tun is missing");
            return;
        }
        let name = format!("mvt{}", std::process::id() % 100_000);
        let tap = match Tap::open(&name, None) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP: cannot create a tap here (needs CAP_NET_ADMIN): {e}");
                return;
            }
        };
        assert_ne!(index_of(&name), 0);
        drop(tap);
        assert_eq!(index_of(&name), 0, "a non-persistent tap goes with its fd");

        // A namespace held by a helper thread; the tap must appear there, not here.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread's network namespace.
            let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tx.send((ok, tid)).unwrap();
            let _ = done_rx.recv();
        });
        let (ok, tid) = rx.recv().unwrap();
        if ok {
            let ns = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            let tap = Tap::open(&name, Some(Path::new(&ns))).unwrap();
            assert_eq!(index_of(&name), 0, "the tap is in the other namespace");
            assert_eq!(tap.name(), name);
        } else {
            eprintln!("SKIP: unshare(CLONE_NEWNET) not permitted");
        }
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        let err = Tap::open(&name, Some(Path::new("/nonexistent/ns"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"));
    }
}
