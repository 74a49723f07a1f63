//! The virtio device layer: one virtio-mmio transport and the devices behind it (blk, vsock, net, rng).
//!
//! Spec: "Virtual I/O Device (VIRTIO) Version 1.2", sections 2 (basic facilities), 4.2 (virtio over MMIO) and 5
//! (device types). There is no published rust-vmm `virtio-device` crate that matches our rust-vmm set, so the
//! transport and the shared plumbing here are ours and kept small; the split virtqueues themselves are
//! `virtio-queue`'s.
//!
//! Shape (after Firecracker and Cloud Hypervisor): [`transport::mmio::MmioTransport`] owns the register map and the
//! status machine and calls [`VirtioDevice::activate`] on DRIVER_OK, so devices never see MMIO offsets. Every device
//! keeps its virtio state in a [`VirtioCommon`] and runs in the VMM's one event loop: before activation only its
//! activate eventfd is watched; the queue eventfds (KVM ioeventfds on QUEUE_NOTIFY) and backend fds are added when it
//! activates. [`register_mmio_device`] places a device: MMIO slot, irqfd, ioeventfds, event-loop subscriber and the
//! `virtio_mmio.device=` command-line entry.
//!
//! Everything in a virtqueue is hostile: a request that is well formed but wrong gets an error status; a queue the
//! device cannot make sense of (avail index jumping past the queue size, a chain running out of guest memory, a loop,
//! a used ring that cannot be written) sets DEVICE_NEEDS_RESET and the device stops serving until the driver resets it.

pub mod block;
pub mod net;
pub mod rng;
pub mod transport;
pub mod vsock;

