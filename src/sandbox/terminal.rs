//! The CLI's side of a foreground sandbox: raw terminal mode for `-t` (restored on drop), and forwarding of the
//! signals sent to the CLI itself to the sandbox's VMM process.

use std::os::fd::AsRawFd;

/// The terminal in raw mode; the previous mode comes back when this is dropped.
pub struct RawMode {
    saved: libc::termios,
    fd: i32,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a terminal.
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
