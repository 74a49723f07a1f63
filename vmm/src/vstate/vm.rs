//! The KVM VM: /dev/kvm checks, guest memory slots, the in-kernel irqchip and PIT.

use crate::vstate::memory::GuestMemory;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::path::Path;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Where KVM lives.
pub const KVM_PATH: &str = "/dev/kvm";
/// The KVM API version every kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;
/// Capabilities the VMM cannot work without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::ExtCpuid, "CPUID2"),
];
/// Three pages below the IOAPIC, out of the way of RAM and MMIO (as Firecracker and QEMU place it).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is missing.
    #[error("{KVM_PATH} does not exist: this host offers no KVM (enable virtualization, or load kvm_intel/kvm_amd)")]
    NoKvm,
    /// /dev/kvm cannot be opened.
    #[error("failed to open {KVM_PATH} (run as root or as a member of the kvm group)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0} (expected {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability is missing.
    #[error("KVM lacks a capability mvrun needs: {0}")]
    MissingCap(&'static str),
    /// KVM_CREATE_VM failed.
    #[error("failed to create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// A VM-level setup ioctl failed.
    #[error("failed to {what}")]
    Setup {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be registered with KVM.
    #[error("failed to register guest memory slot {slot} with KVM")]
    MemorySlot {
        /// Slot index.
        slot: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Opens /dev/kvm and checks the API version and the capabilities the VMM relies on.
pub fn open_kvm() -> Result<Kvm, Error> {
    if !Path::new(KVM_PATH).exists() {
        return Err(Error::NoKvm);
    }
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(Error::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT; guest memory comes later
/// ([`register_memory`]).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(Error::CreateVm)?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(|source| Error::Setup {
            what: "set the TSS address",
            source,
        })?;
    vm.create_irq_chip().map_err(|source| Error::Setup {
        what: "create the in-kernel irqchip",
        source,
    })?;
    // The PIT drives the kernel's early timer calibration; the dummy speaker port keeps port 0x61 in KVM.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(|source| Error::Setup {
        what: "create the in-kernel PIT",
        source,
    })?;
    Ok(vm)
}

/// Registers every region of guest memory as a KVM memory slot.
///
/// Each KVM_SET_USER_MEMORY_REGION waits for an SRCU grace period in the host kernel, whatever the size.
pub fn register_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = mem
            .get_host_address(region.start_addr())
            .expect("a region's own start address is always mapped") as u64;
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the region describes a live mapping owned by `mem`, which the caller keeps alive for as long
        // as the VM exists (the Vmm holds both and drops the VM first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|source| Error::MemorySlot { slot, source })?;
    }
    Ok(())
}
