//! The workload's pseudo-terminal (`docker run -t`): receiving the pty master that libcontainer's container
//! process sends over a console socket, sizing it, and pumping it to and from the host's stdio streams.
//!
//! How the master reaches us is runc's `--console-socket` protocol, which youki's libcontainer implements: we
//! listen on a unix socket and give its path to the builder; the container process opens the pty inside the
//! container's own devpts (after pivot_root, so it belongs to the container), makes the slave its controlling
//! terminal and stdio, and sends the master back with SCM_RIGHTS. Kata's agent opens the pty itself instead; going
//! through libcontainer keeps its CVE-2025-52565 checks on the ptmx/slave inodes.
//!
//! With a terminal, stdout and stderr are the same device, so the merged output travels on the stdout stream (as
//! Docker's). guest-init copies here (unlike the non-tty path, where the process owns its vsock sockets): a pty
//! cannot be a socket, so one thread per direction copies, in bounded chunks.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_protocol::WindowSize;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Errors around the terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The console socket could not be made.
    #[error("failed to listen on the console socket {path}")]
    Listen {
        /// Its path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The container process did not connect or send the master in time.
    #[error("failed to receive the terminal from the container")]
    Receive(#[source] std::io::Error),
    /// What arrived is not a pty master.
    #[error("failed to receive the terminal from the container: {0}")]
    NotAPty(&'static str),
    /// TIOCSWINSZ failed.
    #[error("failed to set the terminal size")]
    Resize(#[source] std::io::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How long the container process may take to send the master once the builder has returned (it sends before it
/// reports ready, so this only bounds a broken peer; the emulated guest is slow, hence the margin).
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening console socket; its file is removed on drop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `path` (a stale file there is replaced).
    pub fn bind(path: &Path) -> Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| Error::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ConsoleSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The path to give libcontainer.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the container process's connection and takes the pty master it sends.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        self.listener
            .set_nonblocking(true)
            .map_err(Error::Receive)?;
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(Error::Receive(std::io::ErrorKind::TimedOut.into()));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Error::Receive(e)),
            }
        };
        conn.set_nonblocking(false).map_err(Error::Receive)?;
        conn.set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(Error::Receive)?;
        let master = recv_fd(conn.as_raw_fd())?;
        if pty_number(&master).is_none() {
            return Err(Error::NotAPty("the descriptor is not a pty master"));
        }
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one descriptor with SCM_RIGHTS; any extra descriptors are closed.
fn recv_fd(sock: RawFd) -> Result<OwnedFd> {
    // libcontainer sends the name "/dev/ptmx" with it; we do not need the name.
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| Error::Receive(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| Error::Receive(e.into()))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS installed these descriptors in our table just now; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if fds.len() != 1 {
        return Err(Error::NotAPty(
            "the container sent no descriptor, or more than one",
        ));
    }
    Ok(fds.remove(0))
}

/// The pty number of a master (`/dev/pts/N`), or `None` when `fd` is not a pty master.
pub fn pty_number(fd: &impl AsRawFd) -> Option<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into `n`; on anything but a pty master it fails with ENOTTY.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    (rc == 0).then_some(n)
}

/// Sets the terminal size of `fd` (master or slave); the kernel sends SIGWINCH to its foreground process group.
pub fn set_window(fd: &impl AsRawFd, size: WindowSize) -> Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid struct we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(Error::Resize(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The size of the terminal on our stdout or stdin, if either is one (host mode: `guest-init run -t`).
pub fn window_of_stdio() -> Option<WindowSize> {
    WindowSize::of_stdio()
}

/// The character that ends input on a terminal in canonical mode (Ctrl-D), written when the host closes stdin.
const VEOF_CHAR: u8 = 0x04;

/// Starts copying between the pty `master` and the host's streams: `stdin` -> master, master -> `stdout`.
///
/// The output side reads until the last slave descriptor is closed (EIO), so the host sees EOF on stdout exactly
/// when the process and everything that inherited its terminal are gone. If the host goes away, output is still
/// drained (and dropped) so the process never blocks on a full terminal. When the host closes stdin, the input
/// side types the terminal's end-of-file character, as a person pressing Ctrl-D would: a program reading the
/// terminal sees EOF, but the terminal itself stays (closing the master would hang the session up).
///
/// Returns the output thread, which ends after the last of the output has been written.
pub fn pump(
    master: &OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let out_master = File::from(master.try_clone()?);
    let in_master = match stdin {
        Some(s) => Some((File::from(s), File::from(master.try_clone()?))),
        None => None,
    };
    let output = std::thread::Builder::new()
        .name("tty-out".into())
        .spawn(move || copy_output(out_master, stdout.map(File::from)))?;
    if let Some((from, to)) = in_master {
        std::thread::Builder::new()
            .name("tty-in".into())
            .spawn(move || copy_input(from, to))?;
    }
    Ok(output)
}

fn copy_output(mut master: File, mut out: Option<File>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match master.read(&mut buf) {
            // EIO: every slave descriptor is closed; the process is gone.
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
            Ok(n) => {
                if let Some(o) = out.as_mut() {
                    if o.write_all(&buf[..n]).is_err() {
                        out = None;
                    }
                }
            }
        }
    }
    // Dropping `out` closes our only descriptor of the stdout stream: the host reads EOF.
}

fn copy_input(mut from: File, mut master: File) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = master.write_all(&[VEOF_CHAR]);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
            Ok(n) => {
                if master.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn master_travels_over_the_console_socket_and_is_sized() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(&dir.path().join("console.sock")).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let conn = UnixStream::connect(sock.path()).unwrap();
        let fds = [pty.master.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
        nix::sys::socket::sendmsg::<()>(
            conn.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = sock.receive_master().unwrap();
        assert_eq!(pty_number(&master), pty_number(&pty.master));
        set_window(
            &master,
            WindowSize {
                rows: 33,
                cols: 101,
            },
        )
        .unwrap();
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes into the valid struct.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        let path = sock.path().to_path_buf();
        drop(sock);
        assert!(!path.exists(), "the socket file is removed");
    }

    #[test]
    fn something_that_is_not_a_pty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let conn = UnixStream::connect(sock.path()).unwrap();
        let file = File::open("/dev/null").unwrap();
        let fds = [file.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"x")];
        nix::sys::socket::sendmsg::<()>(
            conn.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(matches!(sock.receive_master(), Err(Error::NotAPty(_))));

        // A peer that connects and hangs up without sending.
        let conn = UnixStream::connect(sock.path()).unwrap();
        drop(conn);
        assert!(sock.receive_master().is_err());
    }

    #[test]
    fn pump_copies_both_ways_and_ends_at_hangup() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let (host_in, guest_in) = UnixStream::pair().unwrap();
        let (mut host_out, guest_out) = UnixStream::pair().unwrap();
        pump(&pty.master, Some(guest_in.into()), Some(guest_out.into())).unwrap();
        // The "process" side: raw mode on the slave so bytes pass unchanged.
        let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        let mut slave = File::from(pty.slave);
        (&host_in).write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        slave.write_all(b"pong").unwrap();
        drop(slave);
        drop(pty.master);
        let mut out = Vec::new();
        host_out
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        host_out.read_to_end(&mut out).unwrap();
        assert_eq!(
            out, b"pong",
            "output drained, then EOF once the slave closed"
        );
    }
}
