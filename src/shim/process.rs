//! A process of a task as containerd sees it (the init process or an exec), its state machine, and the stdio
//! plumbing between containerd's fifos and the agent's vsock streams.

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long output may keep draining after a process exits before its exit is reported anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The fifos containerd gave for a process (empty path: not wanted).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    /// stdin fifo.
    pub stdin: String,
    /// stdout fifo.
    pub stdout: String,
    /// stderr fifo.
    pub stderr: String,
    /// Terminal requested.
    pub terminal: bool,
}

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Stopped,
}

/// What containerd sees of a process.
#[derive(Clone, Debug)]
pub struct State {
    /// Status.
    pub status: Status,
    /// pid reported to containerd.
    pub pid: u32,
    /// Exit status, once stopped.
    pub exit_status: u32,
    /// When it exited.
    pub exited_at: Option<Timestamp>,
}

/// One process.
pub struct Process {
    /// containerd's exec id ("" for the init process).
    pub exec_id: String,
    /// The agent's id for it (`agent_protocol::WORKLOAD` for init).
    pub agent_id: u32,
    /// Its fifos.
    pub stdio: Stdio,
    /// The agent's process spec (execs; init's lives in the task).
    pub spec: Option<agent_protocol::ProcessSpec>,
    state: Mutex<State>,
    /// The exit the agent reported, while the output still drains (see [`Process::exit_pending`]).
    pending: Mutex<Option<i32>>,
    changed: Condvar,
    stdin_closed: Arc<AtomicBool>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    /// A terminal size asked for before the process started (ctr resizes right after Start; an exec may be
    /// resized before it), given to the guest with the process.
    window: Mutex<Option<agent_protocol::WindowSize>>,
}

impl Process {
    /// A created process.
    pub fn new(
        exec_id: String,
        agent_id: u32,
        stdio: Stdio,
        spec: Option<agent_protocol::ProcessSpec>,
    ) -> Self {
        Process {
            exec_id,
            agent_id,
            stdio,
            spec,
            state: Mutex::new(State {
                status: Status::Created,
                pid: 0,
                exit_status: 0,
                exited_at: None,
            }),
            pending: Mutex::new(None),
            changed: Condvar::new(),
            stdin_closed: Arc::new(AtomicBool::new(false)),
            pumps: Mutex::new(Vec::new()),
            window: Mutex::new(None),
        }
    }

    /// Remembers a terminal size for the start.
    pub fn set_window(&self, w: agent_protocol::WindowSize) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    }

    /// The terminal size asked for before the start, if any.
    pub fn window(&self) -> Option<agent_protocol::WindowSize> {
        *self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its state now.
    pub fn state(&self) -> State {
        self.lock().clone()
    }

    /// Records the pid containerd sees (Create for init, Start for execs).
    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    /// Marks it running.
    pub fn set_running(&self) {
        let mut s = self.lock();
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    }

    /// Records its exit; returns false when an exit was already recorded (the first one wins).
    pub fn set_exited(&self, code: i32) -> bool {
        let mut s = self.lock();
        if s.status == Status::Stopped {
            return false;
        }
        s.status = Status::Stopped;
        s.exit_status = u32::try_from(code).unwrap_or(255);
        s.exited_at = Some(Timestamp::now());
        self.changed.notify_all();
        true
    }

    /// Notes the exit the agent reported before the output has drained: if the VM ends meanwhile (the guest
    /// reboots a moment after the exit reached the host), this code, not the VM's, is the process's.
    pub fn exit_pending(&self, code: i32) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
    }

    /// The exit noted by [`Process::exit_pending`], if any.
    pub fn pending_exit(&self) -> Option<i32> {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until it has exited.
    pub fn wait(&self) -> State {
        let s = self.lock();
        self.changed
            .wait_while(s, |s| s.status != Status::Stopped)
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connects the agent's streams to containerd's fifos. The fifos are opened in the copying threads:
    /// opening a fifo blocks until its other end is open, and containerd's client may open it later. A process on
    /// a terminal has no stderr stream (its output is merged on stdout, and containerd gives no stderr fifo).
    pub fn plumb(&self, stdout: UnixStream, stderr: Option<UnixStream>, stdin: Option<UnixStream>) {
        let mut pumps = self.pumps.lock().unwrap_or_else(|e| e.into_inner());
        pumps.push(pump_out(stdout, self.stdio.stdout.clone()));
        if let Some(stderr) = stderr {
            pumps.push(pump_out(stderr, self.stdio.stderr.clone()));
        }
        if let Some(s) = stdin {
            if self.stdin_closed.load(Ordering::SeqCst) {
                // containerd closed stdin before the process started (ctr does when its own stdin is empty).
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            pump_in(self.stdio.stdin.clone(), s);
        }
    }

    /// Waits (boundedly) for the output copies to finish, so that what the process wrote reaches the fifos before
    /// its exit is reported.
    pub fn drain(&self) {
        let pumps: Vec<_> =
            std::mem::take(&mut *self.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for p in pumps {
            while !p.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if p.is_finished() {
                let _ = p.join();
            }
        }
    }

    /// Closes the process's stdin (containerd's CloseIO): it reads EOF.
    pub fn close_stdin(&self) {
        self.stdin_closed.store(true, Ordering::SeqCst);
        // The copier reads the fifo to its end (what the client wrote before closing still reaches the process),
        // then closes the stream. It may still be blocked opening the fifo whose writer the client already
        // closed unopened: a writer that comes and goes wakes it, and it reads EOF.
        if !self.stdio.stdin.is_empty() {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.stdio.stdin);
        }
    }
}

fn pump_out(mut from: UnixStream, fifo: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // No fifo: the output is read and dropped, so the process never blocks on a full stream.
        let mut sink: Box<dyn Write> = if fifo.is_empty() {
            Box::new(std::io::sink())
        } else {
            match OpenOptions::new().write(true).open(&fifo) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::warn!("failed to open {fifo}: {e}");
                    Box::new(std::io::sink())
                }
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.write_all(&buf[..n]).is_err() {
                        // The reader went away: keep draining so the guest side is not stalled.
                        sink = Box::new(std::io::sink());
                    }
                }
            }
        }
    })
}

