//! mvrun's virtual machine monitor.
//!
//! Built on the rust-vmm crates: `kvm-ioctls` for the VM and vCPUs, `vm-memory` for guest RAM, `linux-loader` for
//! the kernel, `vm-superio` for the console and the i8042, `event-manager` for the one event loop. A [`VmConfig`]
//! goes through [`builder::build_vm`] straight to a [`Vmm`], whose [`Vmm::run`] starts the vCPU threads and serves
//! events until the guest resets, shuts down, fails, or the timeout passes.
#![deny(missing_docs)]

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod loader;
mod mapped_file;
pub mod rate_limiter;
pub mod seccomp;
pub mod vstate;

pub use builder::{build_vm, BuildError};
pub use config::{Payload, RawMode, VmConfig, DEFAULT_CMDLINE};
pub use exit::VmExit;

use event_loop::EventLoop;
use exit::ExitSignal;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Figures the VMM measures about itself.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// From launch to the end of VM setup.
    pub setup: Duration,
    /// From launch to the boot vCPU's first KVM_RUN.
    pub first_kvm_run: Option<Duration>,
    /// From launch to the guest's boot-timer write.
    pub boot_timer: Option<Duration>,
    /// The VMM's resident memory just before the guest ran, in KiB (only with [`Vmm::measure_memory`], as are
    /// the other memory figures).
    pub rss_before_run_kib: Option<u64>,
    /// Of that, guest memory already resident (the kernel, initrd and boot tables the VMM wrote or mapped), in
    /// KiB; with the payload mapped from its files this counts their page-cache pages too.
    pub guest_resident_kib: Option<u64>,
    /// The VMM's own memory just before the guest ran: every mapping of the process but guest memory.
    pub vmm_memory: Option<ProcessMemory>,
    /// Where the setup time went, phase by phase, in order (the first is launch to [`build_vm`]'s start; the
    /// last is the VM built to the boot vCPU's first KVM_RUN: threads, seccomp filters).
    pub phases: Vec<(&'static str, Duration)>,
    /// Guest instructions KVM's emulator ran, all vCPUs together, up to the VM's end (KVM's `insn_emulation`
    /// statistic). On an emulated-KVM host that is the whole guest's work, a figure the host's load does not
    /// change; on hardware KVM only the MMIO and port accesses KVM emulated. Not read by [`Vmm::run_confined`],
    /// whose filters leave the statistics files alone.
    pub emulated_instructions: Option<u64>,
    /// VM exits, all vCPUs together, up to the VM's end (KVM's `exits` statistic); as `emulated_instructions`.
    pub exits: Option<u64>,
}

/// Resident memory of a set of mappings, from /proc/self/smaps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Proportional set size (shared pages divided among their users), KiB.
    pub pss_kib: u64,
    /// Private dirty pages (heap, stacks, relocated data: what this process alone costs the host, shared with
    /// no other VMM and not reclaimable without swap), KiB. Clean file pages (the binary's text) are left out:
    /// they are the page cache's, shared by every process of the same binary.
    pub private_dirty_kib: u64,
}

/// Times setup phases: each [`PhaseClock::mark`] ends the phase that began at the previous mark.
#[derive(Debug)]
pub struct PhaseClock {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseClock {
    /// A clock whose first phase began at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            last: start,
            phases: Vec::new(),
        }
    }

    /// Ends the current phase, named `name`, and begins the next.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    /// Records a phase measured elsewhere (e.g. on another thread, overlapping the others).
    pub fn record(&mut self, name: &'static str, took: Duration) {
        self.phases.push((name, took));
    }

    /// The phases so far.
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Why the VM stopped.
    pub exit: VmExit,
    /// True when the timeout ended it.
    pub timed_out: bool,
    /// Where each vCPU was when the VMM stopped it (only for VMs the VMM stopped: timeout or request).
    pub stopped_rips: Vec<u64>,
    /// Measurements.
    pub timings: Timings,
}

