//! The agent: serves the host's requests (see `PROTOCOL.md`) over any byte streams, vsock in the guest and
//! socketpairs in tests.
//!
//! One thread per connection. stdio connections bind themselves to a process id with `AttachStream` and are then
//! handed to libcontainer as the process's fds 0/1/2: guest-init never copies workload output, so a large output
//! cannot stall the control channel, and the process sees EOF/EPIPE exactly when the host closes its end. A process
//! started with a terminal is the exception: its stdio is the pty slave, and [`crate::tty::pump`] copies between
//! the master and the streams (stderr merges into stdout, as with Docker's `-t`).
//! Bounded: at most [`MAX_PENDING`] unbound streams and [`MAX_PROCESSES`] processes; a malformed frame gets an
//! `Error` reply and the connection goes on unless the framing itself broke.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol::frame::{read_frame, write_frame, Frame};
use agent_protocol::{
    ErrorReply, Exited, Oom, ProcessRef, Reply, Request, Started, StreamKind, WorkloadSpec,
    WORKLOAD,
};
use libcontainer::container::Container;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container::{exit_code, Runtime, Stdio};
use crate::{net, spec};

/// Most stdio connections waiting for their process.
pub const MAX_PENDING: usize = 48;
/// Most processes (workload + execs) per container.
pub const MAX_PROCESSES: usize = 1024;

struct Proc {
    pid: i32,
    /// Our duplicate of the process's stdin stream, for `CloseStdin`.
    stdin: Option<OwnedFd>,
    /// The master of its terminal, for `Resize`.
    master: Option<OwnedFd>,
}

/// The host's streams of a process that runs on a terminal: the pump's ends.
struct TtyStreams {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<(u32, StreamKind), OwnedFd>,
    procs: HashMap<u32, Proc>,
    container: Option<Container>,
    workload: Option<WorkloadSpec>,
    shutdown: bool,
    /// When a `Wait` for the workload was answered.
    exit_delivered: Option<Instant>,
}

/// Where the agent puts things.
pub struct Config {
    /// The container's root filesystem.
    pub rootfs: PathBuf,
    /// Directory for generated files (/etc/hosts & co).
    pub work_dir: PathBuf,
    /// libcontainer id of the container.
    pub container_id: String,
    /// cgroup path of the container.
    pub cgroups_path: PathBuf,
}

/// The agent's state, shared by all connection threads.
pub struct Agent {
    runtime: Runtime,
    config: Config,
    inner: Mutex<Inner>,
    changed: Condvar,
}

fn error(message: impl Into<String>) -> Reply {
    Reply::Error(ErrorReply {
        message: message.into(),
    })
}

fn dev_null(write: bool) -> Option<OwnedFd> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .ok()
        .map(OwnedFd::from)
}