use crate::arch::layout::{
    IOAPIC_PINS, MMIO_SLOT_SIZE, VIRTIO_GSI_START, VIRTIO_MMIO_MAX_SLOTS, VIRTIO_MMIO_START,
};
use crate::devices::bus::Bus;
use crate::event_loop::EventLoop;
use crate::vstate::memory::GuestMemory;
use event_manager::{MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Constants from the virtio headers (include/uapi/linux/virtio_config.h, virtio_mmio.h, virtio_ids.h).
pub mod defs {
    /// Device status bits (virtio_config.h).
    pub mod status {
        /// The guest found the device.
        pub const ACKNOWLEDGE: u32 = 1;
        /// The guest has a driver for it.
        pub const DRIVER: u32 = 2;
        /// The driver is set up and ready.
        pub const DRIVER_OK: u32 = 4;
        /// Feature negotiation is complete.
        pub const FEATURES_OK: u32 = 8;
        /// The device hit an error it cannot recover from without a reset.
        pub const DEVICE_NEEDS_RESET: u32 = 0x40;
        /// The driver gave up on the device.
        pub const FAILED: u32 = 0x80;
    }
    /// Feature bit: virtio 1.x (modern) device (virtio_config.h VIRTIO_F_VERSION_1).
    pub const VIRTIO_F_VERSION_1: u32 = 32;
    /// Interrupt status bit: the used ring was updated (virtio_mmio.h VIRTIO_MMIO_INT_VRING).
    pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
    /// Interrupt status bit: the configuration changed (virtio_mmio.h VIRTIO_MMIO_INT_CONFIG).
    pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;
    /// Device IDs (virtio_ids.h).
    pub const TYPE_NET: u32 = 1;
    /// Block device.
    pub const TYPE_BLOCK: u32 = 2;
    /// Entropy source.
    pub const TYPE_RNG: u32 = 4;
    /// Socket device.
    pub const TYPE_VSOCK: u32 = 19;
    /// Offset of QUEUE_NOTIFY in the MMIO register page (virtio_mmio.h VIRTIO_MMIO_QUEUE_NOTIFY).
    pub const MMIO_QUEUE_NOTIFY: u64 = 0x50;
}

/// Errors of the virtio layer's shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An eventfd could not be created.
    #[error("failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// All virtio-mmio slots or GSIs are taken.
    #[error("no free virtio-mmio slot: at most {0} devices")]
    NoSlot(u64),
    /// KVM refused the irqfd.
    #[error("failed to register the irqfd for GSI {gsi}")]
    Irqfd {
        /// GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused an ioeventfd.
    #[error("failed to register the ioeventfd of queue {queue} at {addr:#x}")]
    Ioeventfd {
        /// Queue index.
        queue: usize,
        /// MMIO address.
        addr: u64,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MMIO slot could not be mapped.
    #[error("failed to map the virtio-mmio slot at {0:#x}")]
    Bus(u64, #[source] crate::devices::bus::Error),
    /// A queue size is not a power of two up to 32768.
    #[error("failed to create a virtqueue of size {0}")]
    QueueSize(u16, #[source] virtio_queue::Error),
}

/// Why a device could not be activated (the transport then sets DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not ready or lies outside guest memory.
    #[error("failed to activate: queue {0} is not ready or not in guest memory")]
    BadQueue(usize),
    /// The driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not served).
    #[error("failed to activate: the driver did not accept VIRTIO_F_VERSION_1")]
    NotModern,
    /// The activate eventfd could not be signalled.
    #[error("failed to signal activation")]
    Signal(#[source] std::io::Error),
    /// The device's backend refused.
    #[error("failed to activate the backend")]
    Backend(#[source] std::io::Error),
}

/// The device's interrupt: the MMIO InterruptStatus register and the irqfd KVM turns into the GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    fn new() -> Result<Self, Error> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
        })
    }

    /// Sets `bits` (`VIRTIO_MMIO_INT_*`) in InterruptStatus and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("failed to signal a virtio interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd (for registration, and for tests to watch).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Virtio state every device shares: features, queues, their notify eventfds, the interrupt, activation.
#[derive(Debug)]
pub struct VirtioCommon {
    /// Device ID (`defs::TYPE_*`).
    pub device_type: u32,
    /// Features the device offers.
    pub avail_features: u64,
    /// Features the driver accepted, always a subset of `avail_features`.
    pub acked_features: u64,
    /// The virtqueues, as the driver configured them.
    pub queues: Vec<Queue>,
    /// One eventfd per queue: KVM signals it when the guest writes the queue's index to QUEUE_NOTIFY.
    pub queue_evts: Vec<EventFd>,
    /// The interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Signalled by `activate` so the event loop starts watching the queues.
    pub activate_evt: EventFd,
    /// Guest memory, present once the device is active (behind an `Arc`, so taking it per notification is a
    /// reference count, not a copy of the region list).
    pub mem: Option<Arc<GuestMemory>>,
    needs_reset: bool,
    /// The ConfigGeneration register: bumped whenever the configuration space changes under the driver.
    config_generation: u32,
}

impl VirtioCommon {
    /// State for a device of `device_type` offering `features` (VERSION_1 is added) with queues of `queue_sizes`.
    pub fn new(device_type: u32, features: u64, queue_sizes: &[u16]) -> Result<Self, Error> {
        let queues = queue_sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|e| Error::QueueSize(s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = queue_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioCommon {
            device_type,
            avail_features: features | (1 << defs::VIRTIO_F_VERSION_1),
            acked_features: 0,
            queues,
            queue_evts,
            interrupt: Arc::new(Interrupt::new()?),
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            mem: None,
            needs_reset: false,
            config_generation: 0,
        })
    }

    /// Whether the driver accepted feature bit `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.acked_features & (1 << bit) != 0
    }

    /// Whether the device is active (DRIVER_OK seen, not reset since).
    pub fn is_activated(&self) -> bool {
        self.mem.is_some()
    }

    /// Whether the device gave up and waits for the driver to reset it.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Checks the queues, keeps `mem` and wakes the event loop. The common part of every `activate`.
    pub fn activate(&mut self, mem: GuestMemory) -> Result<(), ActivateError> {
        if !self.has_feature(defs::VIRTIO_F_VERSION_1) {
            return Err(ActivateError::NotModern);
        }
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::BadQueue(i));
        }
        self.mem = Some(Arc::new(mem));
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    /// Back to the state after power-on: queues cleared, features forgotten, not active.
    pub fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.acked_features = 0;
        self.mem = None;
        self.needs_reset = false;
        self.interrupt.ack(u32::MAX);
    }

    /// The device cannot go on: set DEVICE_NEEDS_RESET, tell the driver with a configuration interrupt, and stop
    /// serving (the device is no longer active). The VMM keeps running.
    pub fn set_needs_reset(&mut self, why: &str) {
        if !self.needs_reset {
            tracing::warn!(
                device_type = self.device_type,
                "virtio device needs reset: {why}"
            );
        }
        self.needs_reset = true;
        self.mem = None;
        self.interrupt.trigger(defs::VIRTIO_MMIO_INT_CONFIG);
    }

    /// The configuration space changed (a disk's capacity): bump ConfigGeneration, so a driver reading it across
    /// the change reads again, and send a configuration-change interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.trigger(defs::VIRTIO_MMIO_INT_CONFIG);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// Signals the used ring to the driver.
    pub fn signal_used(&self) {
        self.interrupt.trigger(defs::VIRTIO_MMIO_INT_VRING);
    }
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    /// Shared virtio state.
    fn common(&self) -> &VirtioCommon;
    /// Shared virtio state, mutable.
    fn common_mut(&mut self) -> &mut VirtioCommon;
    /// Reads the device-specific configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to the configuration space; the devices here have nothing writable.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "ignored write to read-only virtio config space"
        );
    }
    /// DRIVER_OK: start serving. The default checks the queues and wakes the event loop.
    fn activate(&mut self, mem: GuestMemory) -> Result<(), ActivateError> {
        self.common_mut().activate(mem)
    }
    /// The driver wrote 0 to Status: drop in-flight state. Devices with backend state override and call
    /// `common_mut().reset()`.
    fn reset(&mut self) {
        self.common_mut().reset();
    }
}

