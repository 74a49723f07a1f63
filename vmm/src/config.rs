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
    /// virtio-blk disks, in order: the first is /dev/vda.
    pub block: Vec<BlockConfig>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The virtio-net device, if any.
    pub net: Option<NetConfig>,
    /// Whether to give the guest a virtio-rng device fed by the host's getrandom.
    pub rng: bool,
    /// Rate limit of each virtio-blk disk (none by default).
    pub block_rate: crate::rate_limiter::RateLimit,
    /// Rate limit of virtio-net, each direction on its own (none by default).
    pub net_rate: crate::rate_limiter::RateLimit,
    /// The VMM threads' seccomp filters (on by default; off only to debug the VMM).
    pub seccomp: crate::seccomp::SeccompLevel,
    /// Empty read-only disks that get an image while the guest runs (a pod's later containers), after the
    /// configured disks; none by default.
    pub block_slots: Option<BlockSlotsConfig>,
    /// The host's KVM runs guests through its instruction emulator (nested paravirtual KVM, `kvm_pvm`): the
    /// vCPUs' CPUID leaves out the features that emulator serves worst (`arch::cpuid::hide_from_emulator`).
    /// Whoever builds the config decides (the VMM may run jailed, where /sys is out of sight).
    pub emulated_kvm: bool,
}

/// Runtime block slots (see `devices::virtio::block::slots`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSlotsConfig {
    /// How many (at most `slots::MAX_SLOTS`); the guest names them after the configured disks, in order.
    pub count: u8,
    /// The unix socket the VMM listens on for attach/detach requests (with the image as an open fd).
    pub uds_path: PathBuf,
}

impl Default for VmConfig {
    /// 1 vCPU, 256 MiB, no devices, and an empty raw payload that `validate` refuses: set `payload`.
    fn default() -> Self {
        VmConfig {
            payload: Payload::Raw {
                code: Vec::new(),
                mode: RawMode::Real,
            },
            mem_mib: 256,
            vcpus: 1,
            block: Vec::new(),
            vsock: None,
            net: None,
            rng: false,
            block_rate: Default::default(),
            net_rate: Default::default(),
            seccomp: Default::default(),
            block_slots: None,
            emulated_kvm: false,
        }
    }
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The image file.
    pub path: PathBuf,
    /// Open it read-only; the guest sees a read-only disk and its writes fail with an I/O error.
    pub read_only: bool,
    /// The disk's serial (GET_ID, /sys/block/vdX/serial); at most 20 bytes are used.
    pub id: String,
}

/// A virtio-vsock device with Firecracker's hybrid unix-socket backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 or more).
    pub guest_cid: u64,
    /// The VMM listens here for host-initiated connections (`CONNECT <port>\n`); a guest connection to host
    /// port P goes to a listener at `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// A virtio-net device on a tap interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap interface's name (created if it does not exist, as TUNSETIFF does).
    pub tap_name: String,
    /// A network namespace file (e.g. /var/run/netns/NAME) to open the tap in; `None` for the VMM's own.
    pub netns: Option<PathBuf>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// The most virtio devices a VM can have (GSIs 5..23 of the IOAPIC).
pub const MAX_VIRTIO_DEVICES: usize =
    (crate::arch::layout::IOAPIC_PINS - crate::arch::layout::VIRTIO_GSI_START) as usize;
