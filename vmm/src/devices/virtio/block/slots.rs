//! Runtime block slots: read-only virtio-blk disks that start empty (capacity 0) and get an image while the guest
//! runs, for the containers a pod adds to its VM after boot. Firecracker's way (`PATCH /drives` ->
//! `update_disk_image`): swap the disk's backing file and send a configuration-change interrupt, so the guest's
//! virtio-blk driver reads the new capacity; no hot-plug of a device is needed.
//!
//! The jailed VMM cannot open host paths (it lives in a tmpfs root, unprivileged), so the host opens the image
//! and hands the VMM the open descriptor over a unix socket (SCM_RIGHTS): the VMM never sees a path, and can read
//! nothing the host did not open for it. One request per connection:
//!
//! ```text
//! request  8 bytes: "MVSL", op (1 attach, 2 detach), slot index, 0, 0; attach carries exactly one fd
//! reply    one line: "OK <capacity in sectors>\n" or "ERR <why>\n"
//! ```
//!
//! Attaching refuses a slot that holds an image (detach first), a missing or extra fd, and a descriptor that
//! cannot be sized with lseek (a pipe, a socket). The socket lives in the sandbox's 0700 socket directory; what
//! arrives on it is still checked as if it were hostile.

use super::{Block, DiskBackend, EmptyBackend, FileBackend};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;

/// The most runtime slots a VM may have.
pub const MAX_SLOTS: u8 = 8;
/// First bytes of every request.
pub const MAGIC: [u8; 4] = *b"MVSL";
/// Attach the fd that comes with the request.
pub const OP_ATTACH: u8 = 1;
/// Detach: back to empty.
pub const OP_DETACH: u8 = 2;
/// Request length.
pub const REQUEST_LEN: usize = 8;
/// Connections waiting for their request at once; more are closed.
const MAX_CONNECTIONS: usize = 8;
/// How long the host client waits for the VMM's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the slot socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be set up or reached.
    #[error("failed to {what} the block-slot socket {path}")]
    Socket {
        /// What.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM refused.
    #[error("the VMM refused the block-slot request: {0}")]
    Refused(String),
}

/// The VMM's side: the listening socket and the slots it fills.
pub struct SlotServer {
    path: PathBuf,
    listener: UnixListener,
    slots: Vec<Arc<Mutex<Block>>>,
    conns: HashMap<RawFd, UnixStream>,
    /// Requests served (either answer).
    pub served: u64,
}

