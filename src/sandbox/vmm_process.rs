//! The VMM as a child process of the sandbox's supervisor (the keeper): the keeper stays unjailed and keeps the
//! record, the stdio and the agent client; the VMM runs in its own process, jailed ([`super::jail`]), in its own
//! cgroup ([`super::cgroup`]).
//!
//! The keeper clones the child into new PID, mount, network, IPC and UTS namespaces (the child is PID 1 of its
//! PID namespace) and execs `mvrun-vmm ... --vmm`. The child jails itself, waits on the *go* pipe until the keeper
//! has put it in its cgroup (the two overlap), builds the VM, drops its privileges and runs the guest. It reports on the *report*
//! pipe, one JSON line per event: ready (with its setup figures), then how the VM ended, or why it failed. The
//! go pipe stays open for the child's life: EOF on it means the keeper is gone.
//!
//! Descriptors of the child: 0 and 1 /dev/null, 2 the keeper's stderr, 3 the console log (opened by the keeper),
//! 4 the report pipe, 5 the go pipe.

use super::cgroup;
use super::jail::{self, Plan};
use super::launch_spec::LaunchSpec;
use super::state::SandboxDir;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The guest's CID on its vsock device.
pub const GUEST_CID: u64 = 3;
/// The child's argument that selects the VMM mode of `mvrun-vmm`.
pub const VMM_MODE_ARG: &str = "--vmm";
const CONSOLE_FD: i32 = 3;
const REPORT_FD: i32 = 4;
const GO_FD: i32 = 5;
/// How long a VMM asked to stop (SIGTERM) may take to report before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or running the VMM process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The child could not be started.
    #[error("failed to start the VMM process ({0})")]
    Spawn(&'static str, #[source] std::io::Error),
    /// Its cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    /// The VMM reported a failure before the guest ran.
    #[error("{0}")]
    Failed(String),
    /// The VM's configuration is refused (checked on the host's paths before the VMM starts).
    #[error(transparent)]
    Config(vmm::config::Error),
    /// The VMM process ended without a word.
    #[error("the VMM process ended before it was ready")]
    Vanished,
}

/// A message from the VMM process to its keeper.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Report {
    /// The VM is built, the jail in force; the guest starts now.
    Ready {
        /// From launch (the keeper's clone) to the jail in place.
        jail: Option<Duration>,
        /// From launch to the VM built.
        setup: Duration,
        /// Where that time went, phase by phase (jail, then the VMM's build phases).
        #[serde(default)]
        phases: Vec<(String, Duration)>,
        /// Guest memory's host address ranges in the VMM, so that the keeper can tell the VMM's own memory
        /// from the guest's in its smaps (the jailed VMM has no /proc).
        #[serde(default)]
        guest_ranges: Vec<(u64, u64)>,
    },
    /// The VM ended.
    Ended(Ended),
    /// The VMM failed before the guest ran.
    Failed(String),
}

/// How the VM ended, as the VMM saw it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ended {
    /// Why (vmm::VmExit's words).
    pub exit: String,
    /// An orderly end (reset or shutdown).
    pub clean: bool,
    /// From launch to the boot vCPU's first KVM_RUN.
    pub first_kvm_run: Option<Duration>,
    /// From launch to the guest's boot-timer write.
    pub boot_timer: Option<Duration>,
}

/// What the keeper learns when the VMM process is gone.
#[derive(Clone, Debug, Default)]
pub struct Reaped {
    /// The VMM's own report of the VM's end, if it made one.
    pub ended: Option<Ended>,
    /// The signal that killed it, unless the keeper sent it.
    pub signal: Option<i32>,
}

impl Reaped {
    /// Why the VMM process died, when a signal the keeper did not send killed it.
    pub fn killed_reason(&self) -> Option<String> {
        self.signal.map(super::vmm_killed_message)
    }
}

/// Whether the VMM runs jailed: always, unless `MVRUN_UNSAFE_NO_JAIL=1`.
pub fn jailed() -> bool {
    std::env::var(jail::UNSAFE_NO_JAIL_ENV).map_or(true, |v| v != "1")
}

#[derive(Default)]
struct Shared {
    ready: Option<Report>,
    ended: Option<Ended>,
    failed: Option<String>,
    eof: bool,
}

