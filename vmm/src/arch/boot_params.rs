//! What the guest kernel reads at entry: the e820 memory map, and either the Linux zero page (64-bit boot
//! protocol, Documentation/arch/x86/zero-page.rst) or PVH's `hvm_start_info` (xen/include/public/arch-x86/hvm/
//! start_info.h).

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIGH_MEMORY_START, MMIO_END, MMIO_START,
    PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::vstate::memory::GuestMemory;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader type: Documentation/arch/x86/boot.rst asks a loader without an assigned ID for 0xff.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Zero-page `loadflags` bit: the kernel is loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;

/// Errors writing boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The zero page could not be written.
    #[error("failed to write the zero page")]
    ZeroPage(#[source] vm_memory::GuestMemoryError),
    /// linux-loader's PVH configurator refused.
    #[error("failed to write the PVH start info")]
    Pvh(#[source] linux_loader::configurator::Error),
    /// Too many e820 entries for the zero page.
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyE820(usize),
}

/// One RAM range of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The guest's usable RAM: low memory below the EBDA, then from 1 MiB to the MMIO hole, then above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<RamRange> {
    let mut map = vec![RamRange {
        addr: 0,
        size: EBDA_START,
    }];
    let low_end = mem_size.min(MMIO_START);
    if low_end > HIGH_MEMORY_START {
        map.push(RamRange {
            addr: HIGH_MEMORY_START,
            size: low_end - HIGH_MEMORY_START,
        });
    }
    if mem_size > MMIO_START {
        map.push(RamRange {
            addr: MMIO_END,
            size: mem_size - MMIO_START,
        });
    }
    map
}

/// Writes the zero page for the 64-bit Linux boot protocol. `header` is the bzImage's own setup header, if any.
pub fn write_zero_page(
    mem: &GuestMemory,
    mem_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len.min(CMDLINE_MAX_SIZE) as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::TooManyE820(map.len()));
    }
    for (slot, range) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: range.addr,
            size: range.size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(Error::ZeroPage)
}

/// Writes `hvm_start_info`, its memory map and (with an initrd) its module list for the PVH entry.
pub fn write_pvh_start_info(
    mem: &GuestMemory,
    mem_size: u64,
    initrd: Option<InitrdPlacement>,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.addr,
            size: r.size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(Error::Pvh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory;

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[0],
            RamRange {
                addr: 0,
                size: EBDA_START
            }
        );
        assert_eq!(map[1].addr, HIGH_MEMORY_START);
        assert_eq!(map[1].addr + map[1].size, 128 << 20);
    }

    #[test]
    fn e820_large_guest_continues_above_4g() {
        let map = e820_map(6 << 30);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_START);
        assert_eq!(map[2].addr, MMIO_END);
        assert_eq!(
            map.iter().map(|r| r.size).sum::<u64>(),
            (6 << 30) - (HIGH_MEMORY_START - EBDA_START)
        );
    }

    #[test]
    fn zero_page_holds_cmdline_initrd_and_memory_map() {
        let mem = memory::create(64 << 20).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x300_0000,
            size: 0x1234,
        };
        write_zero_page(&mem, 64 << 20, None, 42, Some(initrd)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(hdr.type_of_loader, KERNEL_LOADER_OTHER);
        assert_eq!(p.e820_entries, 2);
        let last = p.e820_table[1];
        assert_eq!({ last.addr } + { last.size }, 64 << 20);
    }

    #[test]
    fn pvh_start_info_has_magic_memmap_and_module() {
        let mem = memory::create(64 << 20).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x300_0000,
            size: 0x2000,
        };
        write_pvh_start_info(&mem, 64 << 20, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 0x2000));
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 16 + 8))
            .unwrap();
        assert_eq!(e.addr, HIGH_MEMORY_START);
    }
}
