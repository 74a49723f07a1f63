//! The pod's network into its microVM, as Kata Containers' tc-filter model does it.
//!
//! CNI (run by containerd's CRI plugin before the pod's sandbox container exists) makes a network namespace on the
//! host, e.g. `/var/run/netns/cni-...`, with a veth `eth0` in it that carries the pod's address, routes and MTU.
//! A VM cannot use a veth, so inside that namespace the shim:
//! 1. creates a persistent tap ([`TAP_NAME`]) with the veth's MTU, which the VMM opens as its virtio-net backend
//!    (the jailed VMM joins the namespace only while it builds the VM);
//! 2. adds an ingress qdisc to both and a u32 match-all filter whose mirred action redirects every frame arriving
//!    on one to the other's egress (`tc filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action
//!    mirred egress redirect dev tap0_mvrun`, and back);
//! 3. hands the guest the veth's address/prefix, default gateway and MTU ([`NetworkConfig`]), and the veth's MAC
//!    as the guest NIC's, so the neighbours' ARP entries and CNI's result stay true.
//!
//! The address stays on the veth, as with Kata: every frame that reaches the veth is stolen at ingress before the
//! namespace's own stack could see it, so the address is only in use inside the guest.
//!
//! Netlink is spoken directly (netlink-packet-route messages on a blocking netlink socket): no `ip`/`tc` binaries
//! and no async runtime in the shim. Namespace work runs on a short-lived thread that `setns`es, so the shim's own
//! threads never change namespace.

use agent_protocol::NetworkConfig;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The tap the shim makes in the pod's namespace (namespaces keep names apart, so one name serves every pod).
pub const TAP_NAME: &str = "tap0_mvrun";
/// The interface CNI names in the pod (CRI asks for `eth0`); preferred when several carry an address.
const POD_INTERFACE: &str = "eth0";
/// `_IOW('T', 202, int)` and `_IOW('T', 203, int)` of <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// ETH_P_ALL (<linux/if_ether.h>): the filter matches every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// RT_TABLE_MAIN.
const MAIN_TABLE: u8 = 254;

/// Errors wiring the pod network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file cannot be opened or entered.
    #[error("failed to enter the network namespace {path}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("failed to {what}")]
    Netlink {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The tap cannot be made.
    #[error("failed to create the tap {name}")]
    Tap {
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// CNI left no interface with an IPv4 address in the namespace.
    #[error("the network namespace {0} has no interface with an IPv4 address")]
    NoInterface(PathBuf),
}

/// `Result` of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn nl(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// The network namespace file the container's OCI spec joins (`linux.namespaces[type=network].path`), if any.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// A pod network wired to a tap: what the VM and the guest need, and what [`PodNetwork::detach`] undoes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's network namespace on the host.
    pub netns: PathBuf,
    /// CNI's interface in it.
    pub veth: String,
    /// The tap the VMM opens (in `netns`).
    pub tap: String,
    /// The veth's MAC, which the guest's NIC takes.
    pub mac: [u8; 6],
    /// The guest's address, gateway and MTU.
    pub config: NetworkConfig,
}

impl PodNetwork {
    /// Wires the pod network in `netns`: creates the tap, redirects the veth and the tap to each other, and reads
    /// what the guest takes over. Undoes its own steps when one fails.
    pub fn attach(netns: &Path) -> Result<PodNetwork> {
        let path = netns.to_path_buf();
        in_netns(netns, move || {
            let mut n = Netlink::open()?;
            let links = n.links()?;
            let addrs = n.ipv4_addresses()?;
            let (veth, addr, prefix) =
                pick_interface(&links, &addrs).ok_or_else(|| Error::NoInterface(path.clone()))?;
            let gateway = default_gateway(&n.ipv4_routes()?, veth.index);
            let net = PodNetwork {
                netns: path,
                veth: veth.name.clone(),
                tap: TAP_NAME.to_string(),
                mac: veth.mac,
                config: NetworkConfig {
                    interface: None,
                    address: Some(format!("{addr}/{prefix}")),
                    gateway: gateway.map(|g| g.to_string()),
                    mtu: Some(veth.mtu),
                    dns: Vec::new(),
                },
            };
            if let Err(e) = net.wire(&mut n, veth) {
                let _ = net.unwire(&mut n);
                return Err(e);
            }
            Ok(net)
        })
    }

