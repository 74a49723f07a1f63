//! Per-thread seccomp filters: once the VM is built, each VMM thread keeps only the system calls its job needs
//! (the tables in [`allowlists`]), and any other call kills the whole VMM process (SECCOMP_RET_KILL_PROCESS, so the
//! parent sees SIGSYS). A guest that takes over the VMM through a device bug then finds no `open`, `execve`,
//! `socket(AF_INET)` or new executable memory to go on with.
//!
//! The filters are compiled with `seccompiler` when the VM is built ([`Filters`]) and installed by each thread
//! itself, before the guest runs: a vCPU before its first KVM_RUN, the event-loop thread before it serves an
//! event. A filter is per thread and inherited by threads started later, so the VMM starts its vCPU threads
//! before the event-loop thread installs its own.
//!
//! Levels, as Firecracker's `--seccomp-level`: 0 no filters (debugging only), 1 system-call numbers only, 2 (the
//! default) numbers and the arguments that can be checked: ioctl request codes (KVM_RUN and KVM_GET_REGS on a vCPU,
//! FIONBIO on the event loop), no PROT_EXEC in mmap/mprotect, AF_UNIX sockets only, tgkill only with the vCPU kick
//! signal or SIGABRT, madvise only to free memory.

pub mod allowlists;

pub use seccompiler::BpfProgram;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How much the VMM's threads are restricted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeccompLevel {
    /// No filters: for debugging the VMM only.
    Off,
    /// Allowlists of system-call numbers.
    Syscalls,
    /// Allowlists of system-call numbers with their arguments checked where that is possible (the default).
    #[default]
    Arguments,
}

impl SeccompLevel {
    /// The level's number (0, 1, 2).
    pub fn as_u8(self) -> u8 {
        match self {
            SeccompLevel::Off => 0,
            SeccompLevel::Syscalls => 1,
            SeccompLevel::Arguments => 2,
        }
    }
}

impl TryFrom<u8> for SeccompLevel {
    type Error = Error;
    fn try_from(n: u8) -> Result<Self, Error> {
        match n {
            0 => Ok(SeccompLevel::Off),
            1 => Ok(SeccompLevel::Syscalls),
            2 => Ok(SeccompLevel::Arguments),
            n => Err(Error::Level(n)),
        }
    }
}

/// Which allowlist a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The thread that serves the event loop: every device's I/O.
    EventLoop,
    /// Any other VMM thread once the guest runs (the one waiting for [`crate::Vmm::run`] and dropping the VM).
    Rest,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Rest => "VMM",
        })
    }
}

/// Which arguments of an allowed call are checked (at level 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Argument `arg` (its low 32 bits: every argument checked here is an int in the kernel) is one of `values`.
    OneOf {
        /// Argument index, from 0.
        arg: u8,
        /// Allowed values.
        values: Vec<u64>,
    },
    /// Argument `arg` has none of the bits of `mask` set.
    NoBits {
        /// Argument index, from 0.
        arg: u8,
        /// Forbidden bits.
        mask: u64,
    },
}

/// One system call a thread kind may make.
#[derive(Clone, Debug)]
pub struct Allowed {
    /// The system-call number (x86_64).
    pub nr: i64,
    /// libc's name for it (`SYS_read`).
    pub name: &'static str,
    /// Which arguments are allowed.
    pub args: Args,
    /// Why the VMM needs it.
    pub why: &'static str,
}

/// Errors of the filters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A level other than 0, 1, 2.
    #[error("invalid seccomp level {0}: use 0 (off), 1 (system calls) or 2 (system calls and arguments)")]
    Level(u8),
    /// seccompiler refused an allowlist.
    #[error("failed to compile the {0} thread's seccomp filter")]
    Compile(ThreadKind, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("failed to install the {0} thread's seccomp filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
}

/// The allowlist of `kind`.
pub fn allowlist(kind: ThreadKind) -> Vec<Allowed> {
    match kind {
        ThreadKind::Vcpu => allowlists::vcpu(),
        ThreadKind::EventLoop => allowlists::event_loop(),
        ThreadKind::Rest => allowlists::rest(),
    }
}

fn rules(args: &Args) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let cond = |arg, op, value| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value);
    match args {
        Args::Any => Ok(Vec::new()),
        Args::OneOf { arg, values } => values
            .iter()
            .map(|&v| SeccompRule::new(vec![cond(*arg, SeccompCmpOp::Eq, v)?]))
            .collect(),
        Args::NoBits { arg, mask } => Ok(vec![SeccompRule::new(vec![cond(
            *arg,
            SeccompCmpOp::MaskedEq(*mask),
            0,
        )?])?]),
    }
}

/// Environment variable: `1` makes a call outside the allowlists only logged by the kernel (`dmesg | grep
/// type=1326` names the thread and `syscall=N`) instead of killing the VMM. For finding what a list misses;
/// never for production.
pub const LOG_ONLY_ENV: &str = "MVRUN_VMM_SECCOMP_LOG_ONLY";

fn log_only() -> bool {
    let on = std::env::var_os(LOG_ONLY_ENV).is_some_and(|v| v == "1");
    if on {
        tracing::warn!(
            "{LOG_ONLY_ENV}=1: the VMM's seccomp filters only log what they would refuse"
        );
    }
    on
}

