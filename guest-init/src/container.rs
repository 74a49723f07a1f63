//! The workload as a container, through youki's libcontainer: write the bundle, `ContainerBuilder` ...
//! `as_init(bundle)` ... `build()`, `start()`, and wait through the [`Reaper`].
//!
//! Exit codes are Docker's. libcontainer reports neither "not found" nor "cannot execute", so our [`Executor`]
//! resolves the command in the container's PATH itself, after every namespace, mount, capability and seccomp step,
//! and exits with 127 (ENOENT) or 126 (EACCES, ENOEXEC, ...) when exec fails.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

/// Exit code for guest-init's own failures (Docker's 125).
pub const EXIT_OWN_FAILURE: i32 = 125;
/// The command exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// The command does not exist.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Errors running containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the bundle failed.
    #[error("failed to write the bundle at {path}")]
    Bundle {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// libcontainer refused or failed.
    #[error("failed to {what} the container")]
    Libcontainer {
        /// What we asked.
        what: &'static str,
        /// The cause.
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    /// The container has no init pid after start.
    #[error("failed to start the container: it has no pid")]
    NoPid,
    /// Preparing the created container (its network) failed.
    #[error("failed to prepare the container")]
    Prepare(#[from] crate::net::Error),
    /// Serializing the spec failed.
    #[error("failed to write the OCI spec")]
    Spec(#[from] oci_spec::OciSpecError),
    /// The process's terminal could not be set up.
    #[error("failed to give the process a terminal")]
    Tty(#[from] crate::tty::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Collects exit statuses without racing libcontainer's own waits.
///
/// `wait(pid)` waits for that pid only, so it never takes a status someone else (libcontainer, `std::process`)
/// is waiting for. As PID 1, [`Reaper::reap_orphans`] adds a thread that reaps everything else too; libcontainer
/// waits for its intermediate processes itself, so everything that creates processes through libcontainer holds
/// [`Reaper::hold`], and that thread reaps only while holding the same lock. Statuses are kept only for pids
/// registered with `watch` (bounded by the number of processes we started).
pub struct Reaper {
    lock: Mutex<()>,
    state: Mutex<ReaperState>,
    changed: Condvar,
}

#[derive(Default)]
struct ReaperState {
    watched: HashSet<i32>,
    exits: HashMap<i32, WaitStatus>,
    /// Bumped when a `hold` ends, so the orphan reaper knows children may exist again after an ECHILD.
    spawns: u64,
}

impl Reaper {
    /// The process's reaper (there must be only one).
    pub fn start() -> Arc<Reaper> {
        static REAPER: std::sync::OnceLock<Arc<Reaper>> = std::sync::OnceLock::new();
        REAPER
            .get_or_init(|| {
                Arc::new(Reaper {
                    lock: Mutex::new(()),
                    state: Mutex::new(ReaperState::default()),
                    changed: Condvar::new(),
                })
            })
            .clone()
    }

    /// Also reaps every orphan (PID 1 mode); call once.
    pub fn reap_orphans(self: &Arc<Self>) {
        let r = self.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())
        {
            tracing::error!("failed to start the reaper thread: {e}");
        }
    }

    /// Blocks orphan reaping while the guard lives (around libcontainer calls).
    pub fn hold(&self) -> Hold<'_> {
        Hold {
            _guard: self.lock.lock().unwrap_or_else(|e| e.into_inner()),
            reaper: self,
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `pid`'s exit status for [`Reaper::wait`]. Call it while holding [`Reaper::hold`].
    pub fn watch(&self, pid: i32) {
        self.lock_state().watched.insert(pid);
    }

    fn record(&self, status: WaitStatus) {
        if let Some(pid) = status.pid() {
            let mut st = self.lock_state();
            if st.watched.contains(&pid.as_raw()) {
                st.exits.insert(pid.as_raw(), status);
            }
        }
        self.changed.notify_all();
    }

    /// Waits until `pid` (watched) has ended; returns its status.
    pub fn wait(&self, pid: i32) -> WaitStatus {
        if let Some(s) = self.try_status(pid) {
            return s;
        }
        loop {
            // __WALL: libcontainer clones the container init with CLONE_PARENT and no exit signal.
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
                Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.record(s);
                    return s;
                }
                Err(Errno::EINTR) | Ok(_) => continue,
                // Someone else reaped it (the orphan reaper or a concurrent wait): their record arrives.
                Err(_) => break,
            }
        }
        let mut st = self.lock_state();
        loop {
            if let Some(s) = st.exits.get(&pid) {
                return *s;
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The status of `pid` if it has ended.
    pub fn try_status(&self, pid: i32) -> Option<WaitStatus> {
        if let Some(s) = self.lock_state().exits.get(&pid) {
            return Some(*s);
        }
        match waitpid(
            Pid::from_raw(pid),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                self.record(s);
                Some(s)
            }
            _ => self.lock_state().exits.get(&pid).copied(),
        }
    }

    fn run(&self) {
        loop {
            let spawns = self.lock_state().spawns;
            // Sleep until some child is a zombie, without reaping it (WNOWAIT).
            match waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL,
            ) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => {
                    // No children at all: sleep until someone starts one.
                    let mut st = self.lock_state();
                    while st.spawns == spawns {
                        st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!("reaper: waitid failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            }
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => self.record(status),
                }
            }
        }
    }
}

/// Holds off the reaper; see [`Reaper::hold`].
pub struct Hold<'a> {
    _guard: MutexGuard<'a, ()>,
    reaper: &'a Reaper,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.reaper.lock_state().spawns += 1;
        self.reaper.changed.notify_all();
    }
}

/// Docker's exit code for a wait status, and the signal if one killed the process.
pub fn exit_code(status: WaitStatus) -> (i32, Option<i32>) {
    match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (EXIT_OWN_FAILURE, None),
    }
}

/// Runs the workload's command inside the finished container: looks it up in PATH and maps exec failures to
/// Docker's 126/127 (libcontainer's default executor fails before start instead, with no way to tell why).
///
/// For an exec'd process it also installs the container's seccomp filter: libcontainer 0.7 builds a tenant's spec
/// with the container's namespaces and cgroup but not its seccomp profile, so without this an exec'd process would
/// run unfiltered (runc filters it as the container's init). Installed last, with no_new_privs already set (a
/// process without no_new_privs, `--security-opt no-new-privileges=false`, cannot install it any more and runs
/// unfiltered, with a warning on its stderr).
#[derive(Clone, Default)]
struct DockerExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for DockerExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        if let Some(p) = spec
            .process()
            .as_ref()
            .filter(|p| p.terminal() == Some(true))
        {
            apply_console_size(p);
        }
        let nnp = spec.process().as_ref().and_then(|p| p.no_new_privileges()) == Some(true);
        if let (Some(_), false) = (&self.seccomp, nnp) {
            // Without no_new_privs an unprivileged process cannot install a filter (and capabilities are gone):
            // say so rather than fail the exec.
            eprintln!(
                "guest-init: no-new-privileges=false: this exec runs without the container's seccomp filter"
            );
        }
        if let Some(profile) = self.seccomp.as_ref().filter(|_| nnp) {
            if let Err(e) = libcontainer::seccomp::initialize_seccomp(profile) {
                eprintln!("guest-init: failed to apply the container's seccomp filter: {e}");
                std::process::exit(EXIT_OWN_FAILURE);
            }
        }
        exec_or_exit(&args)
    }

    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        // Lookup happens in exec, where a failure becomes an exit code rather than a start error.
        Ok(())
    }
}