/// Copies the part of `config` at `offset` into `data` (zero beyond its end). For `read_config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Where a device landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base MMIO address.
    pub base: u64,
    /// GSI.
    pub gsi: u32,
    /// The kernel command-line entry announcing it.
    pub cmdline: String,
}

/// What [`register_mmio_device`] places devices into; the builder owns one for the whole VM.
pub struct DeviceEnv<'a> {
    /// The VM (irqfd, ioeventfd).
    pub vm_fd: &'a VmFd,
    /// Guest memory, handed to the transport.
    pub mem: &'a GuestMemory,
    /// The MMIO bus.
    pub mmio_bus: &'a mut Bus,
    /// The event loop.
    pub event_loop: &'a mut EventLoop,
    /// Devices placed so far (next slot index).
    pub placed: u64,
    /// `virtio_mmio.device=` entries, in slot order.
    pub cmdline: Vec<String>,
}

/// The MMIO base and GSI of slot `index`, or `None` past the last slot.
pub fn slot(index: u64) -> Option<(u64, u32)> {
    let gsi = VIRTIO_GSI_START.checked_add(u32::try_from(index).ok()?)?;
    (index < VIRTIO_MMIO_MAX_SLOTS && gsi < IOAPIC_PINS)
        .then(|| (VIRTIO_MMIO_START + index * MMIO_SLOT_SIZE, gsi))
}

/// Places `device` in the next virtio-mmio slot: the irqfd on its GSI, one ioeventfd per queue on QUEUE_NOTIFY
/// (matching the queue index), the transport on the MMIO bus, the device in the event loop, and its
/// `virtio_mmio.device=4K@<base>:<gsi>` entry.
pub fn register_mmio_device<D>(
    env: &mut DeviceEnv<'_>,
    device: Arc<Mutex<D>>,
) -> Result<MmioSlot, Error>
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let (base, gsi) = slot(env.placed).ok_or(Error::NoSlot(VIRTIO_MMIO_MAX_SLOTS))?;
    {
        let dev = device.lock().unwrap_or_else(|p| p.into_inner());
        let common = dev.common();
        env.vm_fd
            .register_irqfd(common.interrupt.irqfd(), gsi)
            .map_err(|source| Error::Irqfd { gsi, source })?;
        let addr = base + defs::MMIO_QUEUE_NOTIFY;
        for (queue, evt) in common.queue_evts.iter().enumerate() {
            env.vm_fd
                .register_ioevent(evt, &IoEventAddress::Mmio(addr), queue as u32)
                .map_err(|source| Error::Ioeventfd {
                    queue,
                    addr,
                    source,
                })?;
        }
    }
    let transport = transport::mmio::MmioTransport::new(device.clone(), env.mem.clone());
    env.mmio_bus
        .insert(Arc::new(Mutex::new(transport)), base, MMIO_SLOT_SIZE)
        .map_err(|e| Error::Bus(base, e))?;
    env.event_loop.add_subscriber(device);
    env.placed += 1;
    let cmdline = format!("virtio_mmio.device=4K@{base:#x}:{gsi}");
    env.cmdline.push(cmdline.clone());
    Ok(MmioSlot { base, gsi, cmdline })
}

/// Event-loop tokens the device handlers share: the activate eventfd; queue `i` uses `PROCESS_QUEUE_BASE + i`;
/// backends use their own tokens from `PROCESS_BACKEND` up.
pub mod tokens {
    /// The activate eventfd.
    pub const PROCESS_ACTIVATE: u32 = 0;
    /// Queue 0's notify eventfd; queue `i` is `PROCESS_QUEUE_BASE + i`.
    pub const PROCESS_QUEUE_BASE: u32 = 1;
    /// First token for a backend's own fds.
    pub const PROCESS_BACKEND: u32 = 100;
    /// The rate limiter's timer (a device with two limiters uses the next token for the second).
    pub const PROCESS_RATE_LIMITER: u32 = 200;
}

/// Registers the queue eventfds of an activated device with the event loop, once (a device re-activated after a
/// reset keeps its fds registered). Returns false when the loop refused one (logged).
pub fn watch_queues(
    common: &VirtioCommon,
    ops: &mut event_manager::EventOps,
    watched: &mut bool,
) -> bool {
    if *watched {
        return true;
    }
    for (i, evt) in common.queue_evts.iter().enumerate() {
        let ev = event_manager::Events::with_data(
            evt,
            tokens::PROCESS_QUEUE_BASE + i as u32,
            vmm_sys_util::epoll::EventSet::IN,
        );
        if let Err(e) = ops.add(ev) {
            tracing::error!("failed to watch virtqueue {i}: {e:?}");
            return false;
        }
    }
    *watched = true;
    true
}

/// Takes one descriptor chain off `queue`, telling apart "nothing more" (`Ok(None)`) and a broken available ring
/// (`Err`), which `pop_descriptor_chain` would hide.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
) -> Result<Option<virtio_queue::DescriptorChain<&'m GuestMemory>>, virtio_queue::Error> {
    use virtio_queue::QueueOwnedT;
    Ok(queue.iter(mem)?.next())
}

#[cfg(test)]
pub mod test_utils;
