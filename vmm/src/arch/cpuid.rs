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

/// Leaf 0x7 subleaf 0, EBX bit 9: ERMS, "enhanced REP MOVSB/STOSB".
const EBX_ERMS: u32 = 1 << 9;
/// Leaf 0x7 subleaf 0, EDX bit 4: FSRM, "fast short REP MOVSB".
const EDX_FSRM: u32 = 1 << 4;
/// Leaf 0x7 subleaf 1, EAX bits 10-12: fast zero-length MOVSB, fast short STOSB, fast short CMPSB.
const EAX_FAST_SHORT_REP: u32 = 0b111 << 10;

/// The one place where mvrun's VMM treats an emulated-KVM host (nested paravirtual KVM, `kvm_pvm`) differently:
/// there KVM runs every guest instruction through its instruction emulator, and a `REP MOVSB`/`REP STOSB` costs one
/// emulation per byte where `REP MOVSQ`/`STOSQ` or a vector loop moves 8-16 bytes per step. Linux (memset,
/// clear_page, copy_user, memcpy) and glibc pick the byte forms when CPUID advertises ERMS/FSRM, so they are
/// left out here, for the guest kernel and its user space alike: a guest boot to init runs about 15% fewer emulated
/// instructions (kernels/README.md). The rest of that host's quirks are guest-kernel patches (kernels/patches).
pub fn hide_from_emulator(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        match (entry.function, entry.index) {
            (0x7, 0) => {
                entry.ebx &= !EBX_ERMS;
                entry.edx &= !EDX_FSRM;
            }
            (0x7, 1) => entry.eax &= !EAX_FAST_SHORT_REP,
            _ => {}
        }
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

    #[test]
    fn the_emulator_quirk_hides_only_the_byte_wise_rep_string_features() {
        let all = u32::MAX;
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                eax: all,
                ebx: all,
                ecx: all,
                edx: all,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                eax: all,
                ebx: all,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ecx: all,
                edx: all,
                ..Default::default()
            },
        ])
        .unwrap();
        hide_from_emulator(&mut cpuid);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, all & !EBX_ERMS);
        assert_eq!(e[0].edx, all & !EDX_FSRM);
        assert_eq!((e[0].eax, e[0].ecx), (all, all));
        assert_eq!(e[1].eax, all & !EAX_FAST_SHORT_REP);
        assert_eq!(e[1].ebx, all);
        assert_eq!((e[2].ecx, e[2].edx), (all, all));
    }
}