impl Agent {
    /// A new agent using `runtime`.
    pub fn new(runtime: Runtime, config: Config) -> Agent {
        Agent {
            runtime,
            config,
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one control connection until the peer closes it or the framing breaks.
    pub fn serve_control<S: Read + Write>(&self, mut conn: S) {
        loop {
            let reply = match read_frame(&mut conn) {
                Ok(None) => return,
                Ok(Some(Frame::Request(req))) => self.handle(req),
                Ok(Some(Frame::Reply(_))) => {
                    error("failed to handle a reply: the host sends requests")
                }
                Err(e) if e.is_recoverable() => error(format!("{e}")),
                Err(e) => {
                    tracing::warn!("control connection dropped: {e}");
                    // Best effort: the stream is out of sync or gone.
                    let _ = write_frame(&mut conn, &Frame::Reply(error(format!("{e}"))));
                    return;
                }
            };
            if write_frame(&mut conn, &Frame::Reply(reply)).is_err() {
                return;
            }
        }
    }

    /// Serves one stdio connection of `kind`: reads its `AttachStream`, then keeps it for the process.
    pub fn serve_stream<S: Read + Write + Into<OwnedFd>>(&self, mut conn: S, kind: StreamKind) {
        let id = match read_frame(&mut conn) {
            Ok(Some(Frame::Request(Request::AttachStream(ProcessRef { id })))) => id,
            Ok(None) => return,
            Ok(Some(_)) => {
                let _ = write_frame(
                    &mut conn,
                    &Frame::Reply(error(
                        "failed to attach: a stdio connection must begin with AttachStream",
                    )),
                );
                return;
            }
            Err(e) => {
                let _ = write_frame(&mut conn, &Frame::Reply(error(format!("{e}"))));
                return;
            }
        };
        let mut inner = self.lock();
        let refusal = if inner.pending.len() >= MAX_PENDING {
            Some(format!(
                "failed to attach {kind:?} of process {id}: too many unbound streams"
            ))
        } else if inner.pending.contains_key(&(id, kind)) || inner.procs.contains_key(&id) {
            Some(format!(
                "failed to attach {kind:?} of process {id}: already attached or already started"
            ))
        } else {
            None
        };
        let reply = match &refusal {
            Some(m) => error(m.clone()),
            None => Reply::Ok,
        };
        if write_frame(&mut conn, &Frame::Reply(reply)).is_ok() && refusal.is_none() {
            inner.pending.insert((id, kind), conn.into());
        }
    }

    /// Takes the streams attached for `id`; missing ones are /dev/null. Returns them and our stdin duplicate; with
    /// `tty` the process gets none of them (its stdio is the terminal) and they come back as the pump's ends
    /// instead, a stderr stream closed at once (its output arrives merged on stdout).
    fn take_stdio(
        inner: &mut Inner,
        id: u32,
        tty: bool,
    ) -> (Stdio, Option<OwnedFd>, Option<TtyStreams>) {
        let stdin = inner.pending.remove(&(id, StreamKind::Stdin));
        let dup = stdin.as_ref().and_then(|fd| fd.try_clone().ok());
        if tty {
            inner.pending.remove(&(id, StreamKind::Stderr));
            let streams = TtyStreams {
                stdin,
                stdout: inner.pending.remove(&(id, StreamKind::Stdout)),
            };
            return (Stdio::default(), dup, Some(streams));
        }
        let stdio = Stdio {
            stdin: stdin.or_else(|| dev_null(false)),
            stdout: inner
                .pending
                .remove(&(id, StreamKind::Stdout))
                .or_else(|| dev_null(true)),
            stderr: inner
                .pending
                .remove(&(id, StreamKind::Stderr))
                .or_else(|| dev_null(true)),
        };
        (stdio, dup, None)
    }

    /// Starts the copying for a process that runs on a terminal.
    fn start_pump(id: u32, master: Option<&OwnedFd>, streams: Option<TtyStreams>) {
        if let (Some(m), Some(t)) = (master, streams) {
            if let Err(e) = crate::tty::pump(m, t.stdin, t.stdout) {
                tracing::error!("failed to start the terminal copy of process {id}: {e}");
            }
        }
    }

    /// Handles one request.
    pub fn handle(&self, req: Request) -> Reply {
        match req {
            Request::CreateAndStart(w) => self.create_and_start(*w),
            Request::Exec(e) => self.exec(e.id, &e.process),
            Request::Signal(s) => self.signal(s.id, s.signal),
            Request::Resize(r) => self.resize(r.id, r.rows, r.cols),
            Request::CloseStdin(p) => self.close_stdin(p.id),
            Request::Wait(p) => self.wait(p.id),
            Request::Shutdown => {
                self.lock().shutdown = true;
                self.changed.notify_all();
                Reply::Ok
            }
            Request::AttachStream(_) => {
                error("failed to attach: streams attach on the stdio ports")
            }
            Request::Stats(p) => match self.cgroup_dir(p.id).and_then(|d| {
                crate::cgroup::stats(&d).map_err(|e| {
                    error(format!("failed to read the stats of process {}: {e}", p.id))
                })
            }) {
                Ok(s) => Reply::Stats(Box::new(s)),
                Err(r) => r,
            },
            Request::WaitOom(w) => self.wait_oom(w.id, w.seen),
        }
    }

    /// The cgroup directory of the container that process `id` belongs to.
    fn cgroup_dir(&self, id: u32) -> Result<PathBuf, Reply> {
        self.pid_of(id)?;
        let rel = self
            .config
            .cgroups_path
            .strip_prefix("/")
            .unwrap_or(&self.config.cgroups_path);
        Ok(std::path::Path::new(crate::cgroup::ROOT).join(rel))
    }

    /// Blocks until the container of process `id` has had more than `seen` OOM kills.
    fn wait_oom(&self, id: u32, seen: u64) -> Reply {
        let dir = match self.cgroup_dir(id) {
            Ok(d) => d,
            Err(r) => return r,
        };
        match crate::cgroup::wait_oom(&dir, seen, || self.lock().shutdown) {
            Ok(oom_kill) => Reply::Oom(Oom { id, oom_kill }),
            Err(e) => error(format!(
                "failed to watch process {id}'s container for OOM kills: {e}"
            )),
        }
    }

    fn create_and_start(&self, w: WorkloadSpec) -> Reply {
        let mut inner = self.lock();
        if inner.container.is_some() || inner.shutdown {
            return error("failed to create the workload: it was already started");
        }
        let c = &self.config;
        let hostname = w
            .hostname
            .clone()
            .unwrap_or_else(|| spec::DEFAULT_HOSTNAME.into());
        let binds = match net::etc_files(&c.work_dir, &hostname, w.network.as_ref()) {
            Ok(b) => b,
            Err(e) => return error(format!("{e}")),
        };
        let ctx = spec::Context {
            rootfs: c.rootfs.clone(),
            cgroups_path: c.cgroups_path.clone(),
            binds,
        };
        let oci = match spec::build(&w, &ctx) {
            Ok(s) => s,
            Err(e) => return error(chain(&e)),
        };
        let (stdio, stdin, tty) = Self::take_stdio(&mut inner, WORKLOAD, w.process.tty);
        let network = w.network.as_ref();
        match self
            .runtime
            .create_and_start(&c.container_id, &oci, stdio, |pid| net::setup(pid, network))
        {
            Ok(running) => {
                Self::start_pump(WORKLOAD, running.master.as_ref(), tty);
                inner.procs.insert(
                    WORKLOAD,
                    Proc {
                        pid: running.pid,
                        stdin,
                        master: running.master,
                    },
                );
                inner.container = Some(running.container);
                inner.workload = Some(w);
                self.changed.notify_all();
                Reply::Started(Started {
                    id: WORKLOAD,
                    pid: running.pid,
                })
            }
            Err(e) => error(chain(&e)),
        }
    }

    fn exec(&self, id: u32, p: &agent_protocol::ProcessSpec) -> Reply {
        let mut inner = self.lock();
        let Some(w) = inner.workload.clone() else {
            return error("failed to exec: the workload has not been started");
        };
        if id == WORKLOAD || inner.procs.contains_key(&id) {
            return error(format!("failed to exec: process id {id} is taken"));
        }
        if inner.procs.len() >= MAX_PROCESSES {
            return error("failed to exec: too many processes");
        }
        if inner
            .procs
            .get(&WORKLOAD)
            .is_some_and(|w| self.runtime.reaper.try_status(w.pid).is_some())
        {
            return error("failed to exec: the workload has exited");
        }
        let caps = match spec::capabilities(&w.cap_add, &w.cap_drop) {
            Ok(c) => c,
            Err(e) => return error(chain(&e)),
        };
        let process = match spec::process(p, &self.config.rootfs, &caps, w.no_new_privileges) {
            Ok(p) => p,
            Err(e) => return error(chain(&e)),
        };
        let (stdio, stdin, tty) = Self::take_stdio(&mut inner, id, p.tty);
        match self
            .runtime
            .exec(&self.config.container_id, id, &process, stdio)
        {
            Ok((pid, master)) => {
                Self::start_pump(id, master.as_ref(), tty);
                inner.procs.insert(id, Proc { pid, stdin, master });
                Reply::Started(Started { id, pid })
            }
            Err(e) => error(chain(&e)),
        }
    }

    fn pid_of(&self, id: u32) -> Result<i32, Reply> {
        self.lock()
            .procs
            .get(&id)
            .map(|p| p.pid)
            .ok_or_else(|| error(format!("failed to find process {id}: no such process")))
    }

    fn signal(&self, id: u32, sig: i32) -> Reply {
        let pid = match self.pid_of(id) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Ok(signal) = Signal::try_from(sig) else {
            return error(format!(
                "failed to signal process {id}: invalid signal {sig}"
            ));
        };
        if self.runtime.reaper.try_status(pid).is_some() {
            return error(format!("failed to signal process {id}: it has exited"));
        }
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => Reply::Ok,
            Err(e) => error(format!("failed to signal process {id}: {e}")),
        }
    }

    fn resize(&self, id: u32, rows: u16, cols: u16) -> Reply {
        let inner = self.lock();
        let Some(p) = inner.procs.get(&id) else {
            return error(format!("failed to resize process {id}: no such process"));
        };
        let Some(master) = p.master.as_ref() else {
            return error(format!("failed to resize process {id}: it has no terminal"));
        };
        match crate::tty::set_window(master, agent_protocol::WindowSize { rows, cols }) {
            Ok(()) => Reply::Ok,
            Err(e) => error(chain(&e)),
        }
    }

    fn close_stdin(&self, id: u32) -> Reply {
        let mut inner = self.lock();
        let Some(p) = inner.procs.get_mut(&id) else {
            return error(format!(
                "failed to close stdin of process {id}: no such process"
            ));
        };
        if let Some(fd) = p.stdin.take() {
            // The process holds the same socket as its fd 0: shutting down the read side makes its reads return
            // EOF, which closing our duplicate alone would not. With a terminal the pump reads it and types EOF.
            // SAFETY: shutdown(2) on a descriptor we own.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
        }
        Reply::Ok
    }

    fn wait(&self, id: u32) -> Reply {
        let pid = match self.pid_of(id) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let (code, signal) = exit_code(self.runtime.reaper.wait(pid));
        if let Some(p) = self.lock().procs.get_mut(&id) {
            // Nothing left to resize: let the pty go once the pump is done with it too.
            p.master = None;
        }
        if id == WORKLOAD {
            self.lock().exit_delivered.get_or_insert_with(Instant::now);
            self.changed.notify_all();
        }
        Reply::Exited(Exited { id, code, signal })
    }

    /// Blocks until the VM should end: a `Shutdown` request, or the workload's exit delivered to a `Wait` and
    /// `linger` passed without a `Shutdown`, or the workload ended and nobody asked for `orphan_timeout`.
    pub fn wait_for_end(&self, linger: Duration, orphan_timeout: Duration) {
        let mut inner = self.lock();
        let mut exited_at: Option<Instant> = None;
        loop {
            if inner.shutdown {
                return;
            }
            if let Some(t) = inner.exit_delivered {
                if t.elapsed() >= linger {
                    return;
                }
            }
            let workload_pid = inner.procs.get(&WORKLOAD).map(|p| p.pid);
            if exited_at.is_none()
                && workload_pid.is_some_and(|pid| self.runtime.reaper.try_status(pid).is_some())
            {
                exited_at = Some(Instant::now());
            }
            if exited_at.is_some_and(|t| t.elapsed() >= orphan_timeout) {
                return;
            }
            inner = self
                .changed
                .wait_timeout(inner, Duration::from_millis(250))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Kills every process and deletes the container (errors logged).
    pub fn stop(&self) {
        let container = self.lock().container.take();
        if let Some(mut c) = container {
            self.runtime.remove(&mut c);
        }
    }
}

/// "failed to x: cause: cause" on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
