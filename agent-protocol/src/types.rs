//! The messages: requests (host -> guest), replies (guest -> host) and the workload spec they carry.

use serde::{Deserialize, Serialize};

/// Which standard stream a stdio connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Host -> process.
    Stdin,
    /// Process -> host.
    Stdout,
    /// Process -> host.
    Stderr,
}

impl StreamKind {
    /// The vsock port this stream kind is served on.
    pub fn port(self) -> u32 {
        match self {
            StreamKind::Stdin => crate::STDIN_PORT,
            StreamKind::Stdout => crate::STDOUT_PORT,
            StreamKind::Stderr => crate::STDERR_PORT,
        }
    }
}

/// The seccomp policy of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "profile")]
pub enum SeccompPolicy {
    /// Docker's default profile (embedded in guest-init).
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A Docker-format JSON profile, given as its text.
    Profile(String),
}

/// The container's network, when the VM has a network device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkConfig {
    /// Guest interface to move into the container (default: the first non-loopback one, usually eth0).
    pub interface: Option<String>,
    /// Address with prefix length, e.g. `10.0.0.2/24`.
    pub address: Option<String>,
    /// Default gateway.
    pub gateway: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
    /// DNS servers for /etc/resolv.conf.
    pub dns: Vec<String>,
}

/// One process to run: the workload itself or an exec'd process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's PATH.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` (PATH gets Docker's default when absent).
    pub env: Vec<String>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// `uid[:gid]` or a name from the image's /etc/passwd (default root).
    pub user: Option<String>,
    /// Whether a stdin stream is attached (otherwise stdin is /dev/null).
    pub stdin: bool,
    /// Run the process on a pseudo-terminal, as `docker run -t`: its stdin, stdout and stderr are the terminal,
    /// so its output (stdout and stderr merged, as Docker does) travels on the stdout stream, input on the stdin
    /// stream goes through the terminal's line discipline, and `Resize` applies.
    pub tty: bool,
    /// The terminal's size from the start (with `tty`); absent leaves it 0x0, as Docker does without a terminal
    /// on the client.
    pub window: Option<WindowSize>,
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl WindowSize {
    /// The size of the terminal on this process's stdout, else its stdin (Docker measures the output stream);
    /// `None` when neither is a terminal. The host CLI and guest-init's host mode both ask this.
    pub fn of_stdio() -> Option<Self> {
        [libc::STDOUT_FILENO, libc::STDIN_FILENO]
            .into_iter()
            .find_map(|fd| {
                let mut ws = libc::winsize {
                    ws_row: 0,
                    ws_col: 0,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCGWINSZ writes a winsize into the valid struct we pass; it fails on a non-terminal.
                let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
                (rc == 0).then_some(WindowSize {
                    rows: ws.ws_row,
                    cols: ws.ws_col,
                })
            })
    }
}

/// The workload: everything `CreateAndStart` needs. Fields left out take the hardened defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadSpec {
    /// The main process.
    pub process: ProcessSpec,
    /// Hostname (default `mvrun`).
    pub hostname: Option<String>,
    /// Capabilities to add to Docker's default set (`CAP_` prefix optional, `ALL` allowed).
    pub cap_add: Vec<String>,
    /// Capabilities to drop (`ALL` allowed).
    pub cap_drop: Vec<String>,
    /// Seccomp policy.
    pub seccomp: SeccompPolicy,
    /// Set no_new_privs (default true; stricter than Docker).
    pub no_new_privileges: bool,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// tmpfs mounts, `PATH[:OPTIONS]` as `docker run --tmpfs`.
    pub tmpfs: Vec<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in CPUs (e.g. 1.5).
    pub cpus: Option<f64>,
    /// Pids limit (guest-init applies its default when absent).
    pub pids_limit: Option<i64>,
    /// Network, when the VM has a network device.
    pub network: Option<NetworkConfig>,
    /// Which container of a VM that holds several (a pod) this is; absent: the VM's one container, on the boot
    /// rootfs, as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerPlacement>,
}

/// Where a container of a multi-container VM (a pod) lives: its id, its init's process id, its root filesystem
/// and the namespaces it shares with another container of the VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerPlacement {
    /// The container's id in the guest (`[A-Za-z0-9_.-]`, 1 to 128 characters), unique in the VM.
    pub id: String,
    /// The protocol process id of its init: [`crate::WORKLOAD`] only for the VM's first container, else one the
    /// host chose (non-zero, unique in the VM, like an exec id); its stdio streams attach with it.
    pub process: u32,
    /// A block device holding the container's read-only image; absent: the VM's boot rootfs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootfsDevice>,
    /// Namespaces to join instead of making new ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinNamespaces>,
}

/// A read-only image on one of the VM's block devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RootfsDevice {
    /// The guest's device node, `/dev/vdX`.
    pub device: String,
    /// Its filesystem type (default `erofs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
}

/// A namespace one container of a VM may share with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// Network (interfaces, addresses, ports).
    Network,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Hostname.
    Uts,
    /// Process ids (only when the pod shares them).
    Pid,
}