    fn wire(&self, n: &mut Netlink, veth: &Link) -> Result<()> {
        create_persistent_tap(&self.tap)?;
        let tap = n.link_index(&self.tap)?.ok_or_else(|| Error::Tap {
            name: self.tap.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        n.set_up_with_mtu(tap, veth.mtu)
            .map_err(nl(format!("bring up {}", self.tap)))?;
        // A stale qdisc (a shim that died before its cleanup) would make the add fail with EEXIST.
        let _ = n.del_ingress(veth.index);
        for (dev, name) in [(veth.index, &self.veth), (tap, &self.tap)] {
            n.ack(
                RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(dev)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(nl(format!("add an ingress qdisc to {name}")))?;
        }
        for (from, to, what) in [
            (
                veth.index,
                tap,
                format!("redirect {} to {}", self.veth, self.tap),
            ),
            (
                tap,
                veth.index,
                format!("redirect {} to {}", self.tap, self.veth),
            ),
        ] {
            n.ack(
                RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(nl(what))?;
        }
        Ok(())
    }

    fn unwire(&self, n: &mut Netlink) -> Result<()> {
        // Deleting the veth's ingress qdisc takes its filter with it; deleting the tap takes the rest.
        if let Some(veth) = n.link_index(&self.veth)? {
            n.del_ingress(veth)
                .or_else(ignore_missing)
                .map_err(nl(format!("remove the ingress qdisc of {}", self.veth)))?;
        }
        if let Some(tap) = n.link_index(&self.tap)? {
            n.ack(RouteNetlinkMessage::DelLink(link_msg(tap)), 0)
                .or_else(ignore_missing)
                .map_err(nl(format!("delete {}", self.tap)))?;
        }
        Ok(())
    }

    /// Removes the redirect and the tap. A namespace already gone (CNI's teardown ran first) is not an error:
    /// the tap went with it.
    pub fn detach(&self) -> Result<()> {
        if !self.netns.exists() {
            return Ok(());
        }
        let me = self.clone();
        match in_netns(&self.netns, move || me.unwire(&mut Netlink::open()?)) {
            Err(Error::Netns { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT)
                    || source.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// The NIC the VM gets: tap, namespace, MAC.
    pub fn nic(&self) -> super::vm::Nic {
        super::vm::Nic {
            tap: self.tap.clone(),
            netns: self.netns.clone(),
            mac: self.mac,
        }
    }
}

/// Removes what [`PodNetwork::attach`] made in `netns` when only the namespace is known (a shim that died).
pub fn detach_in(netns: &Path) -> Result<()> {
    PodNetwork {
        netns: netns.to_path_buf(),
        veth: POD_INTERFACE.to_string(),
        tap: TAP_NAME.to_string(),
        mac: [0; 6],
        config: NetworkConfig::default(),
    }
    .detach()
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Runs `f` on a thread that has joined the network namespace `netns`; the thread ends with it.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name("pod-netns".into())
        .spawn(move || {
            let ns = File::open(&path).map_err(|source| Error::Netns {
                path: path.clone(),
                source,
            })?;
            // SAFETY: setns on a valid fd; it changes only this thread's namespace, and the thread ends after `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Netns {
                    path,
                    source: io::Error::last_os_error(),
                });
            }
            f()
        })
        .map_err(|source| Error::Netns {
            path: netns.to_path_buf(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Netns {
                path: netns.to_path_buf(),
                source: io::Error::other("the namespace thread panicked"),
            })
        })
}

/// Creates tap `name` in this thread's namespace and makes it outlive this fd (`ip tuntap add`), so the VMM can
/// open it later with the same TUNSETIFF.
fn create_persistent_tap(name: &str) -> Result<()> {
    let err = |source| Error::Tap {
        name: name.to_string(),
        source,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err(io::ErrorKind::InvalidInput.into()));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is (same size and layout).
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// An IPv4 route as the gateway lookup needs it: (destination prefix length, output interface, gateway).
type Route = (u8, Option<u32>, Option<Ipv4Addr>);

/// A link as the pod wiring needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    loopback: bool,
}

/// The interface the guest takes over and its IPv4 address: CNI's `eth0` when it has an address, else the first
/// non-loopback interface (not our tap) that has one.
fn pick_interface<'a>(
    links: &'a [Link],
    addrs: &[(u32, Ipv4Addr, u8)],
) -> Option<(&'a Link, Ipv4Addr, u8)> {
    let with_addr = |l: &'a Link| {
        addrs
            .iter()
            .find(|(i, _, _)| *i == l.index)
            .map(|(_, a, p)| (l, *a, *p))
    };
    let usable = || links.iter().filter(|l| !l.loopback && l.name != TAP_NAME);
    usable()
        .filter(|l| l.name == POD_INTERFACE)
        .find_map(with_addr)
        .or_else(|| usable().find_map(with_addr))
}

/// The gateway of the main table's IPv4 default route, preferring one out of `oif`.
fn default_gateway(routes: &[Route], oif: u32) -> Option<Ipv4Addr> {
    let defaults = || {
        routes
            .iter()
            .filter(|(len, _, gw)| *len == 0 && gw.is_some())
    };
    defaults()
        .find(|(_, o, _)| *o == Some(oif))
        .or_else(|| defaults().next())
        .and_then(|(_, _, gw)| *gw)
}

fn link_msg(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

/// `tc qdisc add dev INDEX handle ffff: ingress`.
fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev TO`.
fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = INGRESS_HANDLE;
    // tcm_info: priority (0: the kernel picks) in the high half, the protocol in network byte order in the low.
    m.header.info = u32::from(ETH_P_ALL.to_be());
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut generic = TcActionGeneric::default();
    // The frame is consumed by the redirect (TC_ACT_STOLEN): the namespace's stack never sees it.
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes = vec![
        TcAttribute::Kind(TcFilterU32::KIND.into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    m
}

/// A blocking rtnetlink socket in the calling thread's network namespace.
struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Netlink> {
        let open = || -> io::Result<Socket> {
            let mut sock = Socket::new(NETLINK_ROUTE)?;
            sock.bind_auto()?;
            sock.connect(&SocketAddr::new(0, 0))?;
            Ok(sock)
        };
        Ok(Netlink {
            sock: open().map_err(nl("open a netlink socket"))?,
            seq: 0,
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Receives the answers to request `seq` until `done` says so; hands each message to `each`.
    fn receive(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            let mut at = 0;
            while at < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a netlink message of length 0",
                    ));
                }
                at += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                if each(msg.payload)? {
                    return Ok(());
                }
            }
        }
    }

    /// A request answered by an ACK (or an error).
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_ACK | flags)?;
        self.receive(seq, |p| match p {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::Error(_) => Ok(true),
            _ => Ok(false),
        })
    }

    /// A dump: every message until DONE.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |p| match p {
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                Ok(false)
            }
            _ => Ok(false),
        })?;
        Ok(out)
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(nl("list the network interfaces"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index))
    }

    /// (interface index, address, prefix length) of every IPv4 address.
    fn ipv4_addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self
            .dump(RouteNetlinkMessage::GetAddress(req))
            .map_err(nl("list the addresses"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let ip = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|at| match at {
                            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Some((a.header.index, ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    /// The main table's IPv4 routes.
    fn ipv4_routes(&mut self) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let msgs = self
            .dump(RouteNetlinkMessage::GetRoute(req))
            .map_err(nl("list the routes"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if r.header.table == MAIN_TABLE => {
                    let oif = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    });
                    let gw = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                        _ => None,
                    });
                    Some((r.header.destination_prefix_length, oif, gw))
                }
                _ => None,
            })
            .collect())
    }

    fn set_up_with_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut m = link_msg(index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    fn del_ingress(&mut self, index: u32) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        )
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 1500,
        loopback: l.header.flags.contains(LinkFlags::Loopback),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(mac) if mac.len() == 6 => link.mac.copy_from_slice(mac),
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: [2, 0, 0, 0, 0, index as u8],
            mtu: 1450,
            loopback: name == "lo",
        }
    }

    #[test]
    fn the_netns_path_comes_from_the_specs_network_namespace() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [
                {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1234"}, {"type": "ipc"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            netns_path(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        let own: Spec = serde_json::from_str(
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "network"}]}}"#,
        )
        .unwrap();
        assert_eq!(netns_path(&own), None, "a new namespace of its own");
        let none: Spec = serde_json::from_str(r#"{"ociVersion": "1.0.2"}"#).unwrap();
        assert_eq!(netns_path(&none), None);
    }

    #[test]
    fn eth0_is_preferred_and_loopback_and_the_tap_are_never_picked() {
        let links = [
            link(1, "lo"),
            link(2, TAP_NAME),
            link(3, "net1"),
            link(4, "eth0"),
        ];
        let a = |i, last| (i, Ipv4Addr::new(10, 0, 0, last), 24);
        let (l, ip, p) = pick_interface(&links, &[a(1, 1), a(2, 2), a(3, 3), a(4, 4)]).unwrap();
        assert_eq!(
            (l.name.as_str(), ip, p),
            ("eth0", Ipv4Addr::new(10, 0, 0, 4), 24)
        );
        let (l, _, _) = pick_interface(&links, &[a(1, 1), a(2, 2), a(3, 3)]).unwrap();
        assert_eq!(l.name, "net1", "eth0 without an address is skipped");
        assert!(pick_interface(&links, &[a(1, 1), a(2, 2)]).is_none());
    }

    #[test]
    fn the_default_route_out_of_the_pod_interface_gives_the_gateway() {
        let gw = |last| Some(Ipv4Addr::new(10, 0, 0, last));
        let routes = [
            (24, Some(4), None),
            (0, Some(3), gw(9)),
            (0, Some(4), gw(1)),
        ];
        assert_eq!(default_gateway(&routes, 4), gw(1));
        assert_eq!(default_gateway(&routes, 7), gw(9));
        assert_eq!(default_gateway(&routes[..1], 4), None);
    }

    #[test]
    fn the_redirect_filter_is_a_terminal_match_all_u32_with_a_stolen_egress_redirect() {
        let m = redirect_filter(3, 7);
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = TcMessage::parse(&netlink_packet_route::tc::TcMessageBuffer::new(&buf)).unwrap();
        assert_eq!(back.header.index, 3);
        assert_eq!(back.header.parent, INGRESS_HANDLE);
        assert_eq!(back.header.info & 0xffff, u32::from(ETH_P_ALL.to_be()));
        assert!(back
            .attributes
            .contains(&TcAttribute::Kind(TcFilterU32::KIND.into())));
        let opts = back
            .attributes
            .iter()
            .find_map(|a| match a {
                TcAttribute::Options(o) => Some(o.clone()),
                _ => None,
            })
            .unwrap();
        let sel = opts.iter().find_map(|o| match o {
            TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s.clone()),
            _ => None,
        });
        let sel = sel.unwrap();
        assert!(sel.flags.contains(TcU32SelectorFlags::Terminal));
        assert_eq!((sel.nkeys, sel.keys[0].mask, sel.keys[0].val), (1, 0, 0));
        let mirror = opts.iter().find_map(|o| match o {
            TcOption::U32(TcFilterU32Option::Action(acts)) => {
                acts[0].attributes.iter().find_map(|a| match a {
                    TcActionAttribute::Options(o) => o.iter().find_map(|o| match o {
                        TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.clone()),
                        _ => None,
                    }),
                    _ => None,
                })
            }
            _ => None,
        });
        let mirror = mirror.unwrap();
        assert_eq!(mirror.ifindex, 7);
        assert_eq!(mirror.eaction, TcMirrorActionType::EgressRedir);
        assert_eq!(mirror.generic.action, TcActionType::Stolen);
    }

    #[test]
    fn the_ingress_qdisc_message_is_tcs() {
        let m = ingress_qdisc(5);
        assert_eq!(m.header.index, 5);
        assert_eq!(m.header.parent, TcHandle::INGRESS);
        assert_eq!(m.header.handle, INGRESS_HANDLE);
        assert_eq!(m.attributes, [TcAttribute::Kind("ingress".into())]);
    }

    /// `ip ARGS`, its stdout, or why it failed.
    fn ip(args: &[&str]) -> std::result::Result<String, String> {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    fn tc(args: &[&str]) -> String {
        let o = std::process::Command::new("tc")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A namespace + veth made by the test, as CNI's bridge plugin leaves them; removed when dropped.
    struct Fixture {
        ns: String,
        host_veth: String,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = ip(&["link", "del", &self.host_veth]);
            let _ = ip(&["netns", "del", &self.ns]);
        }
    }

    /// One Ethernet frame from the tap (opened as the VMM would, without the virtio header), within `timeout`.
    fn read_frame(tap: &File, timeout: std::time::Duration) -> Option<Vec<u8>> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        while std::time::Instant::now() < deadline {
            match (&*tap).read(&mut buf) {
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("read the tap: {e}"),
            }
        }
        None
    }

    /// Root: a namespace with a veth `eth0` (address, default route, MTU 1400) as CNI makes it. `attach` reads
    /// the guest's settings from it, makes the tap and both redirects (checked with `tc`, and with frames: the
    /// host's ARP request for the pod address comes out of the tap; an ARP reply written into the tap reaches the
    /// host, whose neighbour table then holds the pod's MAC); `detach` removes the tap and the veth's qdisc.
    #[test]
    fn root_attach_redirects_the_veth_and_the_tap_and_detach_undoes_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: making network namespaces needs root");
            return;
        }
        if !Path::new("/dev/net/tun").exists() {
            eprintln!("SKIP: /dev/net/tun is missing");
            return;
        }
        let pid = std::process::id();
        let net = 100 + pid % 100;
        let (host_ip, pod_ip) = (format!("10.203.{net}.1"), format!("10.203.{net}.2"));
        let fx = Fixture {
            ns: format!("mvnet-{pid}"),
            host_veth: format!("mvh{}", pid % 1_000_000),
        };
        if let Err(e) = ip(&["netns", "add", &fx.ns]) {
            eprintln!("SKIP: cannot make a network namespace: {e}");
            return;
        }
        let host_cidr = format!("{host_ip}/24");
        let pod_cidr = format!("{pod_ip}/24");
        for args in [
            vec![
                "link",
                "add",
                &fx.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &fx.ns,
            ],
            vec!["addr", "add", &host_cidr, "dev", &fx.host_veth],
            vec!["link", "set", &fx.host_veth, "mtu", "1400", "up"],
            vec!["-n", &fx.ns, "link", "set", "lo", "up"],
            vec!["-n", &fx.ns, "addr", "add", &pod_cidr, "dev", "eth0"],
            vec!["-n", &fx.ns, "link", "set", "eth0", "mtu", "1400", "up"],
            vec!["-n", &fx.ns, "route", "add", "default", "via", &host_ip],
        ] {
            ip(&args).unwrap();
        }
        let ns_path = PathBuf::from(format!("/var/run/netns/{}", fx.ns));
        let eth0 = ip(&["-n", &fx.ns, "-o", "link", "show", "eth0"]).unwrap();
        let mac_text = eth0
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();

        let t = std::time::Instant::now();
        let net = PodNetwork::attach(&ns_path).unwrap();
        eprintln!(
            "FIGURE: attach (tap + 2 qdiscs + 2 filters) took {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(net.veth, "eth0");
        assert_eq!(net.tap, TAP_NAME);
        assert_eq!(net.config.address.as_deref(), Some(pod_cidr.as_str()));
        assert_eq!(net.config.gateway.as_deref(), Some(host_ip.as_str()));
        assert_eq!(net.config.mtu, Some(1400));
        let mac: Vec<String> = net.mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(mac.join(":"), mac_text, "the guest takes the veth's MAC");
        let tap_link = ip(&["-n", &fx.ns, "-o", "link", "show", TAP_NAME]).unwrap();
        assert!(
            tap_link.contains("mtu 1400") && tap_link.contains("UP"),
            "{tap_link}"
        );
        let f = tc(&["-n", &fx.ns, "filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            f.contains(&format!(
                "mirred (Egress Redirect to device {TAP_NAME}) stolen"
            )),
            "eth0's ingress filter: {f}"
        );
        let f = tc(&["-n", &fx.ns, "filter", "show", "dev", TAP_NAME, "ingress"]);
        assert!(
            f.contains("mirred (Egress Redirect to device eth0) stolen"),
            "the tap's ingress filter: {f}"
        );
        assert!(
            !ip(&["-o", "link", "show"]).unwrap().contains(TAP_NAME),
            "the tap lives in the pod's namespace only"
        );

        // Frames, both ways: open the tap as the VMM does (here without the virtio-net header).
        let tap = in_netns(&ns_path, || {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .unwrap();
            let mut req = [0u8; 40];
            req[..TAP_NAME.len()].copy_from_slice(TAP_NAME.as_bytes());
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
            req[16..18].copy_from_slice(&flags.to_ne_bytes());
            // SAFETY: TUNSETIFF reads and writes a 40-byte `struct ifreq`, which `req` is.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, req.as_mut_ptr()) };
            assert!(r >= 0, "attach to the tap: {}", io::Error::last_os_error());
            Ok(f)
        })
        .unwrap();
        // The host sends to the pod address: its ARP request must come out of the tap, not the namespace's stack.
        let udp = std::net::UdpSocket::bind(format!("{host_ip}:0")).unwrap();
        let pod: Ipv4Addr = pod_ip.parse().unwrap();
        udp.send_to(b"x", (pod, 9)).unwrap();
        let mut request = None;
        while let Some(frame) = read_frame(&tap, std::time::Duration::from_secs(5)) {
            // ARP (0x0806), opcode request, target protocol address = the pod's.
            if frame.len() >= 42
                && frame[12..14] == [8, 6]
                && frame[20..22] == [0, 1]
                && frame[38..42] == pod.octets()
            {
                request = Some(frame);
                break;
            }
        }
        let request =
            request.expect("the host's ARP request for the pod address comes out of the tap");
        let host_mac = &request[6..12];
        let host_addr = &request[28..32];
        // The guest's answer, written into the tap, must reach the host through the veth.
        let mut reply = Vec::with_capacity(42);
        reply.extend_from_slice(host_mac);
        reply.extend_from_slice(&net.mac);
        reply.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&net.mac);
        reply.extend_from_slice(&pod.octets());
        reply.extend_from_slice(host_mac);
        reply.extend_from_slice(host_addr);
        use std::io::Write;
        (&tap).write_all(&reply).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut neigh = String::new();
        while std::time::Instant::now() < deadline {
            neigh = ip(&["neigh", "show", &pod_ip, "dev", &fx.host_veth]).unwrap();
            if neigh.contains(&mac_text) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            neigh.contains(&mac_text),
            "the ARP reply written into the tap reached the host: {neigh:?}"
        );
        drop(tap);

        net.detach().unwrap();
        assert!(
            ip(&["-n", &fx.ns, "link", "show", TAP_NAME]).is_err(),
            "the tap is gone"
        );
        let q = tc(&["-n", &fx.ns, "qdisc", "show", "dev", "eth0"]);
        assert!(!q.contains("ingress"), "eth0's ingress qdisc is gone: {q}");
        assert!(
            ip(&["-n", &fx.ns, "-o", "addr", "show", "eth0"])
                .unwrap()
                .contains(&pod_cidr),
            "CNI's veth is left as CNI made it"
        );
        net.detach().unwrap();
        let ns = fx.ns.clone();
        drop(fx);
        detach_in(Path::new(&format!("/var/run/netns/{ns}"))).unwrap();
    }
}
