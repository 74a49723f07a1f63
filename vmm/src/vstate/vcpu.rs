//! vCPUs: per-vCPU CPU state at boot, the run loop on its own thread, and how the VMM stops it.

use crate::arch::{cpuid, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, VmExit};
use crate::loader::BootEntry;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM vCPU ioctl failed.
    #[error("failed to {what} for vCPU {index}")]
    Kvm {
        /// The step.
        what: &'static str,
        /// vCPU index.
        index: u8,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The vCPU thread could not be started.
    #[error("failed to start the thread of vCPU {index}")]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM set fewer MSRs than asked.
    #[error("KVM accepted {set} of {wanted} boot MSRs for vCPU {index}")]
    Msrs {
        /// vCPU index.
        index: u8,
        /// Accepted.
        set: usize,
        /// Asked.
        wanted: usize,
    },
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuShared {
    /// Port-I/O devices.
    pub io_bus: Arc<Bus>,
    /// MMIO devices.
    pub mmio_bus: Arc<Bus>,
    /// Where the VM's end is recorded.
    pub exit: Arc<ExitSignal>,
    /// Set to make the vCPUs leave their loops.
    pub stop: Arc<AtomicBool>,
    /// When the boot vCPU first entered the guest.
    pub first_run: Arc<OnceLock<Instant>>,
    /// Each vCPU's instruction pointer when the VMM stopped it (0 until then): tells where a guest that
    /// never ended was spinning.
    pub stopped_rip: Arc<Vec<AtomicU64>>,
}

/// One vCPU before its thread starts.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

/// Creates vCPU `index` of `count` with CPUID, MSRs, FPU and LAPIC set; the boot vCPU (0) also gets the entry
/// registers. The others wait for the guest's INIT/SIPI in the in-kernel LAPIC.
///
/// `emulated_kvm`: the host's KVM runs the guest through its instruction emulator, so CPUID leaves out what that
/// emulator serves worst ([`cpuid::hide_from_emulator`]).
pub fn create(
    kvm: &Kvm,
    vm: &VmFd,
    index: u8,
    count: u8,
    boot: BootEntry,
    emulated_kvm: bool,
) -> Result<Vcpu, Error> {
    let err = |what| {
        move |source| Error::Kvm {
            what,
            index,
            source,
        }
    };
    let fd = vm.create_vcpu(u64::from(index)).map_err(err("create"))?;
    let mut cpuid: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(err("get supported CPUID"))?;
    cpuid::normalize(&mut cpuid, index, count);
    if emulated_kvm {
        cpuid::hide_from_emulator(&mut cpuid);
    }
    fd.set_cpuid2(&cpuid).map_err(err("set CPUID"))?;
    let msrs = msr::boot_msrs();
    let set = fd.set_msrs(&msrs).map_err(err("set MSRs"))?;
    if set != msrs.as_slice().len() {
        return Err(Error::Msrs {
            index,
            set,
            wanted: msrs.as_slice().len(),
        });
    }
    fd.set_fpu(&regs::boot_fpu()).map_err(err("set FPU"))?;
    let mut lapic = fd.get_lapic().map_err(err("get LAPIC"))?;
    msr::set_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(err("set LAPIC"))?;
    if index == 0 {
        let sregs = fd.get_sregs().map_err(err("get sregs"))?;
        fd.set_sregs(&regs::boot_sregs(boot.mode, sregs))
            .map_err(err("set sregs"))?;
        fd.set_regs(&regs::boot_regs(boot.mode, boot.entry))
            .map_err(err("set registers"))?;
    }
    Ok(Vcpu { fd, index })
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick-signal handler; KVM_RUN then returns EINTR when the signal arrives.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// What to do after one exit.
enum Next {
    Continue,
    Stop(VmExit),
}

impl Vcpu {
    /// This vCPU's KVM statistics, where the host kernel has them.
    pub fn stats(&self) -> Option<super::kvm_stats::VcpuStats> {
        super::kvm_stats::VcpuStats::open(&self.fd)
            .map_err(|e| tracing::debug!("no KVM stats for vCPU {}: {e}", self.index))
            .ok()
    }

    /// Starts the vCPU's thread, which installs `filter` (the vCPU seccomp filter, if any) before it enters the
    /// guest.
    pub fn start(
        self,
        shared: VcpuShared,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<JoinHandle<()>, Error> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Some(f) = filter {
                    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu, &f) {
                        shared.exit.signal(VmExit::VcpuError {
                            vcpu: index,
                            message: crate::ErrorChain(&e).to_string(),
                        });
                        return;
                    }
                }
                self.run(shared)
            })
            .map_err(|source| Error::Spawn { index, source })
    }

    fn run(mut self, shared: VcpuShared) {
        loop {
            if shared.stop.load(Ordering::Acquire) {
                if let (Ok(regs), Some(slot)) = (
                    self.fd.get_regs(),
                    shared.stopped_rip.get(usize::from(self.index)),
                ) {
                    slot.store(regs.rip, Ordering::Relaxed);
                }
                return;
            }
            if self.index == 0 {
                let _ = shared.first_run.set(Instant::now());
            }
            match self.run_once(&shared) {
                Next::Continue => {}
                Next::Stop(exit) => {
                    shared.exit.signal(exit);
                    return;
                }
            }
        }
    }

    fn run_once(&mut self, shared: &VcpuShared) -> Next {
        let index = self.index;
        let next = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !shared.io_bus.read(u64::from(port), data) {
                    // Nothing there: an ISA bus floats high.
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                shared.io_bus.write(u64::from(port), data);
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !shared.mmio_bus.read(addr, data) {
                    tracing::debug!("vCPU {index}: MMIO read of unmapped {addr:#x}");
                    data.fill(0);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !shared.mmio_bus.write(addr, data) {
                    tracing::debug!("vCPU {index}: MMIO write to unmapped {addr:#x}");
                }
                Next::Continue
            }
            // With the in-kernel LAPIC, HLT only exits when the guest halts with interrupts off: it is done.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Shutdown) => Next::Stop(VmExit::Shutdown),
            Ok(VcpuExit::SystemEvent(kind, _)) => Next::Stop(if kind == KVM_SYSTEM_EVENT_RESET {
                VmExit::Reset
            } else {
                VmExit::Shutdown
            }),
            Ok(VcpuExit::FailEntry(reason, _)) => Next::Stop(VmExit::FailEntry {
                reason,
                vcpu: index,
            }),
            Ok(VcpuExit::InternalError) => Next::Stop(VmExit::InternalError {
                suberror: 0,
                rip: 0,
                vcpu: index,
            }),
            Ok(other) => {
                tracing::debug!("vCPU {index}: ignoring exit {other:?}");
                Next::Continue
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: the loop re-checks the stop flag.
                Next::Continue
            }
            Err(e) => Next::Stop(VmExit::VcpuError {
                vcpu: index,
                message: format!("KVM_RUN failed: {e}"),
            }),
        };
        match next {
            Next::Stop(VmExit::InternalError { vcpu, .. }) => {
                // Read the details once `run`'s borrow of the kvm_run page is over.
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active union field.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                Next::Stop(VmExit::InternalError {
                    suberror,
                    rip,
                    vcpu,
                })
            }
            other => {
                if matches!(other, Next::Continue) && shared.exit.reason().is_some() {
                    // Another vCPU or a device ended the VM.
                    return Next::Stop(VmExit::Stopped);
                }
                other
            }
        }
    }
}

/// Stops vCPU threads: sets the flag, kicks each thread out of KVM_RUN until it has left, and joins it.
pub fn stop_all(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for handle in threads {
        // A kick can land just before the thread enters KVM_RUN and be lost; repeat until the thread is gone.
        while !handle.is_finished() {
            // SAFETY: the pthread_t belongs to a thread that has not been joined yet, so it is valid, and the
            // kick signal has a handler installed (install_kick_handler) that does nothing.
            unsafe {
                libc::pthread_kill(handle.as_pthread_t(), kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = handle.join();
    }
}