/// Compiles the filter of `kind` at `level` to BPF; `None` at level 0.
pub fn compile(kind: ThreadKind, level: SeccompLevel) -> Result<Option<BpfProgram>, Error> {
    if level == SeccompLevel::Off {
        return Ok(None);
    }
    let err = |e| Error::Compile(kind, e);
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in allowlist(kind) {
        let r = if level == SeccompLevel::Arguments {
            rules(&a.args).map_err(err)?
        } else {
            Vec::new()
        };
        map.insert(a.nr, r);
    }
    let mismatch = if log_only() {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let filter = SeccompFilter::new(
        map,
        mismatch,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map(Some).map_err(err)
}

/// Installs a compiled filter of `kind` in the calling thread (and sets its no_new_privs, which seccomp needs
/// without CAP_SYS_ADMIN).
pub fn install(kind: ThreadKind, program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(|e| Error::Install(kind, e))
}

/// Compiles and installs the filter of `kind` at `level` in the calling thread; nothing at level 0.
pub fn apply(kind: ThreadKind, level: SeccompLevel) -> Result<(), Error> {
    match compile(kind, level)? {
        Some(p) => install(kind, &p),
        None => Ok(()),
    }
}

/// The VMM's filters, compiled when the VM is built so that a bad list fails the build, not a running guest.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// For each vCPU thread.
    pub vcpu: Option<Arc<BpfProgram>>,
    /// For the event-loop thread.
    pub event_loop: Option<Arc<BpfProgram>>,
    /// For the thread that runs the VM (see [`crate::Vmm::run_confined`]) and any other thread of a VMM process.
    pub rest: Option<Arc<BpfProgram>>,
}

impl Filters {
    /// Compiles the filters of `level`.
    pub fn new(level: SeccompLevel) -> Result<Self, Error> {
        Ok(Filters {
            vcpu: compile(ThreadKind::Vcpu, level)?.map(Arc::new),
            event_loop: compile(ThreadKind::EventLoop, level)?.map(Arc::new),
            rest: compile(ThreadKind::Rest, level)?.map(Arc::new),
        })
    }
}

/// Environment variable, debug builds only: the event-loop thread makes a forbidden system call (opens
/// /etc/passwd) right after installing its filter, so tests can see the VMM killed with SIGSYS.
#[cfg(debug_assertions)]
pub const TEST_FORBIDDEN_SYSCALL_ENV: &str = "MVRUN_VMM_TEST_FORBIDDEN_SYSCALL";

/// Whether the test hook is on (read before the filter goes on).
#[cfg(debug_assertions)]
pub(crate) fn forbidden_syscall_requested() -> bool {
    std::env::var_os(TEST_FORBIDDEN_SYSCALL_ENV).is_some_and(|v| v == "1")
}

/// The test hook's forbidden call: under a filter the process dies here.
#[cfg(debug_assertions)]
pub(crate) fn make_forbidden_syscall() {
    // SAFETY: open(2) of a constant NUL-terminated path; the fd, if any, is closed below.
    let fd = unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    tracing::error!(
        "{TEST_FORBIDDEN_SYSCALL_ENV}: open(/etc/passwd) returned {fd}: no seccomp filter stopped it"
    );
    if fd >= 0 {
        // SAFETY: `fd` was just opened here and nothing else owns it.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Rest];

    #[test]
    fn every_filter_compiles_at_every_level() {
        for kind in KINDS {
            assert!(compile(kind, SeccompLevel::Off).unwrap().is_none());
            let basic = compile(kind, SeccompLevel::Syscalls).unwrap().unwrap();
            let full = compile(kind, SeccompLevel::Arguments).unwrap().unwrap();
            assert!(!basic.is_empty());
            // Argument checks add instructions; the kernel takes at most 4096.
            assert!(full.len() > basic.len(), "{kind}");
            assert!(full.len() < 4096, "{kind}: {}", full.len());
        }
    }

    #[test]
    fn every_entry_is_listed_once_and_says_why() {
        for kind in KINDS {
            let list = allowlist(kind);
            let mut seen = std::collections::HashSet::new();
            for a in &list {
                assert!(seen.insert(a.nr), "{kind}: {} twice", a.name);
                assert!(a.why.len() > 10, "{kind}: {} needs a reason", a.name);
            }
        }
    }

    #[test]
    fn dangerous_calls_are_in_no_list() {
        for kind in KINDS {
            let names: Vec<&str> = allowlist(kind).iter().map(|a| a.name).collect();
            for bad in [
                "SYS_execve",
                "SYS_execveat",
                "SYS_open",
                "SYS_openat",
                "SYS_clone",
                "SYS_clone3",
                "SYS_fork",
                "SYS_ptrace",
                "SYS_kill",
                "SYS_mount",
                "SYS_setns",
                "SYS_bind",
                "SYS_listen",
            ] {
                assert!(!names.contains(&bad), "{kind} allows {bad}");
            }
        }
    }

    #[test]
    fn levels_round_trip() {
        for n in 0..=2 {
            assert_eq!(SeccompLevel::try_from(n).unwrap().as_u8(), n);
        }
        assert!(SeccompLevel::try_from(3).is_err());
        assert_eq!(SeccompLevel::default(), SeccompLevel::Arguments);
    }
}
