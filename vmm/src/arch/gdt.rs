//! The boot GDT and the KVM segment registers made from it.
//!
//! One table serves every entry mode. The Linux 64-bit boot protocol (Documentation/arch/x86/boot.rst) asks for
//! flat segments at __BOOT_CS = 0x10 and __BOOT_DS = 0x18; PVH (xen/include/public/arch-x86/hvm/start_info.h)
//! only asks for flat 32-bit ones, so it gets its own code descriptor at 0x28.

use kvm_bindings::kvm_segment;

/// 64-bit code: present, DPL 0, execute/read, long mode, 4 KiB granularity.
const CODE64: u16 = 0xa09b;
/// Flat data: present, DPL 0, read/write, 32-bit, 4 KiB granularity.
const DATA: u16 = 0xc093;
/// Busy 64-bit TSS: KVM requires a usable TR on entry.
const TSS: u16 = 0x808b;
/// 32-bit code: present, DPL 0, execute/read, 32-bit default size, 4 KiB granularity.
const CODE32: u16 = 0xc09b;

/// GDT index of the 64-bit code segment (selector 0x10).
pub const CODE64_INDEX: u8 = 2;
/// GDT index of the data segment (selector 0x18).
pub const DATA_INDEX: u8 = 3;
/// GDT index of the TSS (selector 0x20).
pub const TSS_INDEX: u8 = 4;
/// GDT index of the 32-bit code segment for PVH (selector 0x28).
pub const CODE32_INDEX: u8 = 5;

/// The table the VMM writes at `BOOT_GDT_START`.
pub fn boot_gdt() -> [u64; 6] {
    [
        0,
        0,
        entry(CODE64, 0, 0xfffff),
        entry(DATA, 0, 0xfffff),
        entry(TSS, 0, 0xfffff),
        entry(CODE32, 0, 0xfffff),
    ]
}

/// Encodes one descriptor (Intel SDM vol. 3, 3.4.5).
pub fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The KVM segment register equivalent of GDT entry `index` of `table`.
pub fn segment(table: &[u64], index: u8) -> kvm_segment {
    let e = table[usize::from(index)];
    let base = ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000);
    let raw_limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let g = ((e >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 0x3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_flat_long_mode() {
        let gdt = boot_gdt();
        let cs = segment(&gdt, CODE64_INDEX);
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
    }

    #[test]
    fn code32_and_data_segments_are_flat_32_bit() {
        let gdt = boot_gdt();
        let cs = segment(&gdt, CODE32_INDEX);
        assert_eq!(
            (cs.l, cs.db, cs.limit, cs.selector),
            (0, 1, 0xffff_ffff, 0x28)
        );
        let ds = segment(&gdt, DATA_INDEX);
        assert_eq!((ds.type_, ds.db, ds.selector), (0x3, 1, 0x18));
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = entry(0xc093, 0x1234_5678, 0xabcde);
        let s = segment(&[e], 0);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, (0xabcde << 12) | 0xfff);
    }

    #[test]
    fn tss_is_a_busy_system_segment() {
        let t = segment(&boot_gdt(), TSS_INDEX);
        assert_eq!((t.s, t.type_, t.present), (0, 0xb, 1));
    }
}
