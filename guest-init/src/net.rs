//! The container's network: loopback up (Docker's "none" network has it), and when the VM has a network device,
//! that device moved into the container's network namespace (as Kata's agent does) and configured with the
//! address, gateway and MTU from the spec; plus the container's /etc/hosts, /etc/hostname and /etc/resolv.conf.
//!
//! Hand-written on purpose: IPv4 configuration is five classic ioctls, and moving a link is one 40-byte netlink
//! message; the netlink crates (rtnetlink, neli) would bring tokio or a large generic layer into PID 1 for that.
//! Namespace work runs on a short-lived thread that `setns`es into the container's netns, so guest-init's own
//! threads never change namespace.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use agent_protocol::NetworkConfig;

/// Errors configuring the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("failed to {what}")]
    Sys {
        /// What we tried.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A bad address in the spec.
    #[error("invalid network setting {0:?}")]
    Invalid(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

fn last(what: &str) -> Error {
    Error::Sys {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

/// `struct ifreq` with the union as raw bytes (<net/if.h>): 16 name bytes + 24 union bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<IfReq, Error> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(Error::Invalid(name.into()));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }

    fn set_addr(&mut self, a: Ipv4Addr) {
        // struct sockaddr_in: family (native u16), port, address.
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&a.octets());
    }
}

fn ioctl(
    sock: &OwnedFd,
    req: libc::Ioctl,
    arg: *mut libc::c_void,
    what: &str,
) -> Result<(), Error> {
    // SAFETY: every caller passes a pointer to a live struct of the size the request reads or writes.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, arg) } < 0 {
        return Err(last(what));
    }
    Ok(())
}

fn inet_socket() -> Result<OwnedFd, Error> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last("open an inet socket"));
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn link_up(sock: &OwnedFd, name: &str) -> Result<(), Error> {
    let mut r = IfReq::new(name)?;
    ioctl(
        sock,
        libc::SIOCGIFFLAGS,
        &mut r as *mut _ as *mut _,
        &format!("read the flags of {name}"),
    )?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        &mut r as *mut _ as *mut _,
        &format!("bring up {name}"),
    )
}

/// Parses `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), Error> {
    let (a, len) = s.split_once('/').unwrap_or((s, "24"));
    let addr: Ipv4Addr = a.parse().map_err(|_| Error::Invalid(s.into()))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| Error::Invalid(s.into()))?;
    Ok((addr, len))
}

fn netmask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    })
}

/// Configures `dev` (already in this thread's netns) from `cfg`.
fn configure(sock: &OwnedFd, dev: &str, cfg: &NetworkConfig) -> Result<(), Error> {
    if let Some(mtu) = cfg.mtu {
        let mut r = IfReq::new(dev)?;
        r.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
        ioctl(
            sock,
            libc::SIOCSIFMTU,
            &mut r as *mut _ as *mut _,
            &format!("set the MTU of {dev}"),
        )?;
    }
    if let Some(cidr) = &cfg.address {
        let (addr, len) = parse_cidr(cidr)?;
        let mut r = IfReq::new(dev)?;
        r.set_addr(addr);
        ioctl(
            sock,
            libc::SIOCSIFADDR,
            &mut r as *mut _ as *mut _,
            &format!("set the address of {dev}"),
        )?;
        r.set_addr(netmask(len));
        ioctl(
            sock,
            libc::SIOCSIFNETMASK,
            &mut r as *mut _ as *mut _,
            &format!("set the netmask of {dev}"),
        )?;
    }
    link_up(sock, dev)?;
    if let Some(gw) = &cfg.gateway {
        let gw: Ipv4Addr = gw.parse().map_err(|_| Error::Invalid(gw.clone()))?;
        // SAFETY: rtentry is plain old data; all-zero is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        let sin = |a: Ipv4Addr| {
            // SAFETY: sockaddr is plain old data; all-zero is valid.
            let mut s: libc::sockaddr = unsafe { std::mem::zeroed() };
            s.sa_family = libc::AF_INET as u16;
            s.sa_data[2..6].copy_from_slice(&a.octets().map(|b| b as libc::c_char));
            s
        };
        rt.rt_dst = sin(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sin(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sin(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        ioctl(
            sock,
            libc::SIOCADDRT,
            &mut rt as *mut _ as *mut _,
            "add the default route",
        )?;
    }
    Ok(())
}

/// Moves link `ifindex` into the network namespace `netns` (RTM_NEWLINK with IFLA_NET_NS_FD).
fn move_link(ifindex: u32, netns: &File) -> Result<(), Error> {
    const IFLA_NET_NS_FD: u16 = 28;
    // SAFETY: plain socket(2); checked and owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(last("open a netlink socket"));
    }
    // SAFETY: fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut msg = Vec::with_capacity(40);
    msg.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]); // ifi_family, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
    msg.extend_from_slice(&8u16.to_ne_bytes()); // rta_len
    msg.extend_from_slice(&IFLA_NET_NS_FD.to_ne_bytes());
    msg.extend_from_slice(&netns.as_raw_fd().to_ne_bytes());
    // SAFETY: msg is a live buffer of msg.len() bytes.
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(last("send the netlink request"));
    }
    let mut ack = [0u8; 256];
    // SAFETY: ack is a live buffer of ack.len() bytes.
    let n = unsafe { libc::recv(sock.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    if n < 20 {
        return Err(last("read the netlink acknowledgement"));
    }
    // NLMSG_ERROR: header (16 bytes), then a negative errno (0 = ack).
    let errno = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    if errno != 0 {
        return Err(Error::Sys {
            what: "move the network device".into(),
            source: io::Error::from_raw_os_error(-errno),
        });
    }
    Ok(())
}

/// The first non-loopback interface of this (guest) namespace.
fn first_device() -> Option<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

fn ifindex(name: &str) -> Result<u32, Error> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::Invalid(name.into()))?;
    // SAFETY: c is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(Error::Sys {
            what: format!("find network device {name}"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(i)
}