impl SlotServer {
    /// Listens at `path` (a stale socket file there is replaced) for requests on `slots`.
    pub fn bind(path: &Path, slots: Vec<Arc<Mutex<Block>>>) -> Result<Self, Error> {
        let err = |what| {
            move |source| Error::Socket {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path).map_err(err("replace"))?;
            }
        }
        let listener = UnixListener::bind(path).map_err(err("bind"))?;
        listener.set_nonblocking(true).map_err(err("bind"))?;
        Ok(SlotServer {
            path: path.to_path_buf(),
            listener,
            slots,
            conns: HashMap::new(),
            served: 0,
        })
    }

    /// Reads one request from `conn` and answers it. Returns false when the request has not fully arrived yet
    /// (come back when the connection is readable); true when the connection is done with (answered or broken).
    pub fn serve(&mut self, conn: &mut UnixStream) -> bool {
        let mut req = [0u8; REQUEST_LEN];
        let answer = match recv_with_fds(conn.as_raw_fd(), &mut req) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => Err(format!("failed to read the request: {e}")),
            Ok((0, _, _)) => return true,
            Ok((_, _, true)) => Err("too many descriptors".to_string()),
            Ok((n, _, _)) if n < REQUEST_LEN => Err("a short request".to_string()),
            Ok((_, fds, false)) => self.handle(&req, fds),
        };
        self.served += 1;
        let line = match answer {
            Ok(sectors) => format!("OK {sectors}\n"),
            Err(e) => {
                tracing::warn!("block slot request refused: {e}");
                format!("ERR {e}\n")
            }
        };
        // A short line into an empty socket buffer: it fits, or the peer is gone.
        // SAFETY: send(2) of a buffer we own, on a descriptor we own; MSG_NOSIGNAL: no SIGPIPE.
        unsafe {
            libc::send(
                conn.as_raw_fd(),
                line.as_ptr().cast(),
                line.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            );
        }
        true
    }

    /// Runs a well-formed request; returns the slot's capacity in sectors afterwards.
    fn handle(&mut self, req: &[u8; REQUEST_LEN], mut fds: Vec<OwnedFd>) -> Result<u64, String> {
        if req[..4] != MAGIC || req[6..] != [0, 0] {
            return Err("not a block-slot request".into());
        }
        let index = usize::from(req[5]);
        let Some(slot) = self.slots.get(index) else {
            return Err(format!(
                "no slot {index} (this VM has {})",
                self.slots.len()
            ));
        };
        let mut disk = slot.lock().unwrap_or_else(|e| e.into_inner());
        match req[4] {
            OP_ATTACH => {
                if fds.len() != 1 {
                    return Err(format!(
                        "attach takes exactly one descriptor, {} came",
                        fds.len()
                    ));
                }
                if disk.capacity_sectors() != 0 {
                    return Err(format!("slot {index} holds an image: detach it first"));
                }
                let file = File::from(fds.remove(0));
                let backend = FileBackend::from_file(file)
                    .map_err(|e| format!("failed to size the image: {e}"))?;
                if backend.size() < super::defs::SECTOR_SIZE {
                    return Err("the image is smaller than a sector".into());
                }
                disk.replace_backend(Box::new(backend));
                tracing::info!(
                    slot = index,
                    sectors = disk.capacity_sectors(),
                    "block slot attached"
                );
            }
            OP_DETACH if fds.is_empty() => {
                disk.replace_backend(Box::new(EmptyBackend));
                tracing::info!(slot = index, "block slot detached");
            }
            OP_DETACH => return Err("detach takes no descriptor".into()),
            op => return Err(format!("unknown operation {op}")),
        }
        Ok(disk.capacity_sectors())
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let conn = match self.listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("block slots: accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS || conn.set_nonblocking(true).is_err() {
                continue; // dropped: closed
            }
            let mut conn = conn;
            // Usually the request is already there.
            if self.serve(&mut conn) {
                continue;
            }
            if ops.add(Events::new(&conn, EventSet::IN)).is_ok() {
                self.conns.insert(conn.as_raw_fd(), conn);
            }
        }
    }
}

impl Drop for SlotServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MutEventSubscriber for SlotServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        let Some(mut conn) = self.conns.remove(&fd) else {
            let _ = ops.remove(events);
            return;
        };
        let hangup = events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR);
        if self.serve(&mut conn) || hangup {
            let _ = ops.remove(Events::new(&conn, EventSet::IN));
        } else {
            self.conns.insert(fd, conn);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!("block slots: failed to watch the socket: {e:?}");
        }
    }
}

/// Most descriptors taken from one message; more are closed and the request refused.
const MAX_FDS: usize = 4;

/// recvmsg(2) into `buf`, without blocking, keeping the descriptors that came with it (close-on-exec).
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s: aligned for cmsghdr. Room for MAX_FDS descriptors.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below stay valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes at most iov_len bytes into `buf` and msg_controllen bytes into `control`.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside `control`, whose length the kernel set in msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    // Each descriptor the kernel installed is ours to close.
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // Descriptors the kernel dropped (they did not fit) or too many: the request is refused; those we got close
    // with `fds`.
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS;
    Ok((n as usize, fds, truncated))
}

fn request(op: u8, slot: u8) -> [u8; REQUEST_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], op, slot, 0, 0]
}

