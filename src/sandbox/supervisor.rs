//! The sandbox's supervisor (`mvrun-vmm`, the keeper): starts the VMM as its jailed child process
//! ([`super::vmm_process`]) and drives the guest agent from outside: it starts the workload, carries its stdio,
//! forwards signals and window sizes, collects the exit code, then shuts the guest down and reaps the VMM. It owns
//! the sandbox's runtime directory while it runs and records how it ended.

use super::launch_spec::{LaunchSpec, StdioMode};
use super::state::{self, SandboxDir, Status};
use super::terminal;
use super::vmm_process::{self, VmmProcess};
use agent_protocol::{hybrid, Client, StreamKind, CONTROL_PORT, WORKLOAD};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the streams may drain after the workload exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest may take to reset after `Shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the supervisor; every one ends the sandbox with exit code 125.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec or record could not be read or written.
    #[error(transparent)]
    State(#[from] state::Error),
    /// The spec is not valid JSON.
    #[error("failed to read the launch spec")]
    Spec(#[source] serde_json::Error),
    /// A file could not be opened.
    #[error("failed to open {0}")]
    Open(std::path::PathBuf, #[source] std::io::Error),
    /// The VMM process could not be started, or failed before the guest ran.
    #[error(transparent)]
    Vmm(vmm_process::Error),
    /// The guest ended before its agent answered.
    #[error("the guest ended before its agent started ({exit}); last console lines:\n{console}")]
    GuestEnded {
        /// How the VM ended.
        exit: String,
        /// Tail of the console log.
        console: String,
    },
    /// The agent did not come up in time.
    #[error("the guest's agent did not answer within {secs} s; console log: {log}")]
    BootTimeout {
        /// The timeout.
        secs: u64,
        /// Console log path.
        log: String,
    },
    /// A stdio stream could not be attached.
    #[error("failed to connect the workload's {0:?} stream")]
    Stream(StreamKind, #[source] std::io::Error),
    /// The agent refused or failed.
    #[error("the guest agent failed")]
    Agent(#[from] agent_protocol::client::Error),
}

/// Runs the sandbox in `dir` to its end and returns the process exit code.
pub fn supervise(dir: &SandboxDir) -> u8 {
    let started = Instant::now();
    let spec = match std::fs::read(dir.spec_path())
        .map_err(|e| Error::Open(dir.spec_path(), e))
        .and_then(|b| serde_json::from_slice::<LaunchSpec>(&b).map_err(Error::Spec))
    {
        Ok(s) => s,
        Err(e) => return finish(dir, Err(e)),
    };
    let _ = dir.update(|r| {
        r.status = Status::Running;
        r.pid = Some(std::process::id());
    });
    let mut phases = spec.cli_phases.clone();
    let result = run(dir, &spec, started, &mut phases);
    if spec.timings {
        print_phases(&phases);
    }
    finish(dir, result)
}

fn finish(dir: &SandboxDir, result: Result<i32, Error>) -> u8 {
    let (code, reason) = match result {
        Ok(code) => (code, None),
        Err(e) => {
            let msg = format!("{:#}", anyhow::Error::new(e));
            eprintln!("mvrun: error: {msg}");
            (i32::from(super::EXIT_MVRUN_FAILED), Some(msg))
        }
    };
    let code = u8::try_from(code).unwrap_or(super::EXIT_MVRUN_FAILED);
    state::cleanup_runtime_files(dir);
    let record = dir.update(|r| {
        r.status = Status::Exited;
        r.pid = None;
        r.exit_code = Some(i32::from(code));
        r.exit_reason = reason;
    });
    if record.is_ok_and(|r| r.auto_remove) {
        let _ = std::fs::remove_dir_all(dir.path());
    }
    code
}

fn run(
    dir: &SandboxDir,
    spec: &LaunchSpec,
    started: Instant,
    phases: &mut Vec<(String, Duration)>,
) -> Result<i32, Error> {
    // Blocked before the VMM process starts: it inherits the mask and takes SIGTERM itself.
    let signals = block_signals();
    let vmm = VmmProcess::spawn(dir, spec).map_err(Error::Vmm)?;
    match vmm.wait_ready() {
        Ok(vmm_process::Report::Ready {
            jail,
            phases: vmm_phases,
            guest_ranges,
            ..
        }) => {
            if spec.timings {
                print_vmm_memory(vmm.pid(), &guest_ranges);
            }
            if let Some(jail) = jail {
                phases.push(("VMM launch to jail in place".into(), jail));
            }
            phases.extend(
                vmm_phases
                    .into_iter()
                    .map(|(name, took)| (format!("  VMM: {name}"), took)),
            );
        }
        Ok(_) => {}
        Err(e) => {
            vmm.kill();
            vmm.reap();
            return Err(match e {
                vmm_process::Error::Failed(msg) => Error::Vmm(vmm_process::Error::Failed(format!(
                    "{msg}{}",
                    tail_suffix(dir)
                ))),
                other => Error::Vmm(other),
            });
        }
    }
    phases.push(("VMM setup".into(), started.elapsed()));

    if spec.stdio == StdioMode::External {
        // Someone else talks to the agent; the VM runs until the guest resets or this process is killed.
        vmm.wait_ended(None);
        let reaped = vmm.reap();
        return match (reaped.ended, reaped.signal) {
            (Some(e), _) if e.clean => Ok(0),
            (Some(e), _) => Err(Error::GuestEnded {
                exit: e.exit,
                console: console_tail(dir),
            }),
            (None, Some(sig)) => Err(Error::Vmm(vmm_process::Error::Failed(
                super::vmm_killed_message(sig),
            ))),
            (None, None) => Err(Error::GuestEnded {
                exit: "the VMM process died".into(),
                console: console_tail(dir),
            }),
        };
    }
    let session = session(dir, spec, &vmm, signals, phases);

    // Whatever happened, end the guest: ask nicely, then stop the VM.
    let teardown = Instant::now();
    if session.is_ok() {
        if let Ok(mut c) = connect_control(dir) {
            let _ = c.shutdown();
        }
        vmm.wait_ended(Some(SHUTDOWN_TIMEOUT));
    }
    vmm.stop();
    let reaped = vmm.reap();
    if let (Some(_), Some(sig)) = (&reaped.ended, reaped.signal) {
        tracing::warn!("the VMM process was killed by signal {sig} after it reported the VM's end");
    }
    // A VMM killed by a signal of its own (its seccomp filter's SIGSYS) says more than what the session saw.
    let session = match reaped.killed_reason() {
        Some(why) if reaped.ended.is_none() => Err(Error::Vmm(vmm_process::Error::Failed(why))),
        _ => session,
    };
    let outcome = reaped.ended;
    phases.push(("teardown".into(), teardown.elapsed()));
    // Shown where they happened: after the VMM setup, before the agent answered.
    let at = phases
        .iter()
        .position(|(n, _)| n == "guest boot to agent")
        .unwrap_or(phases.len());
    if let Some(boot) = outcome.as_ref().and_then(|o| o.boot_timer) {
        phases.insert(at, ("kernel boot to init (boot timer)".into(), boot));
    }
    if let Some(first) = outcome.as_ref().and_then(|o| o.first_kvm_run) {
        phases.insert(at, ("VMM launch to first KVM_RUN".into(), first));
    }
    session
}

fn tail_suffix(dir: &SandboxDir) -> String {
    let tail = console_tail(dir);
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last console lines:\n{tail}")
    }
}

fn connect_control(dir: &SandboxDir) -> std::io::Result<Client<UnixStream>> {
    hybrid::connect(&dir.vsock_path(), CONTROL_PORT).map(Client::new)
}

fn console_tail(dir: &SandboxDir) -> String {
    let text = std::fs::read_to_string(dir.console_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits for guest-init's control port, then runs the workload to its end.
fn session(
    dir: &SandboxDir,
    spec: &LaunchSpec,
    vmm: &VmmProcess,
    signals: libc::sigset_t,
    phases: &mut Vec<(String, Duration)>,
) -> Result<i32, Error> {
    let boot = Instant::now();
    let deadline = boot + Duration::from_secs(spec.boot_timeout_secs);
    let mut control = loop {
        if let Some(e) = vmm.ended() {
            return Err(Error::GuestEnded {
                exit: e,
                console: console_tail(dir),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::BootTimeout {
                secs: spec.boot_timeout_secs,
                log: dir.console_log().display().to_string(),
            });
        }
        match connect_control(dir) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    phases.push(("guest boot to agent".into(), boot.elapsed()));

    let create = Instant::now();
    let stdout = attach(dir, StreamKind::Stdout)?;
    // With a terminal, stderr merges into stdout in the guest, as with Docker's -t.
    let stderr = if spec.tty {
        None
    } else {
        Some(attach(dir, StreamKind::Stderr)?)
    };
    let stdin = if spec.workload.process.stdin {
        Some(attach(dir, StreamKind::Stdin)?)
    } else {
        None
    };
    let mut workload = spec.workload.clone();
    if spec.tty {
        workload.process.tty = true;
        workload.process.window = terminal::window_size();
    }
    control.create_and_start(&workload)?;
    phases.push(("container create".into(), create.elapsed()));

    let run = Instant::now();
    let (out_sink, err_sink): (Box<dyn Write + Send>, Box<dyn Write + Send>) = match spec.stdio {
        // (External never gets here: `run` returns before the session.)
        StdioMode::Inherit | StdioMode::External => {
            (Box::new(std::io::stdout()), Box::new(std::io::stderr()))
        }
        StdioMode::Log => (
            Box::new(open_log(&dir.path().join("stdout.log"))?),
            Box::new(open_log(&dir.path().join("stderr.log"))?),
        ),
    };
    let mut pumps = vec![pump(stdout, out_sink)];
    pumps.extend(stderr.map(|s| pump(s, err_sink)));
    if let Some(s) = stdin {
        std::thread::spawn(move || forward_stdin(s));
    }
    spawn_signal_forwarder(dir.clone(), signals, spec.tty);

    let exited = control.wait(WORKLOAD)?;
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    for p in pumps {
        while !p.is_finished() && Instant::now() < drain_deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if p.is_finished() {
            let _ = p.join();
        }
    }
    phases.push(("workload run".into(), run.elapsed()));
    Ok(exited.code)
}

fn open_log(path: &std::path::Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Open(path.to_path_buf(), e))
}

/// How long a stdio port may lag behind the control port: guest-init binds its listeners one after another, and
/// on an emulated host each takes a while.
const STREAM_PORT_GRACE: Duration = Duration::from_secs(30);

fn attach(dir: &SandboxDir, kind: StreamKind) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + STREAM_PORT_GRACE;
    let mut s = loop {
        match hybrid::connect(&dir.vsock_path(), kind.port()) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(Error::Stream(kind, e)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    agent_protocol::client::attach_stream(&mut s, WORKLOAD)?;
    Ok(s)
}

/// Copies a guest stream to a sink until EOF, flushing each chunk so output appears as it is produced.
fn pump(mut from: UnixStream, mut to: Box<dyn Write + Send>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Copies our stdin to the workload, then closes the stream's write half so the workload reads EOF.
fn forward_stdin(mut to: UnixStream) {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Blocks the signals the supervisor forwards, in this thread and every thread it starts; one thread takes them
/// with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set and pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGWINCH,
        ] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn spawn_signal_forwarder(dir: SandboxDir, set: libc::sigset_t, tty: bool) {
    std::thread::spawn(move || {
        // The size at the start travels in the spec; from here on SIGWINCH brings each change.
        let mut client: Option<Client<UnixStream>> = None;
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on a valid, initialized signal set; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if sig == libc::SIGWINCH {
                if tty {
                    send_window_size(&dir, &mut client);
                }
                continue;
            }
            if client.is_none() {
                client = connect_control(&dir).ok();
            }
            if let Some(c) = client.as_mut() {
                if let Err(e) = c.signal(WORKLOAD, sig) {
                    tracing::warn!("failed to forward signal {sig}: {e}");
                    client = None;
                }
            }
        }
    });
}

fn send_window_size(dir: &SandboxDir, client: &mut Option<Client<UnixStream>>) {
    let Some(ws) = terminal::window_size() else {
        return;
    };
    if client.is_none() {
        *client = connect_control(dir).ok();
    }
    if let Some(c) = client.as_mut() {
        if let Err(e) = c.resize(WORKLOAD, ws.rows, ws.cols) {
            tracing::warn!("failed to resize the workload's terminal: {e}");
            *client = None;
        }
    }
}

/// The VMM process's own memory as the guest starts (read from outside: the jailed VMM has no /proc), guest
/// memory excluded.
fn print_vmm_memory(pid: i32, guest_ranges: &[(u64, u64)]) {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return;
    };
    let m = vmm::memory_outside(&smaps, guest_ranges);
    eprintln!("mvrun: VMM RSS excluding guest memory: {} KiB", m.rss_kib);
    eprintln!("mvrun: VMM PSS excluding guest memory: {} KiB", m.pss_kib);
    eprintln!(
        "mvrun: VMM private dirty memory excluding guest memory: {} KiB",
        m.private_dirty_kib
    );
}

fn print_phases(phases: &[(String, Duration)]) {
    for (name, d) in phases {
        eprintln!("mvrun: {name:<34} {:>10.1} ms", d.as_secs_f64() * 1000.0);
    }
}