/// A built VM, ready to run. Field order matters for drop: the vCPUs and VM go before guest memory.
pub struct Vmm {
    vcpus: Vec<vstate::vcpu::Vcpu>,
    vcpu_stats: Vec<vstate::kvm_stats::VcpuStats>,
    vm_fd: kvm_ioctls::VmFd,
    guest_memory: vstate::memory::GuestMemory,
    io_bus: Arc<devices::bus::Bus>,
    mmio_bus: Arc<devices::bus::Bus>,
    exit: Arc<ExitSignal>,
    event_loop: EventLoop,
    boot_time: Arc<OnceLock<Duration>>,
    seccomp: seccomp::Filters,
    start: Instant,
    setup_done: Instant,
    phases: Vec<(&'static str, Duration)>,
    measure_memory: bool,
}

impl Vmm {
    /// Where the setup time went so far, phase by phase ([`Timings::phases`] without the last phase, which ends
    /// at the first KVM_RUN).
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// Measure the VMM's memory just before the guest runs ([`Timings::vmm_memory`] and the RSS figures); the
    /// time the measurement takes is left out of [`Timings::first_kvm_run`].
    pub fn measure_memory(mut self) -> Self {
        self.measure_memory = true;
        self
    }

    /// Guest memory, for devices and tests.
    pub fn guest_memory(&self) -> &vstate::memory::GuestMemory {
        &self.guest_memory
    }

    /// The KVM VM, for attaching devices.
    pub fn vm_fd(&self) -> &kvm_ioctls::VmFd {
        &self.vm_fd
    }

    /// The "rest" seccomp filter compiled with the VM (none at level 0), for a VMM process's other threads to
    /// install with [`seccomp::install`] once the VM's threads exist.
    pub fn rest_filter(&self) -> Option<Arc<seccomp::BpfProgram>> {
        self.seccomp.rest.clone()
    }

