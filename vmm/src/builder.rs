//! Builds a VM from a [`VmConfig`], straight through: KVM, memory, payload, MP table, devices, vCPUs.
//! The order is fixed so port and MMIO addresses and GSIs stay the same from run to run.

use crate::arch::layout::{BOOT_TIMER_START, MMIO_SLOT_SIZE, SERIAL_GSI};
use crate::arch::{mptable, regs};
use crate::config::{self, VmConfig};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{self, Bus};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{ConsoleOut, SerialConsole};
use crate::devices::legacy::{COM1_PORT, I8042_PORT};
use crate::event_loop::{EventLoop, ExitWatcher};
use crate::exit::ExitSignal;
use crate::vstate::{memory, vcpu, vm};
use crate::{loader, Vmm};
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
    config.validate()?;
    let kvm = vm::open_kvm()?;
    let mem_size = config.mem_bytes();
    let guest_memory = memory::create(mem_size)?;
    let vm_fd = vm::create_vm(&kvm, &guest_memory)?;

    let boot = loader::load(&guest_memory, mem_size, &config.payload)?;
    regs::write_boot_tables(&guest_memory, boot.mode)?;
    mptable::write(&guest_memory, config.vcpus)?;

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

    let vcpus = (0..config.vcpus)
        .map(|i| vcpu::create(&kvm, &vm_fd, i, config.vcpus, boot))
        .collect::<Result<Vec<_>, _>>()?;
    vcpu::install_kick_handler().map_err(|source| BuildError::Event {
        what: "vCPU kick signal",
        source,
    })?;

    let mut event_loop = EventLoop::new().map_err(io_err("event loop"))?;
    event_loop.add_subscriber(Arc::new(Mutex::new(ExitWatcher::new(exit.clone()))));

    Ok(Vmm {
        vcpus,
        vm_fd,
        guest_memory,
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        exit,
        event_loop,
        boot_time,
        start,
        setup_done: Instant::now(),
    })
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