/// Sizes the terminal (our stdio, the pty slave) from the spec's `consoleSize` before the command runs: set here,
/// inside the container process, the size is in place before the workload's first instruction, for `exec`s too
/// (libcontainer does not apply `consoleSize`).
fn apply_console_size(p: &Process) {
    if let Some(b) = p.console_size() {
        let size = agent_protocol::WindowSize {
            rows: u16::try_from(b.height()).unwrap_or(u16::MAX),
            cols: u16::try_from(b.width()).unwrap_or(u16::MAX),
        };
        if let Err(e) = crate::tty::set_window(&std::io::stdin(), size) {
            eprintln!("guest-init: {e}");
        }
    }
}

/// execv()s `args` as execvp would, or prints why not and exits 127/126.
fn exec_or_exit(args: &[String]) -> ! {
    let Some(name) = args.first() else {
        eprintln!("guest-init: no command given");
        std::process::exit(EXIT_NOT_FOUND);
    };
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        let path = std::env::var("PATH").unwrap_or_default();
        path.split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(name))
            .collect()
    };
    let mut err = Errno::ENOENT;
    for c in &candidates {
        if !name.contains('/') && c.metadata().map(|m| m.is_dir()).unwrap_or(true) {
            continue;
        }
        let Ok(path) = CString::new(c.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // Only returns on failure.
        let e = nix::unistd::execv(&path, &cargs).unwrap_err();
        err = e;
        if !matches!(e, Errno::EACCES | Errno::ENOENT | Errno::ENOTDIR) {
            break;
        }
    }
    let (code, why) = match err {
        Errno::ENOENT | Errno::ENOTDIR if name.contains('/') => {
            (EXIT_NOT_FOUND, "no such file or directory".into())
        }
        Errno::ENOENT | Errno::ENOTDIR => (
            EXIT_NOT_FOUND,
            "executable file not found in $PATH".to_string(),
        ),
        e => (EXIT_CANNOT_EXECUTE, e.desc().to_ascii_lowercase()),
    };
    eprintln!("guest-init: exec {name:?}: {why}");
    std::process::exit(code)
}

/// The three standard streams of a process; `None` inherits guest-init's own.
#[derive(Default)]
pub struct Stdio {
    /// stdin.
    pub stdin: Option<OwnedFd>,
    /// stdout.
    pub stdout: Option<OwnedFd>,
    /// stderr.
    pub stderr: Option<OwnedFd>,
}