    /// A handle that ends the VM from another thread (`signal(VmExit::Stopped)`) and tells whether it has ended.
    pub fn exit_handle(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Runs the guest until it ends or `timeout` passes, then stops every vCPU.
    ///
    /// The vCPUs and the event loop run on threads of their own, each under its seccomp filter
    /// ([`seccomp`]); the calling thread only waits, and drops the VM (closing its fds, unmapping guest memory,
    /// removing the vsock socket file) with no filter of the VMM's.
    pub fn run(self, timeout: Option<Duration>) -> RunOutcome {
        self.run_inner(timeout, false)
    }

    /// [`Vmm::run`] for a VMM process: once the event-loop thread (which starts the vCPUs) exists, the calling
    /// thread also puts itself under the VMM's "rest" filter, so that no thread of the process is left
    /// unconfined while the guest runs. It only waits, then drops the VM. Not for callers that go on to do
    /// other work on this thread (tests, `mvrun vm boot`'s reporting).
    pub fn run_confined(self, timeout: Option<Duration>) -> RunOutcome {
        self.run_inner(timeout, true)
    }

    fn run_inner(mut self, timeout: Option<Duration>, confine_caller: bool) -> RunOutcome {
        // Measured only when asked (reading smaps takes a while), and left out of the time to the first KVM_RUN.
        let measuring = Instant::now();
        let (rss, guest_resident, vmm_memory) = if self.measure_memory {
            (
                rss_kib(),
                guest_resident_kib(&self.guest_memory),
                vmm_memory(&self.guest_memory),
            )
        } else {
            (None, None, None)
        };
        let measured_in = measuring.elapsed();
        let shared = vstate::vcpu::VcpuShared {
            io_bus: self.io_bus.clone(),
            mmio_bus: self.mmio_bus.clone(),
            exit: self.exit.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            first_run: Arc::new(OnceLock::new()),
            stopped_rip: Arc::new((0..self.vcpus.len()).map(|_| Default::default()).collect()),
        };
        let exit_signal = self.exit.clone();
        let rest = self.seccomp.rest.clone().filter(|_| confine_caller);
        // The vCPUs start from this thread, before the event loop's: one thread start less before the first
        // KVM_RUN. The event-loop thread takes them over (and stops them); if it cannot start, this thread does.
        let vcpu_threads = Mutex::new(self.start_vcpus(&shared));
        let timed_out = std::thread::scope(|scope| {
            let serve = std::thread::Builder::new()
                .name("vmm-events".into())
                .spawn_scoped(scope, || {
                    let threads = std::mem::take(
                        &mut *vcpu_threads.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    self.serve(&shared, threads, timeout)
                });
            // After the spawn: a filter is inherited by the threads a thread starts later.
            if let (Ok(_), Some(filter)) = (&serve, &rest) {
                if let Err(e) = seccomp::install(seccomp::ThreadKind::Rest, filter) {
                    exit_signal.signal(VmExit::VcpuError {
                        vcpu: 0,
                        message: ErrorChain(&e).to_string(),
                    });
                }
            }
            match serve.map(|h| h.join()) {
                Ok(Ok(timed_out)) => timed_out,
                Ok(Err(_)) => {
                    // Its vCPU handles are gone with it: the vCPUs leave at their next exit.
                    shared
                        .stop
                        .store(true, std::sync::atomic::Ordering::Release);
                    exit_signal.signal(VmExit::VcpuError {
                        vcpu: 0,
                        message: "the event-loop thread panicked".into(),
                    });
                    false
                }
                Err(e) => {
                    exit_signal.signal(VmExit::VcpuError {
                        vcpu: 0,
                        message: format!("failed to start the event-loop thread: {e}"),
                    });
                    let threads = std::mem::take(
                        &mut *vcpu_threads.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    vstate::vcpu::stop_all(&shared.stop, threads);
                    false
                }
            }
        });
        let exit = self.exit.reason().unwrap_or(VmExit::Stopped);
        let first_run = shared.first_run.get().map(|t| *t - measured_in);
        let mut phases = std::mem::take(&mut self.phases);
        if let Some(t) = first_run {
            phases.push((
                "threads, seccomp, vCPU start to first KVM_RUN",
                t.saturating_duration_since(self.setup_done),
            ));
        }
        let stats: Vec<_> = if confine_caller || self.vcpu_stats.is_empty() {
            Vec::new()
        } else {
            self.vcpu_stats
                .iter()
                .filter_map(|s| s.read().ok())
                .collect()
        };
        let stat = |name| {
            (!stats.is_empty())
                .then(|| vstate::kvm_stats::total(&stats, name))
                .flatten()
        };
        RunOutcome {
            exit,
            timed_out,
            stopped_rips: shared
                .stopped_rip
                .iter()
                .map(|r| r.load(std::sync::atomic::Ordering::Relaxed))
                .collect(),
            timings: Timings {
                setup: self.setup_done - self.start,
                first_kvm_run: first_run.map(|t| t - self.start),
                boot_timer: self.boot_time.get().copied(),
                rss_before_run_kib: rss,
                guest_resident_kib: guest_resident,
                vmm_memory,
                phases,
                emulated_instructions: stat("insn_emulation"),
                exits: stat("exits"),
            },
        }
    }

    /// Starts the vCPU threads (each installs its own filter before its first KVM_RUN). On a failure the VM is
    /// ended with the reason; the threads started so far are returned all the same.
    fn start_vcpus(
        &mut self,
        shared: &vstate::vcpu::VcpuShared,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads = Vec::new();
        for vcpu in std::mem::take(&mut self.vcpus) {
            match vcpu.start(shared.clone(), self.seccomp.vcpu.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.signal(VmExit::VcpuError {
                        vcpu: threads.len() as u8,
                        message: e.to_string(),
                    });
                    break;
                }
            }
        }
        threads
    }

    /// The event-loop thread: takes the vCPU threads, installs its own filter, serves events until the VM ends, stops
    /// the vCPUs. Returns whether the timeout ended the VM.
    fn serve(
        &mut self,
        shared: &vstate::vcpu::VcpuShared,
        threads: Vec<std::thread::JoinHandle<()>>,
        timeout: Option<Duration>,
    ) -> bool {
        #[cfg(debug_assertions)]
        let forbidden = seccomp::forbidden_syscall_requested();
        if let Some(filter) = &self.seccomp.event_loop {
            if let Err(e) = seccomp::install(seccomp::ThreadKind::EventLoop, filter) {
                self.exit.signal(VmExit::VcpuError {
                    vcpu: 0,
                    message: ErrorChain(&e).to_string(),
                });
            }
        }
        #[cfg(debug_assertions)]
        if forbidden {
            seccomp::make_forbidden_syscall();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        while self.exit.reason().is_none() {
            let wait_ms = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        timed_out = true;
                        self.exit.signal(VmExit::Stopped);
                        break;
                    }
                    left.as_millis().clamp(1, 100) as i32
                }
                None => 100,
            };
            if let Err(e) = self.event_loop.run_with_timeout(wait_ms) {
                tracing::error!("event loop failed: {e:?}");
                self.exit.signal(VmExit::VcpuError {
                    vcpu: 0,
                    message: format!("event loop failed: {e:?}"),
                });
            }
        }
        vstate::vcpu::stop_all(&shared.stop, threads);
        timed_out
    }
}

/// Formats an error with its sources: "outer: inner: ...".
pub(crate) struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// How much of guest memory is resident in the host, in KiB (mincore over every region).
pub fn guest_resident_kib(mem: &vstate::memory::GuestMemory) -> Option<u64> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    const PAGE: usize = 4096;
    let mut pages = 0u64;
    for region in mem.iter() {
        let host = mem.get_host_address(region.start_addr()).ok()?;
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: `host..host + len` is one live mapping owned by `mem`; `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        pages += vec.iter().filter(|b| **b & 1 == 1).count() as u64;
    }
    Some(pages * (PAGE as u64) / 1024)
}

/// The host address ranges of guest memory, `[start, end)`, one per region.
pub fn guest_ranges(mem: &vstate::memory::GuestMemory) -> Vec<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .filter_map(|r| {
            let host = mem.get_host_address(r.start_addr()).ok()? as u64;
            Some((host, host + r.len()))
        })
        .collect()
}

/// The memory of every mapping of this process except guest memory's (from /proc/self/smaps): the VMM's own
/// overhead, whether guest pages are anonymous or mapped from the payload's files.
pub fn vmm_memory(mem: &vstate::memory::GuestMemory) -> Option<ProcessMemory> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(memory_outside(&smaps, &guest_ranges(mem)))
}

/// The memory of the mappings of an smaps text (a VMM process's, read by its parent when the VMM itself has no
/// /proc) outside the `guest` ranges ([`guest_ranges`]).
pub fn memory_outside(smaps: &str, guest: &[(u64, u64)]) -> ProcessMemory {
    sum_smaps(smaps, |lo, hi| {
        guest.iter().any(|&(g0, g1)| lo >= g0 && hi <= g1)
    })
}

/// Sums Rss, Pss and private memory over the mappings of an smaps text that `skip` does not exclude.
fn sum_smaps(smaps: &str, skip: impl Fn(u64, u64) -> bool) -> ProcessMemory {
    let mut total = ProcessMemory::default();
    let mut counted = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-').and_then(|(lo, hi)| {
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            ))
        }) {
            counted = !skip(lo, hi);
            continue;
        }
        if !counted {
            continue;
        }
        let kib = words
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match first {
            "Rss:" => total.rss_kib += kib,
            "Pss:" => total.pss_kib += kib,
            "Private_Dirty:" => total.private_dirty_kib += kib,
            _ => {}
        }
    }
    total
}

/// This process's resident set size in KiB.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_sums_skip_the_excluded_mappings() {
        let smaps = "\
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                 100 kB
Pss:                 100 kB
Private_Dirty:       100 kB
Private_Clean:         0 kB
55aa00000000-55aa00010000 r-xp 00000000 fd:01 42 /usr/bin/x
Rss:                  40 kB
Pss:                  10 kB
Private_Clean:        30 kB
Private_Dirty:         4 kB
";
        let m = sum_smaps(smaps, |lo, _| lo == 0x7f00_0000_0000);
        assert_eq!(
            m,
            ProcessMemory {
                rss_kib: 40,
                pss_kib: 10,
                private_dirty_kib: 4
            }
        );
        assert_eq!(sum_smaps(smaps, |_, _| false).rss_kib, 140);
    }
}