/// The keeper's handle on a running VMM process.
pub struct VmmProcess {
    pid: i32,
    id: String,
    jail_root: Option<PathBuf>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    killed: std::sync::atomic::AtomicBool,
    // Held open for the child's life: its EOF tells the child the keeper is gone.
    _go: File,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A descriptor duplicated to 10 or above (close-on-exec), so the child's dup2 onto 0..5 cannot clobber it.
fn high(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `n` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((high(r)?, high(w)?))
}

impl VmmProcess {
    /// Starts the VMM of the sandbox in `dir` running `spec`; returns once it has been let go (in its cgroup when
    /// jailed). Call from a single-threaded keeper: the child runs only async-signal-safe code before its exec.
    pub fn spawn(dir: &SandboxDir, spec: &LaunchSpec) -> Result<VmmProcess, Error> {
        let jailed = jailed();
        if !jailed {
            tracing::warn!(
                "{}=1: the VMM runs WITHOUT its jail (host filesystem, root, no cgroup): for debugging only",
                jail::UNSAFE_NO_JAIL_ENV
            );
        }
        prepare_vm_dir(dir, jailed.then(|| jail::jail_id(&spec.id)))
            .map_err(|e| Error::Spawn("socket directory", e))?;
        vm_config(dir, spec).validate().map_err(Error::Config)?;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.console_log())
            .map_err(|e| Error::Spawn("console log", e))?;
        let console = high(console.into()).map_err(|e| Error::Spawn("console log", e))?;
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Error::Spawn("/dev/null", e))?;
        let null = high(null.into()).map_err(|e| Error::Spawn("/dev/null", e))?;
        let (report_r, report_w) = pipe().map_err(|e| Error::Spawn("report pipe", e))?;
        let (go_r, go_w) = pipe().map_err(|e| Error::Spawn("go pipe", e))?;

