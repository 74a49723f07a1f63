//! Registers of the boot vCPU for each entry mode, and the boot tables (GDT, IDT, page tables) they point at.

use super::gdt::{self, CODE32_INDEX, CODE64_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
use crate::vstate::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// How the boot vCPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped first GiB, RSI = zero page.
    Linux64,
    /// 16-bit real mode at CS = 0 (VMM self-test guests).
    Real,
}

/// Errors writing the boot tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory too small for a boot table.
    #[error("failed to write the boot {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Writes the GDT, an empty IDT and (for long mode) identity page tables for the first GiB.
pub fn write_boot_tables(mem: &GuestMemory, mode: EntryMode) -> Result<(), Error> {
    for (i, entry) in gdt::boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(|e| Error::Write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| Error::Write("IDT", e))?;
    if mode != EntryMode::Real {
        write_page_tables(mem)?;
    }
    Ok(())
}

fn write_page_tables(mem: &GuestMemory) -> Result<(), Error> {
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|e| Error::Write("page tables", e))
    };
    // Present + writable; the PD maps 512 x 2 MiB pages (PS bit), enough for any kernel entry.
    w(PDPTE_START | 0x03, PML4_START)?;
    w(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

/// General-purpose registers for `mode` entering at `entry`.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Real => {}
    }
    regs
}

/// Special registers for `mode`, starting from what KVM reports (`sregs`).
pub fn boot_sregs(mode: EntryMode, mut sregs: kvm_sregs) -> kvm_sregs {
    let table = gdt::boot_gdt();
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    match mode {
        EntryMode::Real => {
            let seg = real_mode_segment();
            sregs.cs = seg;
            sregs.cs.type_ = 0xb;
            (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (seg, seg, seg, seg, seg);
            sregs.cr0 = X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Pvh | EntryMode::Linux64 => {
            let code = if mode == EntryMode::Pvh {
                CODE32_INDEX
            } else {
                CODE64_INDEX
            };
            let data = gdt::segment(&table, DATA_INDEX);
            sregs.cs = gdt::segment(&table, code);
            (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
            sregs.tr = gdt::segment(&table, TSS_INDEX);
            if mode == EntryMode::Pvh {
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
                sregs.cr4 = 0;
                sregs.efer = 0;
            } else {
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
                sregs.cr3 = PML4_START;
                sregs.cr4 = X86_CR4_PAE;
                sregs.efer = EFER_LME | EFER_LMA;
            }
        }
    }
    sregs
}

fn real_mode_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: 0x3,
        present: 1,
        s: 1,
        ..Default::default()
    }
}

/// The FPU as a reset CPU has it: x87 control word 0x37f, all SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory;

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let s = boot_sregs(EntryMode::Pvh, kvm_sregs::default());
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!((s.cs.db, s.cs.l), (1, 0));
        let r = boot_regs(EntryMode::Pvh, 0x1234);
        assert_eq!((r.rip, r.rbx), (0x1234, PVH_INFO_START));
    }

    #[test]
    fn linux64_enters_long_mode_with_zero_page() {
        let s = boot_sregs(EntryMode::Linux64, kvm_sregs::default());
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(boot_regs(EntryMode::Linux64, 0).rsi, ZERO_PAGE_START);
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = memory::create(64 << 20).unwrap();
        write_boot_tables(&mem, EntryMode::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn fpu_has_reset_control_words() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }
}
