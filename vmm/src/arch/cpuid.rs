//! CPUID for each vCPU: KVM's supported set, with the topology leaves made per-vCPU.
//!
//! Guests learn their APIC ID and the CPU count from leaves 0x1, 0x4, 0xb and 0x1f; KVM reports the host's
//! values, so they are rewritten here, as Firecracker's and Cloud Hypervisor's CPUID normalizers do.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 0x1 ECX bit 31: "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x1 EDX bit 28: HTT, "logical processor count in EBX[23:16] is valid".
const EDX_HTT: u32 = 1 << 28;

/// Rewrites `cpuid` for vCPU `index` of `count`.
pub fn normalize(cpuid: &mut CpuId, index: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, index, count);
    }
}

fn patch_entry(entry: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    match entry.function {
        0x1 => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors, [15:8] CLFLUSH line size / 8.
            entry.ebx = (u32::from(index) << 24) | (u32::from(count) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1. One core per vCPU, no SMT.
            entry.eax = (entry.eax & 0x03ff_ffff) | (u32::from(count.saturating_sub(1)) << 26);
        }
        0xb | 0x1f => {
            // Extended topology: EDX = x2APIC ID; subleaf 0 is the SMT level (1 thread), subleaf 1 the core
            // level (`count` cores); higher subleaves are invalid.
            entry.edx = u32::from(index);
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    entry.eax = bits_for(count);
                    entry.ebx = u32::from(count);
                    entry.ecx = (2 << 8) | 1;
                }
                i => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = i;
                }
            }
        }
        _ => {}
    }
}

/// The number of APIC-ID bits that `count` CPUs need.
fn bits_for(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut cpuid = CpuId::from_entries(&[leaf(1, 0)]).unwrap();
        normalize(&mut cpuid, 3, 4);
        let e = cpuid.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_give_x2apic_id_and_core_count() {
        let mut cpuid = CpuId::from_entries(&[leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)]).unwrap();
        normalize(&mut cpuid, 1, 2);
        let e = cpuid.as_slice();
        assert_eq!(e[0].edx, 1);
        assert_eq!(e[1].ebx, 2);
        assert_eq!(e[1].eax, 1);
        assert_eq!(e[2].ebx, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            edx: EDX_HTT,
            ..Default::default()
        }])
        .unwrap();
        normalize(&mut cpuid, 0, 1);
        assert_eq!(cpuid.as_slice()[0].edx & EDX_HTT, 0);
    }
}
