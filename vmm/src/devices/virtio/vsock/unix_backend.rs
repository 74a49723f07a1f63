//! The hybrid unix-socket backend: a muxer between guest vsock connections and host unix streams.
//!
//! All its fds sit in one epoll of its own, edge-triggered, whose fd the device registers with the VMM's event
//! loop; so the set of host streams can change without touching the event loop, and a stream the guest cannot
//! take data from yet (no credit, no receive buffers) does not spin the loop.

use super::connection::{pending, Conn, Fill, State};
use super::defs::*;
use super::{Error, VsockBackend, MAX_CONNECTIONS, MAX_PENDING_HOST_CONNECTIONS};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The longest `CONNECT <port>\n` line accepted.
const CONNECT_LINE_MAX: usize = 32;
/// At most this many resets for unknown connections wait for receive buffers; more are dropped (the guest's
/// connect times out instead).
const MAX_PENDING_RSTS: usize = 256;
/// Host-side ports for host-initiated connections are taken from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (host port, guest port).
type ConnKey = (u32, u32);

/// What an fd in the epoll is.
#[derive(Debug)]
enum Watched {
    Listener,
    /// A host connection still sending its CONNECT line.
    HostPending {
        stream: UnixStream,
        line: Vec<u8>,
    },
    Conn(ConnKey),
}

/// Counters for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Connections established.
    pub connected: u64,
    /// Resets sent to the guest.
    pub resets_sent: u64,
    /// Connections reset because the guest sent past its credit.
    pub credit_overruns: u64,
    /// Resets for unknown connections dropped because too many were pending.
    pub rsts_dropped: u64,
    /// Host connections refused (bad CONNECT line, too many).
    pub host_refused: u64,
}

/// The backend.
pub struct UnixBackend {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    watched: HashMap<RawFd, Watched>,
    conns: HashMap<ConnKey, Conn>,
    rxq: VecDeque<ConnKey>,
    rsts: VecDeque<ConnKey>,
    next_local_port: u32,
    /// Counters.
    pub stats: BackendStats,
}

impl UnixBackend {
    /// Listens on `path` (a stale socket left there by a dead VMM is replaced; any other file is an error).
    pub fn bind(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path).map_err(err)?;
            }
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        let mut b = UnixBackend {
            path: path.to_path_buf(),
            listener,
            epoll,
            watched: HashMap::new(),
            conns: HashMap::new(),
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            stats: BackendStats::default(),
        };
        let fd = b.listener.as_raw_fd();
        b.watch(fd, Watched::Listener).map_err(Error::Epoll)?;
        Ok(b)
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn watch(&mut self, fd: RawFd, what: Watched) -> std::io::Result<()> {
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, fd as u64))?;
        self.watched.insert(fd, what);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) -> Option<Watched> {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.watched.remove(&fd)
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_rxq && c.wants_rx() {
                c.in_rxq = true;
                self.rxq.push_back(key);
            }
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            self.unwatch(c.stream.as_raw_fd());
        }
    }

    /// Resets `key`: an existing connection sends its RST and goes; an unknown one gets a bounded RST.
    fn reset_conn(&mut self, key: ConnKey) {
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.pending = pending::RST;
                c.readable = false;
                self.schedule(key);
            }
            None if self.rsts.len() < MAX_PENDING_RSTS => self.rsts.push_back(key),
            None => self.stats.rsts_dropped += 1,
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|&(l, _)| l == p) {
                return p;
            }
        }
    }

    fn accept_host_connections(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let pending = self
                        .watched
                        .values()
                        .filter(|w| matches!(w, Watched::HostPending { .. }))
                        .count();
                    if pending >= MAX_PENDING_HOST_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        self.stats.host_refused += 1;
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let what = Watched::HostPending {
                        stream,
                        line: Vec::with_capacity(CONNECT_LINE_MAX),
                    };
                    if self.watch(fd, what).is_err() {
                        self.stats.host_refused += 1;
                    } else {
                        // Data may already be there; edge-triggered epoll will not say so again.
                        self.read_connect_line(fd);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("vsock: accept on {} failed: {e}", self.path.display());
                    break;
                }
            }
        }
    }

    /// Reads what a pending host connection sent; on a full `CONNECT <port>\n` line starts the connection.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(Watched::HostPending { stream, line }) = self.watched.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            // One byte at a time, so whatever the host sends after the line stays in the stream for the guest.
            match stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        break parse_connect(line).ok_or(());
                    }
                    line.push(byte[0]);
                    if line.len() >= CONNECT_LINE_MAX {
                        break Err(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(Watched::HostPending { stream, .. }) = self.unwatch(fd) else {
            return;
        };
        let Ok(peer_port) = port else {
            self.stats.host_refused += 1;
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stats.host_refused += 1;
            return;
        }
        let local = self.alloc_local_port();
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, local, peer_port, State::HostInitiated);
        conn.pending = pending::REQUEST;
        let key = (local, peer_port);
        self.conns.insert(key, conn);
        if self.watch(fd, Watched::Conn(key)).is_err() {
            self.conns.remove(&key);
            return;
        }
        self.schedule(key);
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::OUT) && c.flush_tx().is_err() {
            self.reset_conn(key);
            return;
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            // A hang-up is seen as EOF by the next read.
            c.readable = true;
        }
        // Flushing may have freed enough buffer for a credit update the guest is waiting for.
        self.schedule(key);
    }

    /// The guest asked to connect to host port `dst_port`: connect to `<path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.reset_conn(key);
            return;
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{}", key.0));
        let stream = match connect_nonblocking(Path::new(&target)) {
            Ok(s) => s,
            Err(_) => {
                tracing::debug!(
                    port = key.0,
                    "vsock: no host listener for a guest connection"
                );
                self.reset_conn(key);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, key.0, key.1, State::Established);
        conn.pending = pending::RESPONSE;
        self.conns.insert(key, conn);
        if self.watch(fd, Watched::Conn(key)).is_err() {
            self.conns.remove(&key);
            self.reset_conn(key);
            return;
        }
        self.stats.connected += 1;
        self.schedule(key);
    }
}