        let exe =
            super::vmm_binary().map_err(|e| Error::Spawn("binary", std::io::Error::other(e)))?;
        let cstr = |s: &[u8]| CString::new(s).map_err(|e| Error::Spawn("arguments", e.into()));
        let args = [
            cstr(exe.as_os_str().as_bytes())?,
            cstr(b"--sandbox")?,
            cstr(dir.path().as_os_str().as_bytes())?,
            cstr(b"--id")?,
            cstr(spec.id.as_bytes())?,
            cstr(VMM_MODE_ARG.as_bytes())?,
            cstr(monotonic_ns().to_string().as_bytes())?,
            cstr(std::process::id().to_string().as_bytes())?,
        ];
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let fds = [
            (null.as_raw_fd(), 0),
            (null.as_raw_fd(), 1),
            (console.as_raw_fd(), CONSOLE_FD),
            (report_w.as_raw_fd(), REPORT_FD),
            (go_r.as_raw_fd(), GO_FD),
        ];
        let child = move || -> isize {
            // Async-signal-safe calls only: the keeper's memory is a copy here, its locks may be held.
            // SAFETY: dup2, prctl, setsid, execv and _exit on valid descriptors and NUL-terminated strings that
            // live in this (copied) stack frame's owner until exec.
            unsafe {
                for (from, to) in fds {
                    if libc::dup2(from, to) < 0 {
                        libc::_exit(126);
                    }
                }
                // The VMM dies with its keeper (re-armed after the privileges drop, which clears it).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // No controlling terminal: the VMM must not reach the user's tty (TIOCSTI).
                libc::setsid();
                libc::execv(argv[0], argv.as_ptr());
                libc::_exit(127)
            }
        };
        let flags = if jailed {
            nix::sched::CloneFlags::CLONE_NEWPID
                | nix::sched::CloneFlags::CLONE_NEWNS
                | nix::sched::CloneFlags::CLONE_NEWNET
                | nix::sched::CloneFlags::CLONE_NEWIPC
                | nix::sched::CloneFlags::CLONE_NEWUTS
        } else {
            nix::sched::CloneFlags::empty()
        };
        let mut stack = vec![0u8; 256 * 1024];
        // SAFETY: the callback only calls async-signal-safe functions and then execs or exits; `stack` outlives the
        // call (the child execs on it before the parent frees it: the child has its own copy of memory).
        let pid =
            unsafe { nix::sched::clone(Box::new(child), &mut stack, flags, Some(libc::SIGCHLD)) }
                .map_err(|e| Error::Spawn("clone", e.into()))?
                .as_raw();
        drop((report_w, go_r, console, null));

        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let reader = shared.clone();
        let report = File::from(report_r);
        std::thread::Builder::new()
            .name("vmm-report".into())
            .spawn(move || read_reports(report, &reader))
            .map_err(|e| Error::Spawn("report reader", e))?;
        let mut process = VmmProcess {
            pid,
            id: spec.id.clone(),
            jail_root: jailed.then(|| dir.jail_root()),
            shared,
            killed: Default::default(),
            _go: File::from(go_w),
        };
        if jailed {
            let t = Instant::now();
            let limits =
                cgroup::Limits::for_vm(spec.mem_mib, spec.cpus.unwrap_or(f64::from(spec.vcpus)));
            if let Err(e) = cgroup::VmmCgroup::open(&spec.id).and_then(|c| c.enter(pid, &limits)) {
                process.kill();
                process.reap();
                return Err(e.into());
            }
            tracing::debug!(pid, "VMM cgroup set up in {:?}", t.elapsed());
        }
        if let Err(e) = process._go.write_all(b"g") {
            process.kill();
            process.reap();
            return Err(Error::Spawn("go pipe", e));
        }
        Ok(process)
    }

    /// The VMM's pid on the host.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the VM is built and the guest starts (or the VMM fails); returns the ready report.
    pub fn wait_ready(&self) -> Result<Report, Error> {
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = &s.ready {
                return Ok(r.clone());
            }
            if let Some(f) = &s.failed {
                return Err(Error::Failed(f.clone()));
            }
            if s.eof || s.ended.is_some() {
                return Err(Error::Vanished);
            }
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// How the VM ended, once it has (a VMM that died without reporting ended too).
    pub fn ended(&self) -> Option<String> {
        let s = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        match (&s.ended, &s.failed, s.eof) {
            (Some(e), _, _) => Some(e.exit.clone()),
            (None, Some(f), _) => Some(f.clone()),
            (None, None, true) => Some("the VMM process died".into()),
            _ => None,
        }
    }

    /// Waits up to `timeout` for the VMM to report its end or die; true when it has.
    pub fn wait_ended(&self, timeout: Option<Duration>) -> bool {
        let (lock, cv) = &*self.shared;
        let s = lock.lock().unwrap_or_else(|e| e.into_inner());
        let done = |s: &mut Shared| s.ended.is_some() || s.failed.is_some() || s.eof;
        match timeout {
            Some(t) => {
                let (s, _) = cv
                    .wait_timeout_while(s, t, |s| !done(s))
                    .unwrap_or_else(|e| e.into_inner());
                s.eof || s.ended.is_some() || s.failed.is_some()
            }
            None => {
                let _s = cv
                    .wait_while(s, |s| !done(s))
                    .unwrap_or_else(|e| e.into_inner());
                true
            }
        }
    }

    /// Stops the VM: SIGTERM (the VMM stops its vCPUs and reports), then SIGKILL if it lingers.
    pub fn stop(&self) {
        if self.ended().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, not yet reaped (only `reap` does, consuming self).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if !self.wait_ended(Some(STOP_GRACE)) {
            self.kill();
        }
    }

    /// SIGKILL.
    pub fn kill(&self) {
        self.killed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Waits for the process to exit, removes its cgroup and jail mountpoint, and returns its end report and
    /// the signal that killed it, unless the keeper sent that (SIGSYS: its seccomp filter).
    pub fn reap(self) -> Reaped {
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
        if let Some(root) = &self.jail_root {
            cgroup::remove(&self.id);
            let _ = std::fs::remove_dir(root);
        }
        self.wait_ended(Some(Duration::from_secs(1)));
        let s = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        let signal = match status {
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _))
                if !self.killed.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Some(sig as i32)
            }
            _ => None,
        };
        Reaped {
            ended: s.ended.clone(),
            signal,
        }
    }
}

fn read_reports(from: File, shared: &(Mutex<Shared>, Condvar)) {
    let mut lines = BufReader::new(from).lines();
    loop {
        let line = lines.next();
        let (lock, cv) = shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        match line {
            Some(Ok(l)) => match serde_json::from_str::<Report>(&l) {
                Ok(r @ Report::Ready { .. }) => s.ready = Some(r),
                Ok(Report::Ended(e)) => s.ended = Some(e),
                Ok(Report::Failed(f)) => s.failed = Some(f),
                Err(e) => tracing::warn!("unreadable report from the VMM: {e}"),
            },
            _ => {
                s.eof = true;
                cv.notify_all();
                return;
            }
        }
        cv.notify_all();
    }
}