/// The host's side: sends one request (with `fd` for an attach) and returns the slot's capacity in sectors.
fn call(uds: &Path, op: u8, slot: u8, fd: Option<RawFd>) -> Result<u64, Error> {
    let err = |what| {
        move |source| Error::Socket {
            what,
            path: uds.to_path_buf(),
            source,
        }
    };
    let mut conn = UnixStream::connect(uds).map_err(err("connect to"))?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(err("configure"))?;
    let req = request(op, slot);
    let mut iov = libc::iovec {
        iov_base: req.as_ptr() as *mut libc::c_void,
        iov_len: req.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; the pointers set below stay valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: one SCM_RIGHTS header with one int, inside `control` (CMSG_SPACE(4) = 24 <= 32 bytes).
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: sendmsg reads the request and control buffers set up above.
    let n = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n != REQUEST_LEN as isize {
        return Err(Error::Socket {
            what: "send to",
            path: uds.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut reply = Vec::new();
    Read::by_ref(&mut conn)
        .take(512)
        .read_to_end(&mut reply)
        .map_err(err("read the answer of"))?;
    let reply = String::from_utf8_lossy(&reply);
    let line = reply.trim_end();
    match line.strip_prefix("OK ") {
        Some(n) => n
            .parse()
            .map_err(|_| Error::Refused(format!("unreadable answer {line:?}"))),
        None => Err(Error::Refused(
            line.strip_prefix("ERR ").unwrap_or(line).to_string(),
        )),
    }
}

/// Attaches the open image `image` to slot `slot` of the VMM listening at `uds`; returns its size in sectors.
pub fn attach(uds: &Path, slot: u8, image: &File) -> Result<u64, Error> {
    call(uds, OP_ATTACH, slot, Some(image.as_raw_fd()))
}

/// Empties slot `slot` of the VMM listening at `uds` (after the guest let go of its image).
pub fn detach(uds: &Path, slot: u8) -> Result<(), Error> {
    call(uds, OP_DETACH, slot, None).map(|_| ())
}

/// Sends raw bytes as a request (tests of hostile requests).
#[doc(hidden)]
pub fn send_raw(uds: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let mut conn = UnixStream::connect(uds)?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.write_all(bytes)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    conn.take(512).read_to_string(&mut reply)?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::defs::*;
    use crate::devices::virtio::block::request::OutHdr;
    use crate::devices::virtio::block::QUEUE_SIZE;
    use crate::devices::virtio::defs::VIRTIO_MMIO_INT_CONFIG;
    use crate::devices::virtio::test_utils::{activate, ro, wo, Driver, TestMem, DATA_START};
    use crate::devices::virtio::VirtioDevice;
    use vm_memory::ByteValued;

    const H: u64 = DATA_START;
    const S: u64 = DATA_START + 0x100;
    const D: u64 = DATA_START + 0x1000;

    fn image(sectors: u64) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for s in 0..sectors {
            f.write_all(&[0x40 + s as u8; 512]).unwrap();
        }
        f
    }

    /// Runs `client` on a thread while the server answers its one connection here.
    fn exchange<T: Send + 'static>(
        server: &mut SlotServer,
        client: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let t = std::thread::spawn(client);
        let mut conn = loop {
            match server.listener.accept() {
                Ok((c, _)) => break c,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        conn.set_nonblocking(true).unwrap();
        while !server.serve(&mut conn) {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(conn);
        t.join().unwrap()
    }

    fn read_sector(blk: &mut Block, drv: &mut Driver<'_>, sector: u64) -> (u8, Vec<u8>) {
        drv.write(
            H,
            OutHdr {
                type_: VIRTIO_BLK_T_IN,
                reserved: 0,
                sector,
            }
            .as_slice(),
        );
        drv.write(S, &[0xff]);
        drv.add(&[ro(H, 16), wo(D, 512), wo(S, 1)]);
        blk.process_queue();
        drv.used();
        (drv.read(S, 1)[0], drv.read(D, 512))
    }

    #[test]
    fn an_image_handed_over_as_an_fd_fills_an_empty_slot_and_detaching_empties_it() {
        let mem = TestMem::new();
        let blk = Arc::new(Mutex::new(
            Block::new(Box::new(EmptyBackend), true, "slot0").unwrap(),
        ));
        let mut drv = Driver::new(&mem, 0, QUEUE_SIZE);
        activate(&mut *blk.lock().unwrap(), &mem, vec![drv.queue()]);
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("slots.sock");
        let mut server = SlotServer::bind(&uds, vec![blk.clone()]).unwrap();

        // Empty: capacity 0, a read fails, nothing changed yet.
        {
            let mut b = blk.lock().unwrap();
            assert_eq!(b.capacity_sectors(), 0);
            assert_ne!(
                b.common.avail_features & (1 << VIRTIO_BLK_F_RO),
                0,
                "slots are read-only"
            );
            assert_eq!(read_sector(&mut b, &mut drv, 0).0, VIRTIO_BLK_S_IOERR);
            assert_eq!(b.common.config_generation(), 0);
        }

        let img = image(8);
        let file = File::open(img.path()).unwrap();
        let u = uds.clone();
        let sectors = exchange(&mut server, move || attach(&u, 0, &file)).unwrap();
        assert_eq!(sectors, 8);
        {
            let mut b = blk.lock().unwrap();
            // The driver is told: a configuration interrupt, a new generation, the new capacity.
            assert_ne!(b.common.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
            assert_eq!(b.common.config_generation(), 1);
            let mut cap = [0u8; 8];
            b.read_config(0, &mut cap);
            assert_eq!(u64::from_le_bytes(cap), 8);
            let (status, data) = read_sector(&mut b, &mut drv, 3);
            assert_eq!((status, data), (VIRTIO_BLK_S_OK, vec![0x43; 512]));
        }

        // A slot that holds an image is not replaced under the guest.
        let other = File::open(image(2).path()).unwrap();
        let u = uds.clone();
        let e = exchange(&mut server, move || attach(&u, 0, &other)).unwrap_err();
        assert!(e.to_string().contains("detach it first"), "{e}");

        let u = uds.clone();
        exchange(&mut server, move || detach(&u, 0)).unwrap();
        let mut b = blk.lock().unwrap();
        assert_eq!(b.capacity_sectors(), 0);
        assert_eq!(b.common.config_generation(), 2);
        assert_eq!(read_sector(&mut b, &mut drv, 0).0, VIRTIO_BLK_S_IOERR);
        assert!(!b.common.needs_reset());
    }

    #[test]
    fn malformed_requests_are_refused_and_change_nothing() {
        let blk = Arc::new(Mutex::new(
            Block::new(Box::new(EmptyBackend), true, "slot0").unwrap(),
        ));
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("slots.sock");
        let mut server = SlotServer::bind(&uds, vec![blk.clone()]).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"XXXX\x01\x00\x00\x00".to_vec(), "not a block-slot request"),
            (request(OP_ATTACH, 0).to_vec(), "exactly one descriptor"),
            (request(OP_DETACH, 7).to_vec(), "no slot 7"),
            (request(9, 0).to_vec(), "unknown operation"),
            (b"MVSL\x01".to_vec(), "short request"),
        ];
        for (bytes, why) in cases {
            let u = uds.clone();
            let reply = exchange(&mut server, move || send_raw(&u, &bytes).unwrap());
            assert!(
                reply.starts_with("ERR ") && reply.contains(why),
                "{why}: {reply}"
            );
        }
        // A descriptor that cannot be sized (a socket) is refused too.
        let (a, _b) = UnixStream::pair().unwrap();
        let not_a_file = File::from(OwnedFd::from(a));
        let u = uds.clone();
        let e = exchange(&mut server, move || attach(&u, 0, &not_a_file)).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        let b = blk.lock().unwrap();
        assert_eq!((b.capacity_sectors(), b.common.config_generation()), (0, 0));
        assert_eq!(server.served, 6);
    }
}