/// Room `sun_path` leaves for the vsock socket path after the longest `_<port>` suffix.
const MAX_UDS_PATH: usize = 107 - 11;

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
    /// More virtio devices than GSIs.
    #[error("{0} virtio devices requested, at most {MAX_VIRTIO_DEVICES} fit")]
    TooManyDevices(usize),
    /// A count of runtime block slots out of range.
    #[error("{0} runtime block slots requested: 1 to {max} are possible", max = crate::devices::virtio::block::slots::MAX_SLOTS)]
    BlockSlots(u8),
    /// A disk image is missing.
    #[error("disk image {0} does not exist")]
    MissingDisk(PathBuf),
    /// A reserved or out-of-range vsock CID.
    #[error("invalid guest CID {0}: must be at least 3 and below 2^32 - 1")]
    GuestCid(u64),
    /// The vsock socket path is too long for a unix socket (with its `_<port>` suffixes).
    #[error("vsock socket path {0} is too long: at most {MAX_UDS_PATH} bytes")]
    UdsPathTooLong(PathBuf),
    /// The vsock socket's directory is missing.
    #[error("the directory of vsock socket {0} does not exist")]
    UdsDirMissing(PathBuf),
    /// A tap name that Linux refuses.
    #[error("invalid tap name {0:?}: 1 to 15 bytes, no '/' or whitespace")]
    TapName(String),
    /// A network namespace file is missing.
    #[error("network namespace {0} does not exist")]
    MissingNetns(PathBuf),
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
            ..Default::default()
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
        self.validate_devices()
    }

    /// How many virtio devices this VM gets.
    pub fn virtio_device_count(&self) -> usize {
        self.block.len()
            + self
                .block_slots
                .as_ref()
                .map_or(0, |s| usize::from(s.count))
            + usize::from(self.vsock.is_some())
            + usize::from(self.net.is_some())
            + usize::from(self.rng)
    }

    fn validate_devices(&self) -> Result<(), Error> {
        let n = self.virtio_device_count();
        if n > MAX_VIRTIO_DEVICES {
            return Err(Error::TooManyDevices(n));
        }
        if let Some(b) = self.block.iter().find(|b| !b.path.exists()) {
            return Err(Error::MissingDisk(b.path.clone()));
        }
        if let Some(s) = &self.block_slots {
            if s.count == 0 || s.count > crate::devices::virtio::block::slots::MAX_SLOTS {
                return Err(Error::BlockSlots(s.count));
            }
            if s.uds_path.as_os_str().len() > MAX_UDS_PATH
                || !s.uds_path.parent().is_some_and(|d| d.is_dir())
            {
                return Err(Error::UdsDirMissing(s.uds_path.clone()));
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
                return Err(Error::GuestCid(v.guest_cid));
            }
            if v.uds_path.as_os_str().len() > MAX_UDS_PATH {
                return Err(Error::UdsPathTooLong(v.uds_path.clone()));
            }
            let dir = match v.uds_path.parent() {
                Some(p) if p.as_os_str().is_empty() => std::path::Path::new("."),
                Some(p) => p,
                None => return Err(Error::UdsDirMissing(v.uds_path.clone())),
            };
            if !dir.is_dir() {
                return Err(Error::UdsDirMissing(v.uds_path.clone()));
            }
        }
        if let Some(net) = &self.net {
            let name = &net.tap_name;
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.contains(char::is_whitespace)
            {
                return Err(Error::TapName(name.clone()));
            }
            if let Some(ns) = net.netns.as_ref().filter(|p| !p.exists()) {
                return Err(Error::MissingNetns(ns.clone()));
            }
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
            ..Default::default()
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
    fn device_configs_are_checked() {
        let mut c = raw();
        c.block = vec![BlockConfig {
            path: "/nonexistent/rootfs.img".into(),
            read_only: true,
            id: "rootfs".into(),
        }];
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "disk image /nonexistent/rootfs.img does not exist"
        );
        c.block[0].path = "/proc/self/exe".into();
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/tmp/v.sock".into(),
        });
        assert_eq!(c.validate(), Err(Error::GuestCid(2)));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: format!("/tmp/{}", "x".repeat(100)).into(),
        });
        assert!(matches!(c.validate(), Err(Error::UdsPathTooLong(_))));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/nonexistent/dir/v.sock".into(),
        });
        assert!(matches!(c.validate(), Err(Error::UdsDirMissing(_))));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/tmp/v.sock".into(),
        });
        c.net = Some(NetConfig {
            tap_name: "much-too-long-tap-name".into(),
            netns: None,
            mac: [2, 0, 0, 0, 0, 1],
        });
        assert!(matches!(c.validate(), Err(Error::TapName(_))));
        c.net = Some(NetConfig {
            tap_name: "tap0".into(),
            netns: Some("/nonexistent/netns".into()),
            mac: [2, 0, 0, 0, 0, 1],
        });
        assert!(matches!(c.validate(), Err(Error::MissingNetns(_))));
        c.net = None;
        c.rng = true;
        assert_eq!(c.validate(), Ok(()));
        c.block = vec![c.block[0].clone(); MAX_VIRTIO_DEVICES];
        assert_eq!(
            c.validate(),
            Err(Error::TooManyDevices(MAX_VIRTIO_DEVICES + 2))
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