/// Join `namespaces` of the running container `container` (a pod's sandbox container, as the host paths
/// `/proc/PID/ns/*` of the pod's OCI specs ask).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinNamespaces {
    /// The container whose namespaces are joined.
    pub container: String,
    /// Which.
    pub namespaces: Vec<Namespace>,
}

/// Names a container of the VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Its id.
    pub id: String,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            process: ProcessSpec::default(),
            hostname: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: SeccompPolicy::Default,
            no_new_privileges: true,
            read_only: false,
            tmpfs: Vec::new(),
            memory_bytes: None,
            cpus: None,
            pids_limit: None,
            network: None,
            container: None,
        }
    }
}

/// Requests, host -> guest. Every request gets exactly one reply, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Create the container and start its workload (process id [`crate::WORKLOAD`], or the one its `container`
    /// placement names). Reply: `Started`.
    CreateAndStart(Box<WorkloadSpec>),
    /// Start another process in a running container. Reply: `Started`.
    Exec(Exec),
    /// Send a signal to a process. Reply: `Ok`.
    Signal(Signal),
    /// Resize a process's terminal (one started with `tty`). Reply: `Ok`, or `Error` when it has none.
    Resize(Resize),
    /// Close a process's stdin (it reads EOF). Reply: `Ok`.
    CloseStdin(ProcessRef),
    /// Wait for a process to end; blocks this control connection (use another to signal meanwhile). Reply: `Exited`.
    Wait(ProcessRef),
    /// Kill everything and end the VM. Reply: `Ok`, then the guest reboots (the VMM stops).
    Shutdown,
    /// First frame on a stdio connection: binds it to a process. Reply: `Ok`, then raw bytes.
    AttachStream(ProcessRef),
    /// The cgroup figures of the container that process `id` belongs to. Reply: `Stats`.
    Stats(ProcessRef),
    /// Wait until the container of process `id` has had more OOM kills than `seen` (its cgroup's
    /// `memory.events` `oom_kill`); blocks this control connection like `Wait`. Reply: `Oom`.
    WaitOom(WaitOom),
    /// Kill a container's processes, delete it and release its rootfs device (the host may then detach the
    /// device). The VM goes on. Reply: `Ok`.
    DeleteContainer(ContainerRef),
}

/// Replies, guest -> host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Ok,
    /// A process started.
    Started(Started),
    /// A process ended.
    Exited(Exited),
    /// The request failed or was malformed; the connection goes on unless the framing broke.
    Error(ErrorReply),
    /// A container's cgroup figures.
    Stats(Box<CgroupStats>),
    /// A container's OOM kill count rose.
    Oom(Oom),
}

/// Names a process: [`crate::WORKLOAD`] or an exec id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Process id in the protocol's numbering.
    pub id: u32,
}

/// `Exec` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Id the host chose (non-zero, unique); stdio streams attach with it before the request.
    pub id: u32,
    /// The process.
    pub process: ProcessSpec,
    /// The container to run it in; absent: the VM's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// `Signal` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// Process id.
    pub id: u32,
    /// Signal number.
    pub signal: i32,
}

/// `Resize` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    /// Process id.
    pub id: u32,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// `Started` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Process id.
    pub id: u32,
    /// Its pid in the guest.
    pub pid: i32,
}

/// `Exited` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// Process id.
    pub id: u32,
    /// Exit code as Docker reports it: the process's own code, 128+N after signal N, 126/127 when the command
    /// could not be executed / was not found, 125 when guest-init failed to run it.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

/// `Error` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// One line, "failed to ...: cause".
    pub message: String,
}

/// `WaitOom` payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitOom {
    /// A process of the container.
    pub id: u32,
    /// The OOM kill count the host has already seen (0 at first).
    pub seen: u64,
}

/// `Oom` payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oom {
    /// The process named in `WaitOom`.
    pub id: u32,
    /// The container's OOM kill count now (its cgroup's `memory.events` `oom_kill`), above `seen`.
    pub oom_kill: u64,
}

/// One device line of a cgroup's `io.stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IoStat {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// `Stats` payload: a container's cgroup v2 files as the guest read them. A file the guest kernel lacks (or a
/// controller not enabled) leaves its field empty; "max" limits are `None`. Keyed files (`memory.stat`,
/// `memory.events`, `cpu.stat`) are carried whole as name -> value, so the host picks what it maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupStats {
    /// `memory.current`, bytes.
    pub memory_current: Option<u64>,
    /// `memory.max`, bytes (`None`: no limit).
    pub memory_max: Option<u64>,
    /// `memory.peak`, bytes (kernels from 5.19).
    pub memory_peak: Option<u64>,
    /// `memory.swap.current`, bytes.
    pub swap_current: Option<u64>,
    /// `memory.swap.max`, bytes (`None`: no limit).
    pub swap_max: Option<u64>,
    /// `memory.stat`.
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    /// `memory.events`.
    pub memory_events: std::collections::BTreeMap<String, u64>,
    /// `cpu.stat` (microseconds and counts).
    pub cpu_stat: std::collections::BTreeMap<String, u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
    /// `pids.max` (`None`: no limit).
    pub pids_max: Option<u64>,
    /// `io.stat`, one entry per device.
    pub io: Vec<IoStat>,
}
