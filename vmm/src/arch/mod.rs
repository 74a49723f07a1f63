//! x86_64 specifics: the memory map, boot protocols, CPU registers, CPUID, MSRs and the MP table.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