/// Sets up the network of the container whose init is `pid`: loopback up; with `cfg`, the device moved in and
/// configured. Call it after the container is created and before it starts.
pub fn setup(pid: i32, cfg: Option<&NetworkConfig>) -> Result<(), Error> {
    let ns_path = format!("/proc/{pid}/ns/net");
    let netns = File::open(&ns_path).map_err(sys(format!("open {ns_path}")))?;
    let dev = match cfg {
        Some(c) => match c.interface.clone().or_else(first_device) {
            Some(d) => {
                move_link(ifindex(&d)?, &netns)?;
                Some(d)
            }
            None => None,
        },
        None => None,
    };
    let cfg = cfg.cloned();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), Error> {
            // SAFETY: setns on this short-lived thread only; it ends right after, so no other code runs in the
            // container's namespace.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(last("enter the container's network namespace"));
            }
            let sock = inet_socket()?;
            link_up(&sock, "lo")?;
            if let (Some(dev), Some(cfg)) = (&dev, &cfg) {
                configure(&sock, dev, cfg)?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("network setup thread panicked".into())))
    })
}

/// Writes the container's /etc/hosts, /etc/hostname and /etc/resolv.conf under `dir` and returns the bind mounts
/// (source, destination) that put them in place.
pub fn etc_files(
    dir: &Path,
    hostname: &str,
    cfg: Option<&NetworkConfig>,
) -> Result<Vec<(PathBuf, String)>, Error> {
    fs::create_dir_all(dir).map_err(sys(format!("create {}", dir.display())))?;
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let own = cfg
        .and_then(|c| c.address.as_deref())
        .and_then(|a| parse_cidr(a).ok())
        .map(|(a, _)| a.to_string());
    hosts.push_str(&format!(
        "{}\t{hostname}\n",
        own.unwrap_or_else(|| "127.0.1.1".into())
    ));
    let resolv: String = cfg
        .map(|c| c.dns.iter().map(|d| format!("nameserver {d}\n")).collect())
        .unwrap_or_default();
    let mut binds = Vec::new();
    for (name, text) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ] {
        let p = dir.join(name);
        fs::write(&p, text).map_err(sys(format!("write {}", p.display())))?;
        binds.push((p, format!("/etc/{name}")));
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_netmask() {
        assert_eq!(
            parse_cidr("10.0.0.2/24").unwrap(),
            ("10.0.0.2".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.0.0.2/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert!(IfReq::new("a-name-that-is-too-long").is_err());
    }

    #[test]
    fn etc_files_are_written() {
        let d = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            address: Some("10.1.2.3/24".into()),
            dns: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        let binds = etc_files(d.path(), "box", Some(&cfg)).unwrap();
        assert_eq!(binds.len(), 3);
        assert!(fs::read_to_string(d.path().join("hosts"))
            .unwrap()
            .contains("10.1.2.3\tbox"));
        assert_eq!(
            fs::read_to_string(d.path().join("resolv.conf")).unwrap(),
            "nameserver 1.1.1.1\n"
        );
    }
}
