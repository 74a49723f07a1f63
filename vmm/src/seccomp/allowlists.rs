//! What each kind of VMM thread may ask of the host kernel once the guest runs: one table per thread kind, one
//! entry per system call with the reason the VMM needs it. Everything else kills the whole VMM process.
//!
//! Gathered by running real guests (the full-path suite, the VMM's own tests) under `strace -f`, thread by thread,
//! in debug and release builds, then read against the code that makes each call (docs/vmm-seccomp.md tells how
//! to redo it). A call the VMM makes only at setup (open, KVM_CREATE_*, TUNSETIFF, bind, ...) is not here: the
//! filters go on after the VM is built.

use super::{Allowed, Args};
use kvm_bindings::kvm_regs;

/// Bits of mmap/mprotect's `prot` the VMM never asks for: no new executable memory after setup.
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl request number (include/uapi/linux/kvm.h, asm-generic/ioctl.h).
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = kvm_ioc(2, 0x81, std::mem::size_of::<kvm_regs>());

/// The signal that kicks a vCPU out of KVM_RUN (SIGRTMIN; glibc's SIGRTMIN is 34 and fixed on Linux).
fn kick_signal() -> u64 {
    vmm_sys_util::signal::SIGRTMIN() as u64
}

macro_rules! allow {
    ($nr:ident, $why:literal) => {
        Allowed {
            nr: libc::$nr,
            name: stringify!($nr),
            args: Args::Any,
            why: $why,
        }
    };
    ($nr:ident, $args:expr, $why:literal) => {
        Allowed {
            nr: libc::$nr,
            name: stringify!($nr),
            args: $args,
            why: $why,
        }
    };
}

/// Calls every VMM thread makes: the allocator, locks, clocks, logging, signals and thread teardown.
fn common() -> Vec<Allowed> {
    vec![
        allow!(
            SYS_futex,
            "std's Mutex, Condvar, OnceLock and thread join wait and wake on futexes"
        ),
        allow!(
            SYS_clock_gettime,
            "Instant::now when the vDSO falls back to the system call"
        ),
        allow!(
            SYS_mmap,
            Args::NoBits {
                arg: 2,
                mask: PROT_EXEC
            },
            "the allocator maps memory (never executable)"
        ),
        allow!(
            SYS_mprotect,
            Args::NoBits {
                arg: 2,
                mask: PROT_EXEC
            },
            "glibc's per-thread malloc arenas grow by mprotect (never executable)"
        ),
        allow!(
            SYS_munmap,
            "the allocator returns memory; Rust unmaps a thread's signal stack when it ends"
        ),
        allow!(SYS_mremap, "the allocator grows large buffers in place"),
        allow!(SYS_brk, "the allocator's main heap"),
        allow!(
            SYS_madvise,
            Args::OneOf {
                arg: 2,
                values: vec![libc::MADV_DONTNEED as u64, libc::MADV_FREE as u64],
            },
            "glibc frees arena pages and the stack of an ended thread"
        ),
        allow!(
            SYS_write,
            "log lines to stderr (tracing), eventfd signals, the serial console"
        ),
        allow!(
            SYS_rt_sigreturn,
            "return from a signal handler (the vCPU kick handler)"
        ),
        allow!(
            SYS_rt_sigprocmask,
            "glibc blocks signals while a thread ends and in abort()"
        ),
        allow!(
            SYS_sigaltstack,
            "Rust removes a thread's stack-overflow signal stack when it ends"
        ),
        allow!(SYS_sched_yield, "std's locks yield while they spin"),
        allow!(
            SYS_getpid,
            "glibc's pthread_kill and abort() name the process in tgkill"
        ),
        allow!(SYS_gettid, "glibc's abort() names the thread"),
        allow!(
            SYS_tgkill,
            Args::OneOf {
                arg: 2,
                values: vec![libc::SIGABRT as u64]
            },
            "abort() after a panic while panicking raises SIGABRT in its own thread"
        ),
        allow!(
            SYS_close,
            "a thread drops what it owns: a vCPU its KVM fd, the event loop vsock connections"
        ),
        allow!(
            SYS_fcntl,
            Args::OneOf {
                arg: 1,
                values: vec![libc::F_GETFD as u64]
            },
            "debug builds of std check that an fd is open before closing it"
        ),
        allow!(SYS_exit, "a thread ends"),
        allow!(SYS_exit_group, "the process ends"),
    ]
}