/// Makes the sandbox's socket directory (`<sandbox>/vm`, mode 0700), owned by the jail's uid when there is one so
/// the unprivileged VMM can still reach host listeners for guest-initiated connections there.
fn prepare_vm_dir(dir: &SandboxDir, owner: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let vm = dir.vm_dir();
    match std::fs::DirBuilder::new().mode(0o700).create(&vm) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if let Some(id) = owner {
        std::os::unix::fs::chown(&vm, Some(id), Some(id))?;
    }
    Ok(())
}

/// The VM's configuration, with the host's paths.
pub fn vm_config(dir: &SandboxDir, spec: &LaunchSpec) -> vmm::VmConfig {
    vmm::VmConfig {
        payload: vmm::Payload::Kernel {
            kernel: spec.kernel.clone(),
            initrd: Some(spec.initrd.clone()),
            cmdline: spec.cmdline.clone(),
        },
        mem_mib: spec.mem_mib,
        vcpus: spec.vcpus,
        // The rootfs first: the guest names disks in this order (vda, vdb), as the command line expects.
        block: std::iter::once(vmm::config::BlockConfig {
            path: spec.rootfs.clone(),
            read_only: true,
            id: "rootfs".into(),
        })
        .chain(spec.scratch.iter().map(|path| vmm::config::BlockConfig {
            path: path.clone(),
            read_only: false,
            id: "scratch".into(),
        }))
        .collect(),
        vsock: Some(vmm::config::VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.vsock_path(),
        }),
        net: spec
            .tap
            .as_ref()
            .map(|(name, netns)| vmm::config::NetConfig {
                tap_name: name.clone(),
                netns: netns.clone(),
                mac: spec.guest_mac.unwrap_or_else(|| guest_mac(&spec.id)),
            }),
        rng: true,
        // Rate limits are the VMM's (vmm::rate_limiter); mvrun run does not set them yet.
        block_rate: Default::default(),
        net_rate: Default::default(),
        // A level the spec cannot name leaves the filters on.
        seccomp: vmm::seccomp::SeccompLevel::try_from(spec.vmm_seccomp_level).unwrap_or_default(),
        block_slots: (spec.block_slots > 0).then(|| vmm::config::BlockSlotsConfig {
            count: spec.block_slots,
            uds_path: dir.slots_path(),
        }),
        emulated_kvm: spec.emulated_kvm,
    }
}

/// A locally administered unicast MAC made from the sandbox id, stable for the sandbox's life.
fn guest_mac(id: &str) -> [u8; 6] {
    let bytes = hex::decode(id.get(..10).unwrap_or_default()).unwrap_or_default();
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (m, b) in mac[1..].iter_mut().zip(bytes) {
        *m = b;
    }
    mac
}

/// The child's side: `mvrun-vmm --sandbox DIR --id ID --vmm LAUNCHED_NS KEEPER_PID`. Returns the exit code.
pub fn child_main(dir: &SandboxDir, launched_ns: u64, keeper_pid: u32) -> u8 {
    // SAFETY: these descriptors were set up for this process by its keeper and nothing else owns them.
    let (console, mut report, go) = unsafe {
        (
            File::from_raw_fd(CONSOLE_FD),
            File::from_raw_fd(REPORT_FD),
            File::from_raw_fd(GO_FD),
        )
    };
    let since_launch = Duration::from_nanos(monotonic_ns().saturating_sub(launched_ns));
    let start = Instant::now()
        .checked_sub(since_launch)
        .unwrap_or_else(Instant::now);
    let mut send = |r: &Report| {
        let mut line = serde_json::to_vec(r).unwrap_or_default();
        line.push(b'\n');
        let _ = report.write_all(&line);
    };
    match child_run(dir, start, console, go, keeper_pid, &mut send) {
        Ok(ended) => {
            send(&Report::Ended(ended));
            // Straight out: this thread is under the rest filter, which allows exiting, not every cleanup.
            std::process::exit(0)
        }
        Err(msg) => {
            send(&Report::Failed(msg));
            super::EXIT_MVRUN_FAILED
        }
    }
}

