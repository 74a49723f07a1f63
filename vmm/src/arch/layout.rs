//! The guest-physical memory map of an mvrun microVM (x86_64).
//!
//! Low memory holds the boot structures at fixed addresses, the kernel loads at 1 MiB (bzImage) or where its ELF
//! headers say (vmlinux: 16 MiB), and a 32-bit MMIO hole below 4 GiB holds the boot timer, the virtio-mmio devices,
//! the IOAPIC and the LAPICs. RAM that does not fit below the hole continues at 4 GiB.

/// GDT used for the boot protocols' flat segments.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty: the kernel installs its own before it enables interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// `hvm_start_info` for the PVH entry.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The Linux zero page (`boot_params`) for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x8000;
/// Identity-mapped page tables for the 64-bit entry: PML4, PDPT, PD (1 GiB with 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory.
pub const PDE_START: u64 = 0xb000;
/// Initial stack pointer for the 64-bit entry (grows down from below the EBDA).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The largest command line x86 Linux accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table lives; reserved in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy ISA hole: kernels and the rest of RAM.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Raw self-test guests load here.
pub const RAW_CODE_START: u64 = 0x1000;

/// Start of the 32-bit MMIO hole.
pub const MMIO_START: u64 = 0xd000_0000;
/// The Firecracker-style boot timer (one page).
pub const BOOT_TIMER_START: u64 = MMIO_START;
/// Size of each MMIO device slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = MMIO_START + MMIO_SLOT_SIZE;
/// The highest number of virtio-mmio slots; keeps slot addresses clear of the IOAPIC.
pub const VIRTIO_MMIO_MAX_SLOTS: u64 = 32;
/// The IOAPIC's MMIO base (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// End of the 32-bit MMIO hole: RAM resumes at 4 GiB.
pub const MMIO_END: u64 = 1 << 32;

/// GSI of COM1.
pub const SERIAL_GSI: u32 = 4;
/// First GSI handed to virtio-mmio devices (the legacy ISA ones below stay free).
pub const VIRTIO_GSI_START: u32 = 5;
/// The IOAPIC of KVM's in-kernel irqchip has 24 pins.
pub const IOAPIC_PINS: u32 = 24;