/// Connects to a unix stream socket without ever blocking: a listener whose backlog is full (one that does not
/// accept) refuses with EAGAIN instead of stalling the event loop, which `UnixStream::connect` would do.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(ErrorKind::InvalidInput.into());
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the returned fd is owned by the UnixStream below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>` (Firecracker's hybrid vsock handshake).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    port.parse().ok()
}

impl VsockBackend for UnixBackend {
    fn send_pkt(&mut self, pkt: &VsockPacket<'_, ()>) {
        let key = (pkt.dst_port(), pkt.src_port());
        if pkt.type_() != VSOCK_TYPE_STREAM {
            self.reset_conn(key);
            return;
        }
        if pkt.op() == VSOCK_OP_REQUEST {
            self.guest_connect(key);
            if let Some(c) = self.conns.get_mut(&key) {
                c.update_peer_credit(pkt);
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            // Never answer a RST with a RST.
            if pkt.op() != VSOCK_OP_RST {
                self.reset_conn(key);
            }
            return;
        };
        c.update_peer_credit(pkt);
        match (pkt.op(), c.state) {
            (VSOCK_OP_RESPONSE, State::HostInitiated) => {
                c.state = State::Established;
                let reply = format!("OK {}\n", c.local_port);
                // A fresh stream's buffer always takes a few bytes; a host peer that closed is reset.
                if c.stream.write_all(reply.as_bytes()).is_err() {
                    self.reset_conn(key);
                    return;
                }
                // Data the host sent after its CONNECT line may already be waiting.
                c.readable = true;
                self.stats.connected += 1;
            }
            (VSOCK_OP_RW, State::Established) => {
                let overrun = match pkt.data_slice() {
                    Some(data) => c.push_guest_data(data).is_err(),
                    None => false,
                };
                if overrun {
                    self.stats.credit_overruns += 1;
                    self.reset_conn(key);
                    return;
                }
            }
            (VSOCK_OP_RW, State::Closing) => {}
            (VSOCK_OP_CREDIT_UPDATE, _) => {}
            (VSOCK_OP_CREDIT_REQUEST, _) => c.pending |= pending::CREDIT_UPDATE,
            (VSOCK_OP_SHUTDOWN, _) => {
                let flags = pkt.flags();
                if flags & VSOCK_FLAGS_SHUTDOWN_SEND != 0 {
                    c.peer_shutdown_send();
                }
                if flags & VSOCK_FLAGS_SHUTDOWN_RCV != 0 && flags & VSOCK_FLAGS_SHUTDOWN_SEND != 0 {
                    // Fully closed by the guest: finish with a RST, as Linux's own transport does.
                    self.reset_conn(key);
                    return;
                }
            }
            (VSOCK_OP_RST, _) => {
                self.remove_conn(key);
                return;
            }
            _ => {
                self.reset_conn(key);
                return;
            }
        }
        self.schedule(key);
    }

    fn recv_pkt(&mut self, pkt: &mut VsockPacket<'_, ()>) -> bool {
        if let Some((local, peer)) = self.rsts.pop_front() {
            pkt.set_src_port(local)
                .set_dst_port(peer)
                .set_type(VSOCK_TYPE_STREAM)
                .set_op(VSOCK_OP_RST)
                .set_flags(0)
                .set_len(0)
                .set_buf_alloc(0)
                .set_fwd_cnt(0);
            self.stats.resets_sent += 1;
            return true;
        }
        while let Some(&key) = self.rxq.front() {
            let Some(c) = self.conns.get_mut(&key) else {
                self.rxq.pop_front();
                continue;
            };
            match c.fill_rx(pkt) {
                Fill::Packet { done } => {
                    if done || !c.wants_rx() {
                        c.in_rxq = false;
                        self.rxq.pop_front();
                    } else {
                        // Round robin between connections.
                        self.rxq.rotate_left(1);
                    }
                    if done {
                        self.stats.resets_sent += 1;
                        self.remove_conn(key);
                    }
                    return true;
                }
                Fill::Nothing => {
                    c.in_rxq = false;
                    self.rxq.pop_front();
                }
            }
        }
        false
    }

    fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn notify(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("vsock: epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let set = ev.event_set();
            match self.watched.get(&fd) {
                Some(Watched::Listener) => self.accept_host_connections(),
                Some(Watched::HostPending { .. }) => self.read_connect_line(fd),
                Some(Watched::Conn(key)) => {
                    let key = *key;
                    self.conn_event(key, set);
                }
                None => {}
            }
        }
    }

    fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Conn::buffered).sum()
    }

    fn reset(&mut self) {
        let fds: Vec<RawFd> = self
            .watched
            .iter()
            .filter(|(_, w)| !matches!(w, Watched::Listener))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            self.unwatch(fd);
        }
        self.conns.clear();
        self.rxq.clear();
        self.rsts.clear();
    }
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        // Leave no socket file behind on the host.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"\xff\xfe"), None);
    }
}