fn child_run(
    dir: &SandboxDir,
    start: Instant,
    console: File,
    mut go: File,
    keeper_pid: u32,
    send: &mut dyn FnMut(&Report),
) -> Result<Ended, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let bytes = std::fs::read(dir.spec_path()).map_err(|e| err(&e))?;
    let spec: LaunchSpec = serde_json::from_slice(&bytes).map_err(|e| err(&e))?;
    let mut config = vm_config(dir, &spec);
    let jailed = jailed();
    let plan = if jailed {
        let scratch_len = spec
            .scratch
            .as_ref()
            .and_then(|s| std::fs::metadata(s).ok())
            .map(|m| m.len());
        let plan = Plan::for_spec(&spec, dir.path(), scratch_len);
        // The tap's namespace: the one named, or the keeper's own (where a tap without one lives).
        let netns = spec.tap.as_ref().map(|(_, ns)| {
            ns.clone()
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{keeper_pid}/ns/net")))
        });
        jail::enter(&plan, netns.as_deref()).map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        plan.jailed_paths(&mut config);
        Some(plan)
    } else {
        None
    };
    let jail_done = start.elapsed();
    // The keeper lets go once the process is in its cgroup (set up while the jail was being built, which allocates
    // next to nothing); guest memory comes after. EOF means it gave up (or died).
    let mut byte = [0u8; 1];
    if go.read(&mut byte).map_err(|e| err(&e))? == 0 {
        return Err("the keeper went away before the VMM started".into());
    }
    let go_done = start.elapsed();
    let vmm = vmm::build_vm(&config, Box::new(console), start)
        .map_err(|e| format!("failed to start the microVM: {:#}", anyhow::Error::new(e)))?;
    if let Some(plan) = &plan {
        jail::leave_netns();
        jail::drop_privileges(plan).map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        // The drop cleared the parent-death signal: arm it again, then make sure the keeper did not die between.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if keeper_gone(&go) {
            return Err("the keeper went away".into());
        }
    }
    let setup = start.elapsed();
    // The build's first phase (launch to build) is the jail and the wait for the cgroup here.
    let mut phases = vec![
        ("launch, exec, jail".to_string(), jail_done),
        (
            "wait for the keeper's cgroup".to_string(),
            go_done.saturating_sub(jail_done),
        ),
    ];
    let mut built = go_done;
    for (name, took) in vmm.phases().iter().skip(1) {
        phases.push((name.to_string(), *took));
        built += *took;
    }
    phases.push((
        "privileges dropped, signal thread".to_string(),
        setup.saturating_sub(built),
    ));
    let exit = vmm.exit_handle();
    let signals_rest = vmm.rest_filter();
    // SIGTERM from the keeper stops the VM in order (the outcome is still reported); it is blocked in every
    // thread (inherited from the keeper, kept across exec) and taken here, under the VMM's "rest" filter.
    std::thread::Builder::new()
        .name("vmm-signals".into())
        .spawn(move || {
            confine_or_die(signals_rest.as_deref());
            // SAFETY: a local signal set, and sigwait on it with a valid out pointer.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                let mut sig = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    exit.signal(vmm::VmExit::Stopped);
                }
            }
        })
        .map_err(|e| err(&e))?;
    send(&Report::Ready {
        jail: plan.as_ref().map(|_| jail_done),
        setup,
        phases,
        guest_ranges: vmm::guest_ranges(vmm.guest_memory()),
    });
    // The VM runs from this thread, which confines itself under the VMM's "rest" filter (docs/vmm-seccomp.md)
    // once the VM's threads exist, then only waits, reports and exits. No runner thread of its own: one thread
    // start less before the first KVM_RUN.
    let outcome = vmm.run_confined(None);
    Ok(Ended {
        exit: outcome.exit.to_string(),
        clean: outcome.exit.is_clean(),
        first_kvm_run: outcome.timings.first_kvm_run,
        boot_timer: outcome.timings.boot_timer,
    })
}

/// Puts the calling thread under the VMM's "rest" filter (nothing at level 0). A thread that cannot be confined
/// ends the process: the VM's own threads are filtered already, and none may run without.
fn confine_or_die(rest: Option<&vmm::seccomp::BpfProgram>) {
    if let Some(filter) = rest {
        if let Err(e) = vmm::seccomp::install(vmm::seccomp::ThreadKind::Rest, filter) {
            eprintln!("mvrun-vmm: failed to install the rest seccomp filter: {e}");
            // SAFETY: kill(2) of this process with SIGKILL, ending it; nothing is left half-done that matters.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

fn keeper_gone(go: &File) -> bool {
    let mut pfd = libc::pollfd {
        fd: go.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
}
