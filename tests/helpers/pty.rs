//! A terminal the test owns, for tests/full_path.rs (`mvrun run -it`, `exec -it`) and tests/shim.rs (`ctr -t`):
//! the process under test gets the slave end as its controlling terminal and stdio, the test types on the master
//! end and reads what the process wrote there.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The master end, and everything read from it so far (a thread keeps reading until every slave descriptor is
/// closed).
pub struct Pty {
    master: OwnedFd,
    seen: Arc<Mutex<String>>,
    slave: Option<OwnedFd>,
}

impl Pty {
    pub fn open(rows: u16, cols: u16) -> Pty {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = std::fs::File::from(pty.master.try_clone().unwrap());
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // Ends with EIO once the last slave descriptor is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pty {
            master: pty.master,
            seen,
            slave: Some(pty.slave),
        }
    }

    /// `cmd` with this terminal as its controlling terminal and stdio, as a shell would start it.
    pub fn spawn(&mut self, mut cmd: Command) -> Child {
        use std::os::unix::process::CommandExt;
        let slave = self.slave.take().expect("one process per terminal");
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the child makes stdin its controlling terminal, so the
        // kernel sends it SIGWINCH when the test resizes the terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // `cmd` (and its copies of the slave) is dropped on return: only the child holds the terminal then.
        cmd.spawn().expect("spawn the process on the terminal")
    }

    pub fn write(&self, bytes: &[u8]) {
        nix::unistd::write(&self.master, bytes).expect("write to the terminal");
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the valid struct we pass.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.master),
                libc::TIOCSWINSZ,
                &ws,
            )
        };
        assert_eq!(rc, 0, "resize the test's terminal");
    }

    pub fn text(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`; panics with the output after `timeout`.
    pub fn expect(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal within {timeout:?}; it shows {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
