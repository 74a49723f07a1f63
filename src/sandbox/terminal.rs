//! The CLI's side of a foreground sandbox: raw terminal mode for `-t` (restored on drop), the terminal's size,
//! Docker's rule for `-i -t` without a terminal, and forwarding of the signals sent to the CLI itself to the
//! sandbox's VMM process.

use agent_protocol::WindowSize;
use std::os::fd::AsRawFd;

/// Docker's refusal of `-i -t` when stdin is not a terminal (`docker run -it busybox < file`). `-t` alone is
/// fine without one, as with Docker: the workload still gets a terminal, of size 0x0, and its output its CRLFs.
pub const NOT_A_TTY: &str = "the input device is not a TTY";

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Docker's check before attaching: a terminal for the workload fed from our stdin needs stdin to be one.
pub fn check_input(
    interactive: bool,
    tty: bool,
    stdin_is_terminal: bool,
) -> Result<(), &'static str> {
    if interactive && tty && !stdin_is_terminal {
        Err(NOT_A_TTY)
    } else {
        Ok(())
    }
}

/// The size of the terminal on our stdout, else stdin (Docker measures its output stream); `None` without one.
pub fn window_size() -> Option<WindowSize> {
    WindowSize::of_stdio()
}

/// Calls `on_resize` with the new size on every SIGWINCH, from a thread of its own. Call it before starting other
/// threads: SIGWINCH is blocked in the calling thread, and threads inherit that.
pub fn watch_window(on_resize: impl Fn(WindowSize) + Send + 'static) {
    // SAFETY: a local signal set, blocked on this thread; the thread below takes the signal with sigwait.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits on a valid, initialized signal set; `sig` is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        if let Some(size) = window_size() {
            on_resize(size);
        }
    });
}

/// The terminal in raw mode; the previous mode comes back when this is dropped.
pub struct RawMode {
    saved: libc::termios,
    fd: i32,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode (keys reach the workload's own terminal untouched: Ctrl-C becomes its
    /// SIGINT there); `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty/tcgetattr/tcsetattr on our own stdin with valid termios pointers.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { saved, fd })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter` on the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// Forwards SIGTERM, SIGHUP, and SIGINT/SIGQUIT sent with kill(2) to `pid`. Terminal-generated SIGINT/SIGQUIT
/// already reach the VMM process (same process group), so they are not sent twice; the CLI itself stays alive
/// until the VMM process exits and reports the workload's code.
pub fn forward_signals(pid: u32) {
    // SAFETY: a local signal set, blocked on this (main) thread; the thread below takes the signals.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || loop {
        // SAFETY: siginfo_t is plain data; sigwaitinfo fills it for a signal in `set`.
        let (sig, code) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&set, &mut info);
            (sig, info.si_code)
        };
        if sig < 0 {
            continue;
        }
        let from_terminal = code == libc::SI_KERNEL;
        if !(from_terminal && (sig == libc::SIGINT || sig == libc::SIGQUIT)) {
            // SAFETY: kill(2) on the child's pid; at worst the pid is already gone and kill fails.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_terminal_needs_a_terminal_on_stdin() {
        assert_eq!(check_input(true, true, false), Err(NOT_A_TTY));
        assert!(check_input(true, true, true).is_ok());
        assert!(
            check_input(false, true, false).is_ok(),
            "-t alone works as with Docker"
        );
        assert!(check_input(true, false, false).is_ok());
    }

    #[test]
    fn only_terminals_are_terminals() {
        let pty = nix::pty::openpty(None, None).unwrap();
        assert!(is_terminal(pty.slave.as_raw_fd()));
        let devnull = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_terminal(devnull.as_raw_fd()));
    }
}
