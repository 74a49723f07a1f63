//! What a VM is made of, checked before anything is created.

use crate::arch::mptable::MAX_CPUS;
use std::path::PathBuf;

/// The kernel command line every mvrun guest starts from: console on COM1, `reboot=k` so a guest reboot resets
/// through the i8042 and ends the VM, `panic=-1` so a panic reboots at once instead of hanging, and one UART so the
/// 8250 driver does not probe ports that are not there.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1";
/// The smallest guest RAM accepted, in MiB. Real kernels need more; the loader checks what the kernel asks for.
pub const MIN_MEM_MIB: u64 = 16;

/// How the vCPU starts executing a raw code blob (VMM self-tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMode {
    /// 16-bit real mode, CS = 0.
    Real,
    /// 64-bit long mode with the first GiB identity-mapped.
    Long64,
}

/// What the VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A Linux kernel: an uncompressed ELF `vmlinux` (PVH entry when it has one) or a `bzImage`.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// An optional initramfs.
        initrd: Option<PathBuf>,
        /// The full command line.
        cmdline: String,
    },
    /// A raw code blob loaded at `layout::RAW_CODE_START`, for the VMM's own tests.
    Raw {
        /// Machine code.
        code: Vec<u8>,
        /// Entry mode.
        mode: RawMode,
    },
}

/// A microVM's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// What to boot.
    pub payload: Payload,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
}

/// A configuration the VMM refuses, before touching KVM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Zero or too many vCPUs.
    #[error("invalid vCPU count {0}: must be between 1 and {MAX_CPUS}")]
    Vcpus(u8),
    /// Less RAM than any guest needs.
    #[error("guest memory of {0} MiB is too small: at least {MIN_MEM_MIB} MiB")]
    MemTooSmall(u64),
    /// More RAM than the host has.
    #[error("guest memory of {requested} MiB is more than this host's {host} MiB")]
    MemTooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        host: u64,
    },
    /// A file the payload names is missing.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// Kernel or initrd.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The command line is too long for x86 Linux.
    #[error("kernel command line is {0} bytes, more than the {max} x86 Linux accepts", max = crate::arch::layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    /// An empty raw payload.
    #[error("raw payload is empty")]
    EmptyRaw,
}

impl VmConfig {
    /// A VM booting `kernel` with the default command line, 1 vCPU and 256 MiB.
    pub fn with_kernel(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            payload: Payload::Kernel {
                kernel: kernel.into(),
                initrd: None,
                cmdline: DEFAULT_CMDLINE.to_string(),
            },
            mem_mib: 256,
            vcpus: 1,
        }
    }

    /// Checks everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), Error> {
        if self.vcpus == 0 || self.vcpus > MAX_CPUS {
            return Err(Error::Vcpus(self.vcpus));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(Error::MemTooSmall(self.mem_mib));
        }
        if let Some(host) = host_mem_mib() {
            if self.mem_mib > host {
                return Err(Error::MemTooLarge {
                    requested: self.mem_mib,
                    host,
                });
            }
        }
        match &self.payload {
            Payload::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                if !kernel.exists() {
                    return Err(Error::MissingFile {
                        what: "kernel",
                        path: kernel.clone(),
                    });
                }
                if let Some(initrd) = initrd.as_ref().filter(|p| !p.exists()) {
                    return Err(Error::MissingFile {
                        what: "initrd",
                        path: initrd.clone(),
                    });
                }
                if cmdline.len() >= crate::arch::layout::CMDLINE_MAX_SIZE {
                    return Err(Error::CmdlineTooLong(cmdline.len()));
                }
            }
            Payload::Raw { code, .. } if code.is_empty() => return Err(Error::EmptyRaw),
            Payload::Raw { .. } => {}
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

/// The host's total RAM in MiB, from /proc/meminfo.
pub fn host_mem_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Joins the default command line with extra words, as `--append` does.
pub fn cmdline_with(base: &str, extra: &[&str]) -> String {
    std::iter::once(base)
        .chain(extra.iter().copied())
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> VmConfig {
        VmConfig {
            payload: Payload::Raw {
                code: vec![0xf4],
                mode: RawMode::Real,
            },
            mem_mib: 64,
            vcpus: 1,
        }
    }

    #[test]
    fn vcpu_bounds() {
        let mut c = raw();
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(Error::Vcpus(0)));
        c.vcpus = MAX_CPUS + 1;
        assert_eq!(c.validate(), Err(Error::Vcpus(MAX_CPUS + 1)));
        c.vcpus = 2;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn memory_bounds() {
        let mut c = raw();
        c.mem_mib = 1;
        assert_eq!(c.validate(), Err(Error::MemTooSmall(1)));
        c.mem_mib = 1 << 30;
        assert!(matches!(c.validate(), Err(Error::MemTooLarge { .. })));
    }

    #[test]
    fn missing_kernel_and_initrd_are_named() {
        let mut c = VmConfig::with_kernel("/nonexistent/vmlinux");
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel /nonexistent/vmlinux does not exist"
        );
        c.payload = Payload::Kernel {
            kernel: "/proc/self/exe".into(),
            initrd: Some("/nonexistent/initrd".into()),
            cmdline: String::new(),
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("initrd /nonexistent/initrd"));
    }

    #[test]
    fn long_cmdline_is_refused() {
        let mut c = VmConfig::with_kernel("/proc/self/exe");
        c.payload = Payload::Kernel {
            kernel: "/proc/self/exe".into(),
            initrd: None,
            cmdline: "x".repeat(4000),
        };
        assert_eq!(c.validate(), Err(Error::CmdlineTooLong(4000)));
    }

    #[test]
    fn cmdline_assembly() {
        assert_eq!(cmdline_with(DEFAULT_CMDLINE, &[]), DEFAULT_CMDLINE);
        assert_eq!(
            cmdline_with("console=ttyS0", &[" quiet ", "", "mvrun.x=1"]),
            "console=ttyS0 quiet mvrun.x=1"
        );
    }

    #[test]
    fn empty_raw_payload_is_refused() {
        let mut c = raw();
        c.payload = Payload::Raw {
            code: vec![],
            mode: RawMode::Long64,
        };
        assert_eq!(c.validate(), Err(Error::EmptyRaw));
    }
}