fn with_stdio(mut b: ContainerBuilder, stdio: Stdio) -> ContainerBuilder {
    if let Some(fd) = stdio.stdin {
        b = b.with_stdin(fd);
    }
    if let Some(fd) = stdio.stdout {
        b = b.with_stdout(fd);
    }
    if let Some(fd) = stdio.stderr {
        b = b.with_stderr(fd);
    }
    b
}

/// Where bundles and container state live, plus the reaper every start goes through.
pub struct Runtime {
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// Bundles: `<bundle_root>/<id>/config.json`.
    pub bundle_root: PathBuf,
    /// The reaper.
    pub reaper: Arc<Reaper>,
}

/// A started container.
pub struct Running {
    /// libcontainer's handle.
    pub container: Container,
    /// The workload's pid.
    pub pid: i32,
    /// The master of the workload's terminal, when its spec asks for one.
    pub master: Option<OwnedFd>,
}

/// Whether `spec`'s process asks for a terminal.
fn wants_terminal(process: Option<&Process>) -> bool {
    process.and_then(|p| p.terminal()) == Some(true)
}

impl Runtime {
    fn lc(what: &'static str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> Error {
        move |source| Error::Libcontainer { what, source }
    }

    /// Creates container `id` from `spec`, runs `prepare(pid)` (network setup) and starts it.
    pub fn create_and_start(
        &self,
        id: &str,
        spec: &Spec,
        stdio: Stdio,
        prepare: impl FnOnce(i32) -> std::result::Result<(), crate::net::Error>,
    ) -> Result<Running> {
        let bundle = self.bundle_root.join(id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Bundle { path, source }
        };
        fs::create_dir_all(&bundle).map_err(io(&bundle))?;
        fs::create_dir_all(&self.state_root).map_err(io(&self.state_root))?;
        spec.save(bundle.join("config.json"))?;
        let console = wants_terminal(spec.process().as_ref())
            .then(|| crate::tty::ConsoleSocket::bind(&bundle.join("console.sock")))
            .transpose()?;
        let guard = self.reaper.hold();
        let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_executor(DockerExecutor::default())
            .with_root_path(&self.state_root)
            .map_err(Self::lc("configure"))?
            .with_console_socket(console.as_ref().map(|c| c.path()));
        let mut container = with_stdio(builder, stdio)
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(Self::lc("create"))?;
        let pid = container.pid().ok_or(Error::NoPid)?.as_raw();
        self.reaper.watch(pid);
        // The container process sent the master before it reported ready, so it is waiting in the socket.
        let mut master = None;
        let started = console
            .as_ref()
            .map(|c| c.receive_master().map(|m| master = Some(m)))
            .transpose()
            .map_err(Error::from)
            .and_then(|_| prepare(pid).map_err(Error::from))
            .and_then(|()| container.start().map_err(Self::lc("start")));
        drop(guard);
        if let Err(e) = started {
            self.remove(&mut container);
            return Err(e);
        }
        Ok(Running {
            container,
            pid,
            master,
        })
    }

    /// Starts `process` inside the running container `id` under the container's `seccomp` profile; returns its
    /// pid and, when it asks for a terminal, the terminal's master.
    pub fn exec(
        &self,
        id: &str,
        exec_id: u32,
        process: &Process,
        seccomp: Option<&LinuxSeccomp>,
        stdio: Stdio,
    ) -> Result<(i32, Option<OwnedFd>)> {
        let path = self
            .bundle_root
            .join(id)
            .join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(process).map_err(|e| Error::Bundle {
            path: path.clone(),
            source: e.into(),
        })?;
        fs::write(&path, json).map_err(|source| Error::Bundle {
            path: path.clone(),
            source,
        })?;
        let console = wants_terminal(Some(process))
            .then(|| {
                let sock = self
                    .bundle_root
                    .join(id)
                    .join(format!("console-{exec_id}.sock"));
                crate::tty::ConsoleSocket::bind(&sock)
            })
            .transpose()?;
        let guard = self.reaper.hold();
        let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_executor(DockerExecutor {
                seccomp: seccomp.cloned(),
            })
            .with_root_path(&self.state_root)
            .map_err(Self::lc("configure"))?
            .with_console_socket(console.as_ref().map(|c| c.path()));
        let pid = with_stdio(builder, stdio)
            .as_tenant()
            .with_process(Some(&path))
            .with_detach(true)
            .build()
            .map_err(Self::lc("exec in"))?;
        self.reaper.watch(pid.as_raw());
        drop(guard);
        let master = match console.as_ref().map(|c| c.receive_master()).transpose() {
            Ok(m) => m,
            Err(e) => {
                // The process runs without a terminal we can reach: end it rather than leave it stranded.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(e.into());
            }
        };
        Ok((pid.as_raw(), master))
    }

    /// Kills what is left and deletes the container's state and cgroup; errors are logged, never returned, so
    /// they cannot hide the workload's result.
    pub fn remove(&self, container: &mut Container) {
        let _guard = self.reaper.hold();
        if let Err(e) = container.delete(true) {
            tracing::warn!(id = container.id(), "failed to delete the container: {e}");
        }
        let _ = fs::remove_dir_all(self.bundle_root.join(container.id()));
    }
}
