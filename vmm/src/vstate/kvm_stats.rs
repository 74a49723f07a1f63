//! A vCPU's binary statistics from KVM (`KVM_GET_STATS_FD`): how many guest instructions KVM's emulator ran and
//! how many exits there were.
//!
//! On hosts whose KVM runs the whole guest through its instruction emulator (nested paravirtual KVM, `kvm_pvm`),
//! `insn_emulation` counts the guest's work independent of how loaded the host is, which wall-clock figures are
//! not; the boot figures of the `emulated` kernel are reported with it. On hardware KVM it counts only the
//! instructions KVM had to emulate (MMIO, port I/O).
//!
//! kvm-ioctls (0.25) has no wrapper for KVM_GET_STATS_FD, so the ioctl and the file's layout (a header, a
//! descriptor block, a data block: Documentation/virt/kvm/api.rst, section 4.133) are read here.

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use kvm_ioctls::VcpuFd;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

mod ioctls {
    #![allow(missing_docs)]
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

/// Upper bounds on what the file may declare, so that a surprising header cannot make us allocate without limit.
const MAX_DESCRIPTORS: u32 = 4096;
const MAX_NAME: u32 = 256;
/// How many u64 values one statistic may hold (histograms hold a few dozen).
const MAX_VALUES: u16 = 1024;

/// One vCPU's statistics file.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
}

impl VcpuStats {
    /// Opens `vcpu`'s statistics file; fails on kernels without binary stats (before 5.14).
    pub fn open(vcpu: &VcpuFd) -> std::io::Result<VcpuStats> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd (or -1) that nothing else owns.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD() as _) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is ours alone.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(VcpuStats { file })
    }

    /// Every statistic's first value, by name (a histogram's first bucket; counters hold one value).
    pub fn read(&self) -> std::io::Result<BTreeMap<String, u64>> {
        read_stats(&self.file)
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("KVM stats: {what}"),
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a KVM binary-stats file.
fn read_stats(file: &impl FileExt) -> std::io::Result<BTreeMap<String, u64>> {
    let mut header = [0u8; std::mem::size_of::<kvm_stats_header>()];
    file.read_exact_at(&mut header, 0)?;
    // Field order of struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset.
    let (name_size, num_desc) = (u32_at(&header, 4), u32_at(&header, 8));
    let (desc_offset, data_offset) = (u32_at(&header, 16), u32_at(&header, 20));
    if name_size > MAX_NAME || num_desc > MAX_DESCRIPTORS {
        return Err(invalid("implausible header"));
    }
    let desc_len = std::mem::size_of::<kvm_stats_desc>() + name_size as usize;
    let mut descs = vec![0u8; desc_len * num_desc as usize];
    file.read_exact_at(&mut descs, u64::from(desc_offset))?;
    let mut stats = BTreeMap::new();
    for d in descs.chunks_exact(desc_len) {
        // struct kvm_stats_desc: flags u32, exponent i16, size u16, offset u32, bucket_size u32, name[].
        let size = u16::from_ne_bytes([d[6], d[7]]);
        let offset = u32_at(d, 8);
        let name = &d[16..];
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        if size == 0 || size > MAX_VALUES {
            continue;
        }
        let mut value = [0u8; 8];
        file.read_exact_at(&mut value, u64::from(data_offset) + u64::from(offset))?;
        stats.insert(
            String::from_utf8_lossy(name).into_owned(),
            u64::from_ne_bytes(value),
        );
    }
    Ok(stats)
}

/// The sum of statistic `name` over several vCPUs' figures.
pub fn total(per_vcpu: &[BTreeMap<String, u64>], name: &str) -> Option<u64> {
    per_vcpu
        .iter()
        .map(|s| s.get(name).copied())
        .sum::<Option<u64>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file laid out as KVM writes one: header, id, descriptors, data.
    fn file_with(stats: &[(&str, u64)], name_size: u32) -> Vec<u8> {
        let desc_offset = 24 + 48;
        let desc_len = 16 + name_size as usize;
        let data_offset = desc_offset + desc_len * stats.len();
        let mut f = Vec::new();
        for v in [
            0,
            name_size,
            stats.len() as u32,
            24,
            desc_offset as u32,
            data_offset as u32,
        ] {
            f.extend(v.to_ne_bytes());
        }
        f.resize(desc_offset, b'i');
        for (i, (name, _)) in stats.iter().enumerate() {
            f.extend(0u32.to_ne_bytes());
            f.extend(0i16.to_ne_bytes());
            f.extend(1u16.to_ne_bytes());
            f.extend((i as u32 * 8).to_ne_bytes());
            f.extend(0u32.to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size as usize, 0);
            f.extend(n);
        }
        for (_, v) in stats {
            f.extend(v.to_ne_bytes());
        }
        f
    }

    #[test]
    fn reads_every_counter_by_name() {
        let f = file_with(&[("exits", 7), ("insn_emulation", 123_456)], 48);
        let tmp = tempfile::tempfile().unwrap();
        tmp.write_all_at(&f, 0).unwrap();
        let s = read_stats(&tmp).unwrap();
        assert_eq!(s["exits"], 7);
        assert_eq!(s["insn_emulation"], 123_456);
        assert_eq!(total(&[s.clone(), s], "exits"), Some(14));
    }

    #[test]
    fn refuses_implausible_headers_and_short_files() {
        let mut f = file_with(&[("exits", 1)], 48);
        f[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        let tmp = tempfile::tempfile().unwrap();
        tmp.write_all_at(&f, 0).unwrap();
        assert!(read_stats(&tmp).is_err());
        let short = tempfile::tempfile().unwrap();
        short.write_all_at(&[0u8; 10], 0).unwrap();
        assert!(read_stats(&short).is_err());
    }
}
