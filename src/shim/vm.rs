//! One microVM under the shim: the sandbox library's `mvrun-vmm` process in `External` mode (it only runs the VM;
//! the shim drives guest-init's agent itself), its runtime directory, and the watcher that reports the VMM's end.

use crate::sandbox::launch_spec::{self, LaunchSpec, StdioMode};
use crate::sandbox::state::{SandboxDir, StateDir};
use agent_protocol::{hybrid, Client, StreamKind, WorkloadSpec, CONTROL_PORT};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a stdio port may lag behind the control port (guest-init binds them one after another).
const STREAM_PORT_GRACE: Duration = Duration::from_secs(30);
/// How long the guest may take to reset after `Shutdown` before its VMM is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Errors running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox library failed (kernel, initramfs, VMM binary).
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
    /// The runtime directory failed.
    #[error(transparent)]
    State(#[from] crate::sandbox::state::Error),
    /// The VMM could not be started.
    #[error("failed to start the VMM process")]
    Spawn(#[source] std::io::Error),
    /// The VM ended before its agent answered.
    #[error("the microVM ended before its agent answered ({status}): {console}")]
    Ended {
        /// The VMM's exit.
        status: String,
        /// The end of the console log.
        console: String,
    },
    /// The agent did not answer in time.
    #[error("the guest's agent did not answer within {0} s")]
    BootTimeout(u64),
    /// The agent cannot be reached.
    #[error("failed to reach the guest agent")]
    Connect(#[source] std::io::Error),
    /// The agent failed a request.
    #[error(transparent)]
    Agent(#[from] agent_protocol::client::Error),
}

/// How the VMM process ended, as a wait status turns into an exit code the runc shim would report
/// (the code, or 128 + the signal that killed it).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// The VM's NIC: a tap in a network namespace (the pod's, see [`super::network`]) and the guest's MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The tap's name in `netns`.
    pub tap: String,
    /// The namespace file the VMM opens the tap in.
    pub netns: PathBuf,
    /// The guest NIC's MAC.
    pub mac: [u8; 6],
}

/// A running microVM.
pub struct Vm {
    dir: SandboxDir,
    states: StateDir,
    pid: u32,
    ended: Arc<(Mutex<Option<i32>>, Condvar)>,
}

impl Vm {
    /// Boots a VM for `workload` (its limits size the VM) on `rootfs`, with `nic` when given and `block_slots` empty
    /// disks for a pod's later containers, and waits until its agent answers. `on_exit` runs once, with the VMM's
    /// exit code, when the VMM process ends for whatever reason.
    pub fn boot(
        runtime_root: PathBuf,
        label: &str,
        rootfs: PathBuf,
        workload: &WorkloadSpec,
        nic: Option<&Nic>,
        block_slots: u8,
        on_exit: Box<dyn FnOnce(i32) + Send>,
    ) -> Result<Vm, Error> {
        let (kernel, initrd) = crate::sandbox::boot_files(None)?;
        let boot_timeout_secs = crate::sandbox::boot_timeout()?;
        let states = StateDir::open(runtime_root)?;
        let (dir, record) = states.create(None, label, &workload.process.args, false)?;
        let spec = LaunchSpec {
            id: record.id.clone(),
            kernel,
            initrd,
            cmdline: launch_spec::guest_cmdline(crate::sandbox::rootfs_fstype(&rootfs), false),
            mem_mib: super::spec::guest_mem_mib(workload),
            vcpus: super::spec::vcpus(workload),
            cpus: None,
            rootfs,
            // The writable layer is guest RAM (tmpfs); a scratch disk per task is future work.
            scratch: None,
            tap: nic.map(|n| (n.tap.clone(), Some(n.netns.clone()))),
            guest_mac: nic.map(|n| n.mac),
            workload: workload.clone(),
            stdio: StdioMode::External,
            tty: false,
            boot_timeout_secs,
            timings: false,
            cli_phases: Vec::new(),
            block_slots,
            vmm_seccomp_level: vmm::seccomp::SeccompLevel::default().as_u8(),
            emulated_kvm: crate::kernel::Variant::for_this_host()
                == crate::kernel::Variant::Emulated,
        };
        let json = serde_json::to_vec_pretty(&spec).expect("launch specs always serialize");
        if let Err(e) = crate::sandbox::state::write_atomic(&dir.spec_path(), &json) {
            let _ = states.remove(&dir);
            return Err(e.into());
        }
        let vm = match Self::spawn(&dir, &record.id, on_exit) {
            Ok((pid, ended)) => Vm {
                dir,
                states,
                pid,
                ended,
            },
            Err(e) => {
                let _ = states.remove(&dir);
                return Err(e);
            }
        };
        if let Err(e) = vm.wait_agent(Duration::from_secs(spec.boot_timeout_secs)) {
            vm.kill();
            vm.wait_ended(SHUTDOWN_GRACE);
            vm.remove();
            return Err(e);
        }
        Ok(vm)
    }

    /// Starts the VMM from a thread that lives exactly as long as the VMM: `PR_SET_PDEATHSIG` fires when the
    /// forking *thread* exits, so a dead shim takes its VMs with it, and the same thread reaps the VMM.
    #[allow(clippy::type_complexity)]
    fn spawn(
        dir: &SandboxDir,
        id: &str,
        on_exit: Box<dyn FnOnce(i32) + Send>,
    ) -> Result<(u32, Arc<(Mutex<Option<i32>>, Condvar)>), Error> {
        let bin = crate::sandbox::vmm_binary()?;
        let mut cmd = Command::new(bin);
        cmd.arg("--sandbox").arg(dir.path()).arg("--id").arg(id);
        let log = std::fs::File::create(dir.supervisor_log()).map_err(Error::Spawn)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let ended: Arc<(Mutex<Option<i32>>, Condvar)> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let ended2 = ended.clone();
        std::thread::Builder::new()
            .name("vmm-watch".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(child.id()));
                let code = child.wait().map(exit_code).unwrap_or(255);
                let (lock, cv) = &*ended2;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
                cv.notify_all();
                on_exit(code);
            })
            .map_err(Error::Spawn)?;
        let pid = rx
            .recv()
            .map_err(|_| Error::Spawn(std::io::Error::other("the VMM watcher died")))?
            .map_err(Error::Spawn)?;
        Ok((pid, ended))
    }

    fn wait_agent(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code() {
                return Err(Error::Ended {
                    status: format!("VMM exit code {code}"),
                    console: self.console_tail(),
                });
            }
            if hybrid::connect(&self.dir.vsock_path(), CONTROL_PORT).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::BootTimeout(timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the VMM's own log (why it failed) and of the guest console, on one line for containerd.
    fn console_tail(&self) -> String {
        let tail = |path: PathBuf, n: usize| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(n)..].join(" | ")
        };
        format!(
            "{}; console: {}",
            tail(self.dir.supervisor_log(), 3),
            tail(self.dir.console_log(), 8)
        )
    }

    /// The VMM's pid on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The VMM's exit code once it has ended.
    pub fn exit_code(&self) -> Option<i32> {
        *self.ended.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new control connection to the agent.
    pub fn control(&self) -> Result<Client<UnixStream>, Error> {
        hybrid::connect(&self.dir.vsock_path(), CONTROL_PORT)
            .map(Client::new)
            .map_err(Error::Connect)
    }

    /// A stdio stream of process `id`, bound to it.
    pub fn attach(&self, kind: StreamKind, id: u32) -> Result<UnixStream, Error> {
        let deadline = Instant::now() + STREAM_PORT_GRACE;
        let mut s = loop {
            match hybrid::connect(&self.dir.vsock_path(), kind.port()) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(Error::Connect(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        agent_protocol::client::attach_stream(&mut s, id)?;
        Ok(s)
    }

    /// Kills the VMM (the VM ends with it).
    pub fn kill(&self) {
        if self.exit_code().is_none() {
            // SAFETY: kill(2) on our own child, which the watcher thread has not reaped yet (no exit recorded),
            // so the pid cannot have been reused.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
    }

    /// Waits up to `timeout` for the VMM to end; true when it has.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.ended;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    }

    /// Ends the VM: asks the guest to shut down, kills the VMM if it lingers, and waits for it.
    pub fn shutdown(&self) {
        if self.exit_code().is_some() {
            return;
        }
        if let Ok(mut c) = self.control() {
            let _ = c.shutdown();
        }
        if !self.wait_ended(SHUTDOWN_GRACE) {
            self.kill();
            self.wait_ended(SHUTDOWN_GRACE);
        }
    }

    /// Removes the VM's runtime directory (sockets, console log, records). Call after it has ended.
    pub fn remove(&self) {
        let _ = self.states.remove(&self.dir);
    }

    /// The runtime directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The VMM's block-slot socket (a pod's VM).
    pub fn slots_path(&self) -> PathBuf {
        self.dir.slots_path()
    }
}