/// A vCPU thread: KVM_RUN and the port/MMIO exits it serves in place (console, i8042, boot timer, virtio
/// registers, which signal the event loop through eventfds).
pub fn vcpu() -> Vec<Allowed> {
    let mut list = common();
    list.extend([allow!(
        SYS_ioctl,
        Args::OneOf {
            arg: 1,
            values: vec![KVM_RUN, KVM_GET_REGS],
        },
        "KVM_RUN enters the guest; KVM_GET_REGS reads RIP when the VM stops or fails"
    ), allow!(
        SYS_epoll_ctl,
        Args::OneOf { arg: 1, values: vec![libc::EPOLL_CTL_DEL as u64] },
        "the guest resets vsock by an MMIO write, served here: its connections leave the backend's epoll"
    )]);
    list
}

/// The event-loop thread: every virtio device's queues and backends (blk files, the tap, vsock unix sockets,
/// getrandom, rate-limit timers), the VM's exit, and stopping the vCPUs at the end.
pub fn event_loop() -> Vec<Allowed> {
    let mut list = common();
    list.extend([
        allow!(SYS_epoll_wait, "the event loop waits for device fds"),
        allow!(
            SYS_epoll_pwait,
            "the event loop waits (glibc may use the pwait form)"
        ),
        allow!(
            SYS_epoll_ctl,
            "devices watch queue eventfds when activated; vsock watches each connection"
        ),
        allow!(SYS_read, "eventfds, timerfds, tap frames and vsock streams"),
        allow!(SYS_readv, "vectored reads on the tap and vsock streams"),
        allow!(SYS_writev, "vectored writes on the tap and vsock streams"),
        allow!(SYS_pread64, "virtio-blk reads the disk image"),
        allow!(SYS_pwrite64, "virtio-blk writes the scratch disk"),
        allow!(SYS_fdatasync, "virtio-blk FLUSH"),
        allow!(SYS_fsync, "virtio-blk FLUSH (sync_all)"),
        allow!(SYS_recvfrom, "std reads vsock unix streams with recv"),
        allow!(SYS_sendto, "std writes unix streams with send"),
        allow!(
            SYS_accept4,
            "vsock: a host process connects to the VMM's socket"
        ),
        allow!(
            SYS_socket,
            Args::OneOf {
                arg: 0,
                values: vec![libc::AF_UNIX as u64]
            },
            "vsock: the guest connects to a host listener (unix sockets only)"
        ),
        allow!(
            SYS_connect,
            "vsock: connect to the host listener the guest asked for"
        ),
        allow!(SYS_shutdown, "vsock: a half-closed connection"),
        allow!(
            SYS_ioctl,
            Args::OneOf {
                arg: 1,
                values: vec![libc::FIONBIO]
            },
            "set_nonblocking on accepted vsock streams"
        ),
        allow!(
            SYS_recvmsg,
            "runtime block slots: the host hands over an image as an open fd (SCM_RIGHTS)"
        ),
        allow!(
            SYS_lseek,
            "runtime block slots: the size of a handed-over image (lseek to its end; pread ignores the offset)"
        ),
        allow!(SYS_timerfd_settime, "rate limiters arm their timer"),
        allow!(
            SYS_getrandom,
            "virtio-rng fills guest buffers; std seeds a HashMap's hasher"
        ),
        allow!(
            SYS_clock_nanosleep,
            "stopping the vCPUs waits 1 ms between kicks"
        ),
        allow!(SYS_nanosleep, "std's sleep on older glibc"),
    ]);
    // The kick: pthread_kill(vcpu, SIGRTMIN) until each vCPU has left KVM_RUN.
    for a in &mut list {
        if a.nr == libc::SYS_tgkill {
            a.args = Args::OneOf {
                arg: 2,
                values: vec![libc::SIGABRT as u64, kick_signal()],
            };
            a.why = "stopping the VM kicks each vCPU out of KVM_RUN with SIGRTMIN; abort() raises SIGABRT";
        }
    }
    list
}

/// Any other thread of the VMM once the guest runs: the thread that waits for `Vmm::run` and drops the VM
/// afterwards (the VMM process's main thread once the VMM runs as its own process).
pub fn rest() -> Vec<Allowed> {
    let mut list = common();
    list.extend([
        allow!(SYS_unlink, "dropping vsock removes its socket file"),
        allow!(
            SYS_unlinkat,
            "dropping vsock removes its socket file (unlinkat form)"
        ),
        allow!(SYS_clock_nanosleep, "waiting loops sleep"),
        allow!(
            SYS_rt_sigtimedwait,
            "the VMM process's signal thread waits for the keeper's SIGTERM (sigwait)"
        ),
        allow!(SYS_nanosleep, "std's sleep on older glibc"),
    ]);
    list
}
