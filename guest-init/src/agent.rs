//! The agent: serves the host's requests (see `PROTOCOL.md`) over any byte streams, vsock in the guest and
//! socketpairs in tests.
//!
//! One thread per connection. stdio connections bind themselves to a process id with `AttachStream` and are then
//! handed to libcontainer as the process's fds 0/1/2: guest-init never copies workload output, so a large output
//! cannot stall the control channel, and the process sees EOF/EPIPE exactly when the host closes its end. A process
//! started with a terminal is the exception: its stdio is the pty slave, and [`crate::tty::pump`] copies between
//! the master and the streams (stderr merges into stdout, as with Docker's `-t`).
//! Bounded: at most [`MAX_PENDING`] unbound streams, [`MAX_PROCESSES`] processes and [`MAX_CONTAINERS`]
//! containers; a malformed frame gets an `Error` reply and the connection goes on unless the framing itself broke.
//!
//! A VM runs one container, or several (a pod: see [`crate::pod`]): the first one created, on the boot rootfs,
//! and then any number of named others, each on its own image device, in its own cgroup and hardening, joining
//! the namespaces of another where the host says. Process ids are the VM's: every container's init and exec
//! has its own.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol::frame::{read_frame, write_frame, Frame};
use agent_protocol::{
    ContainerPlacement, ErrorReply, Exited, Namespace, Oom, ProcessRef, Reply, Request, Started,
    StreamKind, WorkloadSpec, WORKLOAD,
};
use libcontainer::container::Container;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container::{exit_code, Runtime, Stdio};
use crate::{net, pod, spec};

/// Most stdio connections waiting for their process.
pub const MAX_PENDING: usize = 48;
/// Most processes (workloads + execs) per VM.
pub const MAX_PROCESSES: usize = 1024;
/// Most containers per VM.
pub const MAX_CONTAINERS: usize = 64;