fn pump_in(fifo: String, mut to: UnixStream) {
    std::thread::spawn(move || {
        if let Ok(mut f) = File::open(PathBuf::from(&fifo)) {
            let _ = std::io::copy(&mut f, &mut to);
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_wins_and_wakes_waiters() {
        let p = std::sync::Arc::new(Process::new(String::new(), 0, Stdio::default(), None));
        p.set_running();
        let w = {
            let p = p.clone();
            std::thread::spawn(move || p.wait().exit_status)
        };
        assert!(p.set_exited(3));
        assert!(!p.set_exited(137), "a later exit does not overwrite");
        assert_eq!(w.join().unwrap(), 3);
        assert_eq!(p.state().status, Status::Stopped);
    }

    #[test]
    fn output_reaches_the_fifo_and_stdin_reaches_the_stream() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let inp = t.path().join("in");
        for f in [&out, &inp] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        let stdio = Stdio {
            stdin: inp.display().to_string(),
            stdout: out.display().to_string(),
            stderr: String::new(),
            terminal: false,
        };
        let p = Process::new(String::new(), 0, stdio, None);
        let (guest_out, host_out) = UnixStream::pair().unwrap();
        let (guest_err, host_err) = UnixStream::pair().unwrap();
        let (mut guest_in, host_in) = UnixStream::pair().unwrap();
        p.plumb(host_out, Some(host_err), Some(host_in));
        let reader = std::thread::spawn(move || std::fs::read(out).unwrap());
        let mut g = guest_out;
        g.write_all(b"hi\n").unwrap();
        drop(g);
        drop(guest_err);
        p.drain();
        assert_eq!(reader.join().unwrap(), b"hi\n");
        std::fs::write(&inp, b"typed").unwrap();
        // containerd's CloseIO right after the client's last write: what was written still arrives.
        p.close_stdin();
        let mut got = Vec::new();
        guest_in.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"typed");
    }

    #[test]
    fn close_io_before_any_writer_still_ends_stdin() {
        let t = tempfile::tempdir().unwrap();
        let inp = t.path().join("in");
        nix::unistd::mkfifo(&inp, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stdio = Stdio {
            stdin: inp.display().to_string(),
            ..Stdio::default()
        };
        let p = Process::new(String::new(), 0, stdio, None);
        let (_o1, o2) = UnixStream::pair().unwrap();
        let (_e1, e2) = UnixStream::pair().unwrap();
        let (mut guest_in, host_in) = UnixStream::pair().unwrap();
        // Started with nobody ever writing to the fifo; then containerd's CloseIO.
        p.plumb(o2, Some(e2), Some(host_in));
        std::thread::sleep(std::time::Duration::from_millis(50));
        p.close_stdin();
        let mut got = Vec::new();
        guest_in.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
        // CloseIO before the start: the stream is closed at once.
        let p = Process::new(
            String::new(),
            0,
            Stdio {
                stdin: inp.display().to_string(),
                ..Stdio::default()
            },
            None,
        );
        p.close_stdin();
        let (_o1, o2) = UnixStream::pair().unwrap();
        let (_e1, e2) = UnixStream::pair().unwrap();
        let (mut guest_in, host_in) = UnixStream::pair().unwrap();
        p.plumb(o2, Some(e2), Some(host_in));
        guest_in.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }
}
