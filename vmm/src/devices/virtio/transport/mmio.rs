//! The virtio-mmio transport, modern (version 2) register layout only: virtio 1.2 section 4.2.2.
//!
//! Ours because no published crate provides one for our rust-vmm set; it is the only code that knows register
//! offsets. It runs the device status machine from a table of legal transitions, negotiates features (the acked set
//! is always masked by what the device offers), lets the driver configure the queues only between FEATURES_OK and
//! DRIVER_OK, and activates the device on DRIVER_OK. A refused write is logged and counted and changes nothing.

use crate::devices::bus::BusDevice;
use crate::devices::virtio::defs::{status, VIRTIO_F_VERSION_1};
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemory;
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::QueueT;

/// "virt" in little endian (VIRTIO_MMIO_MAGIC_VALUE).
const MAGIC: u32 = 0x7472_6976;
/// The modern register layout.
const VERSION: u32 = 2;
/// Vendor ID: none registered; QEMU's "QEMU" is 0x554d4551, ours is "mvrn".
const VENDOR_ID: u32 = 0x6e72_766d;
/// Device-specific configuration starts here.
const CONFIG_SPACE: u64 = 0x100;

/// Register offsets (include/uapi/linux/virtio_mmio.h).
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

const A: u32 = status::ACKNOWLEDGE;
const D: u32 = status::DRIVER;
const F: u32 = status::FEATURES_OK;
const OK: u32 = status::DRIVER_OK;

/// The legal status writes besides reset (0) and setting FAILED: each step adds one bit, in the order of virtio
/// 1.2 section 3.1.1.
const VALID_TRANSITIONS: &[(u32, u32)] = &[
    (0, A),
    (A, A | D),
    (A | D, A | D | F),
    (A | D | F, A | D | F | OK),
];

/// One virtio-mmio slot: the registers, the status machine, and the device behind it.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    status: u32,
    features_sel: u32,
    acked_features_sel: u32,
    queue_sel: u32,
    refused: u64,
}