struct Proc {
    pid: i32,
    /// The container it runs in.
    container: String,
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

/// One container of the VM.
struct Ctr {
    container: Container,
    workload: WorkloadSpec,
    /// The process id of its init.
    init: u32,
    /// Its cgroup (below the guest's cgroup root).
    cgroups_path: PathBuf,
    /// Its root filesystem.
    root: PathBuf,
    /// Its own image mounts (none on the boot rootfs).
    mounts: Option<pod::Rootfs>,
    /// Its generated /etc files.
    etc: PathBuf,
    /// Its seccomp profile, for its exec'd processes.
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<(u32, StreamKind), OwnedFd>,
    procs: HashMap<u32, Proc>,
    containers: HashMap<String, Ctr>,
    /// The first container created: execs that name none run there.
    first: Option<String>,
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
    /// Where pod members' own rootfs mounts go (`<dir>/<container id>/`).
    pub pods_dir: PathBuf,
    /// Where pod members' rootfs devices live (`/dev` in the guest; tests point it at links to loop devices).
    pub device_dir: PathBuf,
    /// Size of each pod member's tmpfs upper layer (tmpfs `size=` syntax).
    pub tmpfs_size: String,
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
            Request::Exec(e) => self.exec(e.id, &e.process, e.container.as_deref()),
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
            Request::DeleteContainer(c) => self.delete_container(&c.id),
        }
    }

    /// The cgroup directory of the container that process `id` belongs to.
    fn cgroup_dir(&self, id: u32) -> Result<PathBuf, Reply> {
        let inner = self.lock();
        let path = inner
            .procs
            .get(&id)
            .and_then(|p| inner.containers.get(&p.container))
            .map(|c| c.cgroups_path.clone())
            .ok_or_else(|| error(format!("failed to find process {id}: no such process")))?;
        let rel = path.strip_prefix("/").unwrap_or(&path);
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
        if inner.shutdown {
            return error("failed to create the workload: the VM is shutting down");
        }
        match w.container.clone() {
            None if !inner.containers.is_empty() => {
                error("failed to create the workload: it was already started")
            }
            None => {
                let c = &self.config;
                let (id, cgroup) = (c.container_id.clone(), c.cgroups_path.clone());
                let place = Place {
                    id,
                    process: WORKLOAD,
                    cgroups_path: cgroup,
                    root: c.rootfs.clone(),
                    mounts: None,
                    join: None,
                };
                self.create(&mut inner, w, place)
            }
            Some(p) => match self.place(&inner, &p) {
                Ok(place) => self.create(&mut inner, w, place),
                Err(e) => error(format!(
                    "failed to create container {:?}: {}",
                    p.id,
                    chain(&e)
                )),
            },
        }
    }

    /// Checks a pod member's placement and mounts its rootfs.
    fn place(&self, inner: &Inner, p: &ContainerPlacement) -> Result<Place, pod::Error> {
        let invalid = |m: String| Err(pod::Error::Invalid(m));
        if !pod::valid_container_id(&p.id) {
            return invalid("container id: use 1 to 128 of [A-Za-z0-9_.-]".into());
        }
        if inner.containers.contains_key(&p.id) {
            return invalid("container id: it exists".into());
        }
        if inner.containers.len() >= MAX_CONTAINERS {
            return invalid("container: too many in this VM".into());
        }
        let first = inner.containers.is_empty();
        if inner.procs.contains_key(&p.process) || (p.process == WORKLOAD && !first) {
            return invalid(format!("process id {}: it is taken", p.process));
        }
        if inner.procs.len() >= MAX_PROCESSES {
            return invalid("process: too many".into());
        }
        let join = match &p.join {
            None => None,
            Some(j) => {
                let Some(target) = inner.containers.get(&j.container) else {
                    return invalid(format!(
                        "namespaces of {:?}: no such container",
                        j.container
                    ));
                };
                let pid = inner.procs.get(&target.init).map(|p| p.pid).unwrap_or(0);
                if pid <= 0 || self.runtime.reaper.try_status(pid).is_some() {
                    return invalid(format!("namespaces of {:?}: it has exited", j.container));
                }
                Some((pid, j.namespaces.clone()))
            }
        };
        let (root, mounts) = match &p.rootfs {
            None if first => (self.config.rootfs.clone(), None),
            None => return invalid("rootfs: the boot rootfs is another container's".into()),
            Some(d) => {
                let dev = pod::device_path(&self.config.device_dir, d)?;
                let fstype = pod::fstype(d)?;
                if inner
                    .containers
                    .values()
                    .any(|c| c.mounts.as_ref().is_some_and(|m| m.device() == dev))
                {
                    return invalid(format!("rootfs device {:?}: it is in use", d.device));
                }
                let r = pod::Rootfs::mount(
                    &self.config.pods_dir.join(&p.id),
                    &dev,
                    fstype,
                    &self.config.tmpfs_size,
                )?;
                (r.root.clone(), Some(r))
            }
        };
        Ok(Place {
            id: p.id.clone(),
            process: p.process,
            cgroups_path: PathBuf::from("/mvrun").join(&p.id),
            root,
            mounts,
            join,
        })
    }

    /// Creates and starts a container where `place` says.
    fn create(&self, inner: &mut Inner, w: WorkloadSpec, place: Place) -> Reply {
        let hostname = w
            .hostname
            .clone()
            .unwrap_or_else(|| spec::DEFAULT_HOSTNAME.into());
        let etc = if place.process == WORKLOAD && w.container.is_none() {
            self.config.work_dir.clone()
        } else {
            self.config.work_dir.join(&place.id)
        };
        let failed = |e: &dyn std::error::Error, place: &Place| {
            if let Some(m) = &place.mounts {
                m.unmount();
            }
            error(chain(e))
        };
        let binds = match net::etc_files(&etc, &hostname, w.network.as_ref()) {
            Ok(b) => b,
            Err(e) => return failed(&e, &place),
        };
        let ctx = spec::Context {
            rootfs: place.root.clone(),
            cgroups_path: place.cgroups_path.clone(),
            binds,
        };
        let mut oci = match spec::build(&w, &ctx) {
            Ok(s) => s,
            Err(e) => return failed(&e, &place),
        };
        let joins_net = match &place.join {
            Some((pid, kinds)) => {
                if let Err(e) = pod::join_namespaces(&mut oci, *pid, kinds) {
                    return failed(&e, &place);
                }
                kinds.contains(&Namespace::Network)
            }
            None => false,
        };
        let seccomp = oci.linux().as_ref().and_then(|l| l.seccomp().clone());
        let (stdio, stdin, tty) = Self::take_stdio(inner, place.process, w.process.tty);
        let network = w.network.as_ref();
        let prepare = |pid| {
            if joins_net {
                // The network is the joined container's, set up with it.
                Ok(())
            } else {
                net::setup(pid, network)
            }
        };
        match self
            .runtime
            .create_and_start(&place.id, &oci, stdio, prepare)
        {
            Ok(running) => {
                Self::start_pump(place.process, running.master.as_ref(), tty);
                inner.procs.insert(
                    place.process,
                    Proc {
                        pid: running.pid,
                        container: place.id.clone(),
                        stdin,
                        master: running.master,
                    },
                );
                inner.first.get_or_insert_with(|| place.id.clone());
                inner.containers.insert(
                    place.id.clone(),
                    Ctr {
                        container: running.container,
                        workload: w,
                        init: place.process,
                        cgroups_path: place.cgroups_path,
                        root: place.root,
                        mounts: place.mounts,
                        etc,
                        seccomp,
                    },
                );
                self.changed.notify_all();
                Reply::Started(Started {
                    id: place.process,
                    pid: running.pid,
                })
            }
            Err(e) => failed(&e, &place),
        }
    }

    fn exec(&self, id: u32, p: &agent_protocol::ProcessSpec, container: Option<&str>) -> Reply {
        let mut inner = self.lock();
        let Some(name) = container.map(String::from).or_else(|| inner.first.clone()) else {
            return error("failed to exec: the workload has not been started");
        };
        let Some(c) = inner.containers.get(&name) else {
            return error(format!("failed to exec: no container {name:?}"));
        };
        let (w, root, init) = (c.workload.clone(), c.root.clone(), c.init);
        let seccomp = c.seccomp.clone();
        if id == WORKLOAD || inner.procs.contains_key(&id) {
            return error(format!("failed to exec: process id {id} is taken"));
        }
        if inner.procs.len() >= MAX_PROCESSES {
            return error("failed to exec: too many processes");
        }
        if inner
            .procs
            .get(&init)
            .is_some_and(|w| self.runtime.reaper.try_status(w.pid).is_some())
        {
            return error("failed to exec: the workload has exited");
        }
        let caps = match spec::capabilities(&w.cap_add, &w.cap_drop) {
            Ok(c) => c,
            Err(e) => return error(chain(&e)),
        };
        let process = match spec::process(p, &root, &caps, w.no_new_privileges) {
            Ok(p) => p,
            Err(e) => return error(chain(&e)),
        };
        let (stdio, stdin, tty) = Self::take_stdio(&mut inner, id, p.tty);
        match self
            .runtime
            .exec(&name, id, &process, seccomp.as_ref(), stdio)
        {
            Ok((pid, master)) => {
                Self::start_pump(id, master.as_ref(), tty);
                inner.procs.insert(
                    id,
                    Proc {
                        pid,
                        container: name,
                        stdin,
                        master,
                    },
                );
                Reply::Started(Started { id, pid })
            }
            Err(e) => error(chain(&e)),
        }
    }

    /// Kills a container's processes, deletes it, and releases its rootfs device.
    fn delete_container(&self, id: &str) -> Reply {
        let mut inner = self.lock();
        let Some(mut c) = inner.containers.remove(id) else {
            return error(format!(
                "failed to delete container {id:?}: no such container"
            ));
        };
        self.runtime.remove(&mut c.container);
        if let Some(m) = &c.mounts {
            m.unmount();
        }
        if c.etc != self.config.work_dir {
            let _ = std::fs::remove_dir_all(&c.etc);
        }
        // Its exited processes go; a Wait already in flight keeps the pid it looked up.
        let reaper = &self.runtime.reaper;
        inner
            .procs
            .retain(|_, p| p.container != id || reaper.try_status(p.pid).is_none());
        if inner.first.as_deref() == Some(id) {
            inner.first = None;
        }
        Reply::Ok
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

    /// Kills every process and deletes every container (errors logged), the pod members' before the first.
    pub fn stop(&self) {
        let mut inner = self.lock();
        let first = inner.first.clone();
        let mut ids: Vec<String> = inner.containers.keys().cloned().collect();
        ids.sort_by_key(|id| Some(id) == first.as_ref());
        for id in ids {
            if let Some(mut c) = inner.containers.remove(&id) {
                self.runtime.remove(&mut c.container);
                if let Some(m) = &c.mounts {
                    m.unmount();
                }
            }
        }
    }
}

/// Where a new container goes.
struct Place {
    id: String,
    process: u32,
    cgroups_path: PathBuf,
    root: PathBuf,
    mounts: Option<pod::Rootfs>,
    /// The pid whose namespaces it joins, and which.
    join: Option<(i32, Vec<Namespace>)>,
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
