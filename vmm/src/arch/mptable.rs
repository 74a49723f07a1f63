//! The Intel MultiProcessor Specification 1.4 table: how an ACPI-less guest finds its CPUs and IOAPIC.
//!
//! Linux scans the EBDA for the floating pointer (arch/x86/kernel/mpparse.c). Records are serialized field by
//! field in little-endian order (layouts from arch/x86/include/asm/mpspec_def.h) rather than through packed
//! structs, so no unsafe byte casts are needed.

use super::layout::{APIC_START, EBDA_START, IOAPIC_PINS, IOAPIC_START};
use crate::vstate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// The EBDA window the table must fit in (0x9fc00..0xa0000).
const EBDA_SIZE: usize = 0x400;
const MPC_SPEC_1_4: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const BUS_ISA: u8 = 0;
/// Header sizes: `mpf_intel` 16, `mpc_table` 44; every other record is 8 bytes but `mpc_cpu` (20).
const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;

/// The most vCPUs whose table fits in the EBDA.
pub const MAX_CPUS: u8 = 32;

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More vCPUs than the EBDA has room for.
    #[error("an MP table for {0} vCPUs does not fit in the EBDA (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// Guest memory does not cover the EBDA.
    #[error("failed to write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Builds the floating pointer and the configuration table for `num_cpus` CPUs, as placed at `EBDA_START`.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, Error> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries = Vec::new();
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        // cpufeature: family 6 stepping 0x600; featureflag: FPU | APIC.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&((1u32 << 0) | (1 << 9)).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, BUS_ISA, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, BUS_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, BUS_ISA, 0, 0xff, 1]);

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(MPF_SIZE + table_len);
    // mpf_intel
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&((EBDA_START as u32) + MPF_SIZE as u32).to_le_bytes());
    table.extend_from_slice(&[1, MPC_SPEC_1_4, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table[..MPF_SIZE]);
    // mpc_table
    let start = table.len();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC_1_4, 0]);
    table.extend_from_slice(b"MVRUN   ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0u8; 8]); // oemptr, oemsize, oemcount
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0u8; 4]);
    table.extend_from_slice(&entries);
    table[start + 7] = checksum(&table[start..]);
    if table.len() > EBDA_SIZE {
        return Err(Error::TooManyCpus(num_cpus));
    }
    Ok(table)
}

/// Writes the table for `num_cpus` CPUs into the EBDA.
pub fn write(mem: &GuestMemory, num_cpus: u8) -> Result<(), Error> {
    let table = build(num_cpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(Error::Write)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_lengths_are_valid() {
        for n in [1u8, 2, 8, MAX_CPUS] {
            let t = build(n).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..MPF_SIZE]), 0);
            let mpc = &t[MPF_SIZE..];
            assert_eq!(&mpc[..4], b"PCMP");
            assert_eq!(u16::from_le_bytes([mpc[4], mpc[5]]) as usize, mpc.len());
            assert_eq!(sum(mpc), 0);
            assert!(t.len() <= EBDA_SIZE);
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_and_first_is_bsp() {
        let t = build(4).unwrap();
        let entries = &t[MPF_SIZE + MPC_HEADER_SIZE..];
        for id in 0..4usize {
            let e = &entries[id * 20..id * 20 + 20];
            assert_eq!((e[0], e[1]), (MP_PROCESSOR, id as u8));
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, id == 0);
        }
        assert_eq!(entries[80], MP_BUS);
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = build(1).unwrap();
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), EBDA_START + MPF_SIZE as u64);
    }

    #[test]
    fn zero_or_too_many_cpus_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