impl MmioTransport {
    /// A transport for `device` in a VM with `mem`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemory) -> Self {
        MmioTransport {
            device,
            mem,
            status: 0,
            features_sel: 0,
            acked_features_sel: 0,
            queue_sel: 0,
            refused: 0,
        }
    }

    fn dev(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.dev().common().needs_reset() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// How many driver writes were refused (illegal transition, write in the wrong phase, bad width).
    pub fn refused_writes(&self) -> u64 {
        self.refused
    }

    fn refuse(&mut self, what: &str, offset: u64, value: u32) {
        self.refused += 1;
        // The guest decides how often this happens: warn once, then only at debug level, so a hostile driver
        // cannot flood the VMM's log.
        if self.refused == 1 {
            tracing::warn!(
                offset,
                value,
                status = self.status,
                "refused virtio-mmio write: {what}"
            );
        } else {
            tracing::debug!(
                offset,
                value,
                status = self.status,
                "refused virtio-mmio write: {what}"
            );
        }
    }

    fn in_phase(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // FAILED may be set at any time; the device then stays as it is until reset.
        if value == self.status | status::FAILED {
            self.status = value;
            return;
        }
        if !VALID_TRANSITIONS.contains(&(self.status, value)) {
            self.refuse("illegal status transition", reg::STATUS, value);
            return;
        }
        let new_bit = value & !self.status;
        let mut dev = self.device.lock().unwrap_or_else(|p| p.into_inner());
        match new_bit {
            status::FEATURES_OK if !dev.common().has_feature(VIRTIO_F_VERSION_1) => {
                // Modern only: leaving FEATURES_OK clear tells the driver its feature set is refused.
                drop(dev);
                self.refuse(
                    "driver did not accept VIRTIO_F_VERSION_1",
                    reg::STATUS,
                    value,
                );
                return;
            }
            status::DRIVER_OK => {
                if let Err(e) = dev.activate(self.mem.clone()) {
                    tracing::warn!("virtio device type {}: {e}", dev.common().device_type);
                    dev.common_mut().set_needs_reset("activation failed");
                }
            }
            _ => {}
        }
        drop(dev);
        self.status = value;
    }

    fn reset(&mut self) {
        self.dev().reset();
        self.status = 0;
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.queue_sel = 0;
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let dev = self.dev();
        let common = dev.common();
        let queue = common.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => common.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.features_sel {
                0 => common.avail_features as u32,
                1 => (common.avail_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => common.interrupt.status(),
            reg::STATUS => {
                drop(dev);
                self.status()
            }
            reg::CONFIG_GENERATION => common.config_generation(),
            _ => {
                tracing::debug!(offset, "read of an unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Queue registers belong to the set-up phase: after FEATURES_OK, before DRIVER_OK.
        let queue_phase = self.in_phase(F, OK | status::FAILED);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.acked_features_sel = v,
            reg::DRIVER_FEATURES if self.in_phase(D, F | status::FAILED) => {
                let shift = match self.acked_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mut dev = self.dev();
                let common = dev.common_mut();
                let page = u64::from(u32::MAX) << shift;
                // Bits the device did not offer are dropped here, so nothing downstream can see them.
                let accepted = (u64::from(v) << shift) & common.avail_features;
                common.acked_features = (common.acked_features & !page) | accepted;
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH
                if queue_phase =>
            {
                let sel = self.queue_sel as usize;
                let mut dev = self.dev();
                let Some(q) = dev.common_mut().queues.get_mut(sel) else {
                    drop(dev);
                    self.refuse("no such queue", offset, v);
                    return;
                };
                match offset {
                    // virtio-queue ignores a size that is not a power of two up to the maximum.
                    reg::QUEUE_NUM => q.set_size(v as u16),
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            reg::QUEUE_NOTIFY => {
                // Normally KVM's ioeventfd catches this write; without one (tests) it arrives here.
                let dev = self.dev();
                match dev.common().queue_evts.get(v as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            tracing::warn!("failed to signal queue {v}: {e}");
                        }
                    }
                    None => {
                        drop(dev);
                        self.refuse("notify of a queue that does not exist", offset, v);
                    }
                }
            }
            reg::INTERRUPT_ACK => self.dev().common().interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => self.refuse(
                "read-only, unknown, or written in the wrong phase",
                offset,
                v,
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.dev().read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and 32-bit aligned (4.2.2.2); anything else reads as zero.
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & status::DRIVER != 0 {
                self.dev().write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.refuse("register access is not 32 bits wide", offset, 0);
            return;
        };
        if offset % 4 != 0 {
            self.refuse("unaligned register access", offset, 0);
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{DummyDevice, TestMem};
    use crate::devices::virtio::VirtioCommon;

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (MmioTransport, Arc<Mutex<DummyDevice>>, TestMem) {
        let mem = TestMem::new();
        let dev = Arc::new(Mutex::new(DummyDevice::new()));
        let t = MmioTransport::new(dev.clone(), mem.mem.clone());
        (t, dev, mem)
    }

    /// Drives the driver side up to FEATURES_OK with `features` and sets up every queue in `mem`.
    fn negotiate(t: &mut MmioTransport, mem: &TestMem, features: u64) {
        w(t, reg::STATUS, A);
        w(t, reg::STATUS, A | D);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        w(t, reg::STATUS, A | D | F);
        let n = t.dev().common().queues.len();
        for i in 0..n {
            let (desc, avail, used) = mem.queue_addrs(i);
            w(t, reg::QUEUE_SEL, i as u32);
            w(t, reg::QUEUE_NUM, 16);
            w(t, reg::QUEUE_DESC_LOW, desc as u32);
            w(t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            w(t, reg::QUEUE_AVAIL_LOW, avail as u32);
            w(t, reg::QUEUE_AVAIL_HIGH, 0);
            w(t, reg::QUEUE_USED_LOW, used as u32);
            w(t, reg::QUEUE_USED_HIGH, 0);
            w(t, reg::QUEUE_READY, 1);
        }
    }

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), DummyDevice::TYPE);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            r(&mut t, reg::DEVICE_FEATURES),
            DummyDevice::FEATURES as u32
        );
        w(&mut t, reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
        // Narrow and unaligned register reads read as zero; config space allows any width.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        let mut c = [0u8; 2];
        t.read(CONFIG_SPACE + 1, &mut c);
        assert_eq!(c, [0xa1, 0xa2]);
    }

    #[test]
    fn the_normal_sequence_activates_on_driver_ok() {
        let (mut t, dev, mem) = transport();
        negotiate(&mut t, &mem, V1 | 1);
        assert!(!dev.lock().unwrap().common().is_activated());
        w(&mut t, reg::STATUS, A | D | F | OK);
        assert_eq!(r(&mut t, reg::STATUS), A | D | F | OK);
        let d = dev.lock().unwrap();
        assert!(d.common().is_activated());
        assert_eq!(d.activations, 1);
        assert_eq!(d.common().acked_features, V1 | 1);
        assert_eq!(t.refused_writes(), 0);
    }

    #[test]
    fn every_illegal_status_transition_is_refused() {
        let legal = |from: u32, to: u32| {
            to == 0 || to == from | status::FAILED || VALID_TRANSITIONS.contains(&(from, to))
        };
        let reachable = [0, A, A | D, A | D | F, A | D | F | OK];
        let candidates = [
            0,
            A,
            D,
            F,
            OK,
            A | D,
            A | F,
            A | OK,
            A | D | F,
            A | D | OK,
            A | D | F | OK,
            0x40,
            0x3f,
            0xff,
        ];
        for (depth, &from) in reachable.iter().enumerate() {
            for &to in &candidates {
                let (mut t, dev, mem) = transport();
                // Walk to `from` the legal way.
                if depth >= 1 {
                    w(&mut t, reg::STATUS, A);
                }
                if depth >= 2 {
                    w(&mut t, reg::STATUS, A | D);
                    w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
                    w(&mut t, reg::DRIVER_FEATURES, 1);
                }
                if depth >= 3 {
                    w(&mut t, reg::STATUS, A | D | F);
                    for i in 0..2u32 {
                        let (desc, avail, used) = mem.queue_addrs(i as usize);
                        w(&mut t, reg::QUEUE_SEL, i);
                        w(&mut t, reg::QUEUE_DESC_LOW, desc as u32);
                        w(&mut t, reg::QUEUE_AVAIL_LOW, avail as u32);
                        w(&mut t, reg::QUEUE_USED_LOW, used as u32);
                        w(&mut t, reg::QUEUE_READY, 1);
                    }
                }
                if depth >= 4 {
                    w(&mut t, reg::STATUS, A | D | F | OK);
                }
                assert_eq!(r(&mut t, reg::STATUS), from);
                let before = t.refused_writes();
                w(&mut t, reg::STATUS, to);
                let now = r(&mut t, reg::STATUS);
                if legal(from, to) {
                    assert_eq!(now, to, "{from:#x} -> {to:#x} is legal");
                } else {
                    assert_eq!(now, from, "{from:#x} -> {to:#x} must be refused");
                    assert_eq!(t.refused_writes(), before + 1);
                    let activated = dev.lock().unwrap().common().is_activated();
                    assert_eq!(activated, from == A | D | F | OK);
                }
            }
        }
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let (mut t, dev, mem) = transport();
        negotiate(&mut t, &mem, 1);
        assert_eq!(r(&mut t, reg::STATUS), A | D, "FEATURES_OK must stay clear");
        w(&mut t, reg::STATUS, A | D | F | OK);
        assert!(!dev.lock().unwrap().common().is_activated());
    }

    #[test]
    fn unoffered_feature_bits_are_never_accepted_and_features_freeze_after_features_ok() {
        let (mut t, dev, mem) = transport();
        negotiate(&mut t, &mem, u64::MAX);
        let acked = dev.lock().unwrap().common().acked_features;
        assert_eq!(acked, DummyDevice::FEATURES | V1);
        // After FEATURES_OK the driver cannot change its mind.
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 0);
        assert_eq!(dev.lock().unwrap().common().acked_features, acked);
        assert!(t.refused_writes() >= 1);
        // Bit 1 was offered but is not accepted by a driver that leaves it out.
        let (mut t, dev, mem) = transport();
        negotiate(&mut t, &mem, V1);
        assert!(!dev.lock().unwrap().common().has_feature(0));
    }

    #[test]
    fn queue_registers_only_in_the_setup_phase() {
        let (mut t, dev, mem) = transport();
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0, "before FEATURES_OK");
        negotiate(&mut t, &mem, V1);
        w(&mut t, reg::STATUS, A | D | F | OK);
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_DESC_LOW, 0xdead_0000);
        let desc = dev.lock().unwrap().common().queues[0].desc_table();
        assert_eq!(desc, mem.queue_addrs(0).0, "after DRIVER_OK");
        // A queue that does not exist.
        let (mut t, _, mem) = transport();
        negotiate(&mut t, &mem, V1);
        let before = t.refused_writes();
        w(&mut t, reg::QUEUE_SEL, 9);
        w(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        assert_eq!(t.refused_writes(), before + 1);
    }

    #[test]
    fn a_queue_outside_guest_memory_sets_needs_reset_on_driver_ok() {
        let (mut t, dev, mem) = transport();
        negotiate(&mut t, &mem, V1);
        w(&mut t, reg::QUEUE_SEL, 1);
        w(&mut t, reg::QUEUE_READY, 0);
        w(&mut t, reg::QUEUE_USED_LOW, 0xffff_f000);
        w(&mut t, reg::QUEUE_USED_HIGH, 0xffff);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, A | D | F | OK);
        assert_eq!(
            r(&mut t, reg::STATUS),
            A | D | F | OK | status::DEVICE_NEEDS_RESET
        );
        assert!(!dev.lock().unwrap().common().is_activated());
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & 2, 2, "config interrupt");
        // The driver resets and starts over; the device works again.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        negotiate(&mut t, &mem, V1);
        w(&mut t, reg::STATUS, A | D | F | OK);
        assert!(dev.lock().unwrap().common().is_activated());
    }

    #[test]
    fn reset_clears_device_state_and_failed_sticks() {
        let (mut t, dev, mem) = transport();
        negotiate(&mut t, &mem, V1 | 1);
        w(&mut t, reg::STATUS, A | D | F | OK);
        w(&mut t, reg::STATUS, 0);
        {
            let d = dev.lock().unwrap();
            assert!(!d.common().is_activated());
            assert_eq!(d.common().acked_features, 0);
            assert!(!d.common().queues[0].ready());
            assert_eq!(d.resets, 1);
        }
        w(&mut t, reg::STATUS, A);
        w(&mut t, reg::STATUS, A | status::FAILED);
        w(&mut t, reg::STATUS, A | D);
        assert_eq!(r(&mut t, reg::STATUS), A | status::FAILED);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, dev, _) = transport();
        dev.lock().unwrap().common().signal_used();
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 1);
        assert_eq!(
            dev.lock()
                .unwrap()
                .common()
                .interrupt
                .irqfd()
                .read()
                .unwrap(),
            1
        );
        w(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_notify_without_ioeventfd_signals_the_queue() {
        let (mut t, dev, _) = transport();
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(
            dev.lock().unwrap().common().queue_evts[1].read().unwrap(),
            1
        );
        let before = t.refused_writes();
        w(&mut t, reg::QUEUE_NOTIFY, 1000);
        assert_eq!(t.refused_writes(), before + 1);
    }

    #[test]
    fn odd_writes_do_not_panic() {
        let (mut t, _, _) = transport();
        t.write(reg::STATUS, &[1]);
        t.write(reg::STATUS + 1, &[1, 0, 0, 0]);
        t.write(u64::MAX, &[1, 2, 3, 4, 5, 6, 7, 8]);
        t.write(reg::MAGIC_VALUE, &0u32.to_le_bytes());
        t.read(u64::MAX, &mut [0u8; 8]);
        t.read(0, &mut []);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), MAGIC);
        let _ = VirtioCommon::new(1, 0, &[3]).unwrap_err();
    }
}
