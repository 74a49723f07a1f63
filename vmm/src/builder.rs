//! Builds a VM from a [`VmConfig`], straight through: KVM, memory, legacy devices, virtio devices, payload,
//! MP table, vCPUs. The order is fixed so port and MMIO addresses and GSIs stay the same from run to run: virtio
//! devices take slots in the order blk (as configured), runtime block slots, vsock, net, rng. They are placed before the payload is
//! loaded because their `virtio_mmio.device=` entries go on the kernel command line.

use crate::arch::layout::{BOOT_TIMER_START, MMIO_SLOT_SIZE, SERIAL_GSI};
use crate::arch::{mptable, regs};
use crate::config::{self, Payload, VmConfig};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{self, Bus};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{ConsoleOut, SerialConsole};
use crate::devices::legacy::{COM1_PORT, I8042_PORT};
use crate::devices::virtio::{self, block, rng, DeviceEnv};
use crate::event_loop::{EventLoop, ExitWatcher};
use crate::exit::ExitSignal;
use crate::vstate::{memory, vcpu, vm};
use crate::{loader, PhaseClock, Vmm};
use event_manager::SubscriberOps;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;

/// Errors building a VM, one variant per phase.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// KVM or the VM could not be set up.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// The payload could not be loaded.
    #[error(transparent)]
    Load(#[from] loader::Error),
    /// The boot tables could not be written.
    #[error(transparent)]
    BootTables(#[from] regs::Error),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// A device could not be placed on a bus.
    #[error("failed to attach the {0}")]
    Bus(&'static str, #[source] bus::Error),
    /// A vCPU could not be created.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// A virtio device could not be placed (slot, irqfd, ioeventfd).
    #[error(transparent)]
    Virtio(#[from] virtio::Error),
    /// A virtio-blk device could not be created.
    #[error(transparent)]
    Block(#[from] block::Error),
    /// The runtime block slots' socket could not be set up.
    #[error(transparent)]
    BlockSlots(#[from] block::slots::Error),
    /// The virtio-rng device could not be created.
    #[error(transparent)]
    Rng(#[from] rng::Error),
    /// The virtio-vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] virtio::vsock::Error),
    /// The virtio-net device could not be created.
    #[error(transparent)]
    Net(#[from] virtio::net::Error),
    /// The command line with the device entries is too long.
    #[error(transparent)]
    Cmdline(config::Error),
    /// The seccomp filters could not be compiled.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    /// An eventfd, irqfd or the event loop could not be set up.
    #[error("failed to set up the {what}")]
    Event {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> BuildError {
    move |e| BuildError::Event {
        what,
        source: std::io::Error::other(format!("{e:?}")),
    }
}

/// Builds the VM described by `config`, with its console going to `console`. `start` is when the launch began,
/// for the boot timer.
pub fn build_vm(config: &VmConfig, console: ConsoleOut, start: Instant) -> Result<Vmm, BuildError> {
    let mut clock = PhaseClock::new(start);
    clock.mark("launch to VM build");
    config.validate()?;
    let seccomp = crate::seccomp::Filters::new(config.seccomp)?;
    clock.mark("configuration check, seccomp filters compiled");
    let kvm = vm::open_kvm()?;
    clock.mark("open /dev/kvm, capabilities");
    let mem_size = config.mem_bytes();
    let guest_memory = memory::create(mem_size)?;
    clock.mark("guest memory mmap");
    let vm_fd = vm::create_vm(&kvm)?;
    clock.mark("KVM_CREATE_VM, TSS, irqchip, PIT");

    let exit = ExitSignal::new().map_err(io_err("exit eventfd"))?;
    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    attach_serial(&vm_fd, &mut io_bus, console)?;
    io_bus
        .insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042_PORT,
            5,
        )
        .map_err(|e| BuildError::Bus("i8042", e))?;
    let boot_time = Arc::new(OnceLock::new());
    mmio_bus
        .insert(
            Arc::new(Mutex::new(BootTimer::new(start, boot_time.clone()))),
            BOOT_TIMER_START,
            MMIO_SLOT_SIZE,
        )
        .map_err(|e| BuildError::Bus("boot timer", e))?;

    let mut event_loop = EventLoop::new().map_err(io_err("event loop"))?;
    event_loop.add_subscriber(Arc::new(Mutex::new(ExitWatcher::new(exit.clone()))));

    let mut env = DeviceEnv {
        vm_fd: &vm_fd,
        mem: &guest_memory,
        mmio_bus: &mut mmio_bus,
        event_loop: &mut event_loop,
        placed: 0,
        cmdline: Vec::new(),
    };
    attach_block_devices(&mut env, config)?;
    attach_block_slots(&mut env, config)?;
    attach_vsock_device(&mut env, config)?;
    attach_net_device(&mut env, config)?;
    attach_rng_device(&mut env, config)?;
    let payload = with_device_cmdline(&config.payload, &env.cmdline)?;
    clock.mark("devices (serial, i8042, boot timer, event loop, virtio)");

    let boot = load_payload(&guest_memory, mem_size, &payload, config, &mut clock)?;
    // Each slot's ioctl sleeps for an SRCU grace period in the host kernel (milliseconds on a busy host). A
    // thread of its own to overlap it with the payload load was tried: with the payload mapped (well under a
    // millisecond) the thread's start cost more than it hid.
    vm::register_memory(&vm_fd, &guest_memory)?;
    clock.mark("KVM memory slots");

    let vcpus = (0..config.vcpus)
        .map(|i| vcpu::create(&kvm, &vm_fd, i, config.vcpus, boot, config.emulated_kvm))
        .collect::<Result<Vec<_>, _>>()?;
    vcpu::install_kick_handler().map_err(|source| BuildError::Event {
        what: "vCPU kick signal",
        source,
    })?;
    clock.mark("vCPU creation (CPUID, MSRs, registers, LAPIC)");

    let vcpu_stats = vcpus.iter().filter_map(vcpu::Vcpu::stats).collect();
    Ok(Vmm {
        vcpus,
        vcpu_stats,
        vm_fd,
        guest_memory,
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        exit,
        event_loop,
        boot_time,
        seccomp,
        start,
        setup_done: Instant::now(),
        phases: clock.phases().to_vec(),
        measure_memory: false,
    })
}

/// The payload, then the boot tables and the MP table.
fn load_payload(
    mem: &memory::GuestMemory,
    mem_size: u64,
    payload: &Payload,
    config: &VmConfig,
    clock: &mut PhaseClock,
) -> Result<loader::BootEntry, BuildError> {
    let boot = loader::load_timed(mem, mem_size, payload, clock)?;
    regs::write_boot_tables(mem, boot.mode)?;
    mptable::write(mem, config.vcpus)?;
    clock.mark("boot tables, MP table");
    Ok(boot)
}

/// The payload with the devices' `virtio_mmio.device=` entries appended to a kernel's command line.
fn with_device_cmdline(payload: &Payload, entries: &[String]) -> Result<Payload, BuildError> {
    match payload {
        Payload::Kernel {
            kernel,
            initrd,
            cmdline,
        } if !entries.is_empty() => {
            let words: Vec<&str> = entries.iter().map(String::as_str).collect();
            let cmdline = config::cmdline_with(cmdline, &words);
            if cmdline.len() >= crate::arch::layout::CMDLINE_MAX_SIZE {
                return Err(BuildError::Cmdline(config::Error::CmdlineTooLong(
                    cmdline.len(),
                )));
            }
            Ok(Payload::Kernel {
                kernel: kernel.clone(),
                initrd: initrd.clone(),
                cmdline,
            })
        }
        other => Ok(other.clone()),
    }
}

fn attach_block_devices(env: &mut DeviceEnv<'_>, config: &VmConfig) -> Result<(), BuildError> {
    for disk in &config.block {
        let backend = block::FileBackend::open(&disk.path, disk.read_only)?;
        let dev = block::Block::new(Box::new(backend), disk.read_only, &disk.id)?
            .with_rate_limit(config.block_rate)?;
        let slot = virtio::register_mmio_device(env, Arc::new(Mutex::new(dev)))?;
        tracing::debug!(path = %disk.path.display(), read_only = disk.read_only, "virtio-blk at {:#x}", slot.base);
    }
    Ok(())
}

/// Empty read-only disks, right after the configured ones, and the socket that fills them.
fn attach_block_slots(env: &mut DeviceEnv<'_>, config: &VmConfig) -> Result<(), BuildError> {
    let Some(cfg) = &config.block_slots else {
        return Ok(());
    };
    let mut slots = Vec::new();
    for i in 0..cfg.count {
        let dev = block::Block::new(Box::new(block::EmptyBackend), true, &format!("slot{i}"))?
            .with_rate_limit(config.block_rate)?;
        let dev = Arc::new(Mutex::new(dev));
        let slot = virtio::register_mmio_device(env, dev.clone())?;
        tracing::debug!("virtio-blk runtime slot {i} at {:#x}", slot.base);
        slots.push(dev);
    }
    let server = block::slots::SlotServer::bind(&cfg.uds_path, slots)?;
    env.event_loop.add_subscriber(Arc::new(Mutex::new(server)));
    Ok(())
}

fn attach_vsock_device(env: &mut DeviceEnv<'_>, config: &VmConfig) -> Result<(), BuildError> {
    if let Some(v) = &config.vsock {
        let backend = virtio::vsock::UnixBackend::bind(&v.uds_path)?;
        let dev = virtio::vsock::Vsock::new(v.guest_cid, Box::new(backend))?;
        let slot = virtio::register_mmio_device(env, Arc::new(Mutex::new(dev)))?;
        tracing::debug!(cid = v.guest_cid, uds = %v.uds_path.display(), "virtio-vsock at {:#x}", slot.base);
    }
    Ok(())
}

fn attach_net_device(env: &mut DeviceEnv<'_>, config: &VmConfig) -> Result<(), BuildError> {
    if let Some(n) = &config.net {
        let tap = virtio::net::Tap::open(&n.tap_name, n.netns.as_deref())?;
        let dev = virtio::net::Net::new(Box::new(tap), n.mac)?.with_rate_limit(config.net_rate)?;
        let slot = virtio::register_mmio_device(env, Arc::new(Mutex::new(dev)))?;
        tracing::debug!(tap = %n.tap_name, "virtio-net at {:#x}", slot.base);
    }
    Ok(())
}

fn attach_rng_device(env: &mut DeviceEnv<'_>, config: &VmConfig) -> Result<(), BuildError> {
    if config.rng {
        let dev = rng::Rng::new(Box::new(rng::Getrandom))?;
        virtio::register_mmio_device(env, Arc::new(Mutex::new(dev)))?;
    }
    Ok(())
}

fn attach_serial(
    vm_fd: &kvm_ioctls::VmFd,
    io_bus: &mut Bus,
    console: ConsoleOut,
) -> Result<(), BuildError> {
    let irq = EventFd::new(0).map_err(io_err("serial interrupt eventfd"))?;
    vm_fd
        .register_irqfd(&irq, SERIAL_GSI)
        .map_err(io_err("serial irqfd"))?;
    io_bus
        .insert(
            Arc::new(Mutex::new(SerialConsole::new(irq, console))),
            COM1_PORT,
            8,
        )
        .map_err(|e| BuildError::Bus("serial console", e))
}
