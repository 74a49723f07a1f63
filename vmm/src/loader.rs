//! Puts the payload into guest memory: kernel (linux-loader), initrd, command line and boot parameters.

use crate::arch::boot_params::{self, InitrdPlacement};
use crate::arch::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START, MMIO_START, RAW_CODE_START,
};
use crate::arch::regs::EntryMode;
use crate::config::{Payload, RawMode};
use crate::mapped_file::MappedFile;
use crate::vstate::memory::GuestMemory;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{
    load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress};

/// The bzImage's 64-bit entry point is 0x200 past where its protected-mode code loads (boot.rst, "64-bit boot").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors loading the payload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("failed to read {what} {path}")]
    Read {
        /// Kernel or initrd.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(PathBuf),
    /// linux-loader refused the image. Its errors repeat their causes in their own messages, so only the
    /// innermost message is kept, to give one readable line.
    #[error("failed to load kernel {path}: {reason}")]
    Load {
        /// The path.
        path: PathBuf,
        /// linux-loader's innermost message.
        reason: String,
    },
    /// The kernel needs more RAM than the VM has.
    #[error("guest memory of {have_mib} MiB is too small for kernel {path}, which needs at least {need_mib} MiB")]
    KernelTooBig {
        /// The path.
        path: PathBuf,
        /// What the kernel needs.
        need_mib: u64,
        /// What the VM has.
        have_mib: u64,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd {path} ({size_mib} MiB) does not fit in guest memory above the kernel: give the VM more memory")]
    InitrdTooBig {
        /// The path.
        path: PathBuf,
        /// Its size.
        size_mib: u64,
    },
    /// The command line could not be built.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written.
    #[error("failed to write the kernel command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Boot parameters could not be written.
    #[error("failed to write boot parameters")]
    BootParams(#[from] boot_params::Error),
    /// A raw payload does not fit.
    #[error("failed to write the raw payload to guest memory")]
    Raw(#[source] vm_memory::GuestMemoryError),
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Entry mode.
    pub mode: EntryMode,
    /// Entry address.
    pub entry: u64,
}

/// Loads `payload` into `mem` (of `mem_size` bytes) and returns where the boot vCPU enters.
pub fn load(mem: &GuestMemory, mem_size: u64, payload: &Payload) -> Result<BootEntry, Error> {
    load_timed(
        mem,
        mem_size,
        payload,
        &mut crate::PhaseClock::new(std::time::Instant::now()),
    )
}

/// [`load`], marking its phases (kernel, initrd, command line and boot parameters) on `clock`.
///
/// The kernel's page-aligned segments and the initrd are mapped from their files rather than copied
/// ([`crate::mapped_file`]).
pub fn load_timed(
    mem: &GuestMemory,
    mem_size: u64,
    payload: &Payload,
    clock: &mut crate::PhaseClock,
) -> Result<BootEntry, Error> {
    match payload {
        Payload::Raw { code, mode } => {
            mem.write_slice(code, GuestAddress(RAW_CODE_START))
                .map_err(Error::Raw)?;
            let mode = match mode {
                RawMode::Real => EntryMode::Real,
                RawMode::Long64 => EntryMode::Linux64,
            };
            Ok(BootEntry {
                mode,
                entry: RAW_CODE_START,
            })
        }
        Payload::Kernel {
            kernel,
            initrd,
            cmdline,
        } => load_kernel(mem, mem_size, kernel, initrd.as_deref(), cmdline, clock),
    }
}

enum Format {
    Elf,
    BzImage,
}

fn detect_format(file: &mut File, path: &Path) -> Result<Format, Error> {
    let read_err = |source| Error::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(Format::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(Format::BzImage)
    } else {
        Err(Error::UnknownFormat(path.to_path_buf()))
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn load_kernel(
    mem: &GuestMemory,
    mem_size: u64,
    path: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    clock: &mut crate::PhaseClock,
) -> Result<BootEntry, Error> {
    let read_err = |source| Error::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let format = detect_format(&mut file, path)?;
    let too_big = |need: u64| Error::KernelTooBig {
        path: path.to_path_buf(),
        need_mib: need.div_ceil(1 << 20),
        have_mib: mem_size >> 20,
    };
    let result: KernelLoaderResult = match format {
        Format::Elf => {
            if let Some(need) = elf_memory_need(&mut file) {
                if need > mem_size.min(MMIO_START) {
                    return Err(too_big(need));
                }
            }
            let mut file = MappedFile::new(file).map_err(read_err)?;
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEMORY_START)))
        }
        Format::BzImage => {
            let mut file = MappedFile::new(file).map_err(read_err)?;
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEMORY_START)))
        }
    }
    .map_err(|e| Error::Load {
        path: path.to_path_buf(),
        reason: innermost_message(&e),
    })?;

    let (mode, entry, header) = match (format, result.pvh_boot_cap) {
        (Format::Elf, PvhBootCapability::PvhEntryPresent(addr)) => (EntryMode::Pvh, addr.0, None),
        (Format::Elf, _) => (EntryMode::Linux64, result.kernel_load.0, None),
        (Format::BzImage, _) => {
            let hdr = result.setup_header;
            // The kernel decompresses in place and needs `init_size` bytes from its load address.
            let init_size = hdr.map(|h| u64::from(h.init_size)).unwrap_or(0);
            let need = result.kernel_load.0 + init_size;
            if need > mem_size.min(MMIO_START) {
                return Err(too_big(need));
            }
            (
                EntryMode::Linux64,
                result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                hdr,
            )
        }
    };

    clock.mark("kernel load");
    let initrd = match initrd {
        Some(p) => {
            let placed = load_initrd(mem, mem_size, result.kernel_end, p)?;
            clock.mark("initramfs load");
            Some(placed)
        }
        None => None,
    };

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cl.insert_str(cmdline).map_err(Error::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(Error::WriteCmdline)?;

    match mode {
        EntryMode::Pvh => boot_params::write_pvh_start_info(mem, mem_size, initrd)?,
        _ => boot_params::write_zero_page(mem, mem_size, header, cmdline.len() + 1, initrd)?,
    }
    clock.mark("command line, boot parameters");
    Ok(BootEntry { mode, entry })
}

fn innermost_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
        .trim_start_matches("Kernel Loader: ")
        .to_string()
}

/// The highest guest-physical address an ELF's loadable segments reach, so a too-small VM gets a clear error
/// instead of linux-loader's generic one. `None` when the headers cannot be read (linux-loader then reports it).
fn elf_memory_need(file: &mut File) -> Option<u64> {
    let mut ehdr = [0u8; 64];
    file.read_exact(&mut ehdr).ok()?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let (phoff, phentsize, phnum) = (
        u64_at(&ehdr, 0x20),
        u16_at(&ehdr, 0x36),
        u16_at(&ehdr, 0x38),
    );
    file.seek(SeekFrom::Start(0)).ok()?;
    if phentsize < 56 || phnum > 64 {
        return None;
    }
    let mut need = 0u64;
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        file.seek(SeekFrom::Start(
            phoff.checked_add(i * u64::from(phentsize))?,
        ))
        .ok()?;
        file.read_exact(&mut ph).ok()?;
        const PT_LOAD: u32 = 1;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_LOAD {
            let end = u64_at(&ph, 0x18).checked_add(u64_at(&ph, 0x28))?;
            need = need.max(end);
        }
    }
    file.seek(SeekFrom::Start(0)).ok()?;
    Some(need)
}

/// Places the initrd page-aligned at the top of low memory, above the kernel.
fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<InitrdPlacement, Error> {
    let read_err = |source| Error::Read {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = MappedFile::new(File::open(path).map_err(read_err)?).map_err(read_err)?;
    let size = file.len();
    let too_big = || Error::InitrdTooBig {
        path: path.to_path_buf(),
        size_mib: size.div_ceil(1 << 20),
    };
    let top = mem_size.min(MMIO_START);
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end || size == 0 {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read_err(std::io::Error::other(e)))?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory;
    use std::io::Write;

    fn kernel_payload(path: &Path) -> Payload {
        Payload::Kernel {
            kernel: path.to_path_buf(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        }
    }

    #[test]
    fn garbage_is_neither_elf_nor_bzimage() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x42; 4096]).unwrap();
        let mem = memory::create(32 << 20).unwrap();
        let err = load(&mem, 32 << 20, &kernel_payload(f.path())).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither an ELF vmlinux nor a bzImage"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mem = memory::create(32 << 20).unwrap();
        assert!(matches!(
            load(&mem, 32 << 20, &kernel_payload(f.path())),
            Err(Error::UnknownFormat(_))
        ));
    }

    #[test]
    fn truncated_elf_is_refused_without_panic() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF\x02\x01\x01").unwrap();
        let mem = memory::create(32 << 20).unwrap();
        assert!(matches!(
            load(&mem, 32 << 20, &kernel_payload(f.path())),
            Err(Error::Load { .. })
        ));
    }

    #[test]
    fn raw_code_lands_at_its_start_address() {
        let mem = memory::create(16 << 20).unwrap();
        let entry = load(
            &mem,
            16 << 20,
            &Payload::Raw {
                code: vec![0xf4],
                mode: RawMode::Long64,
            },
        )
        .unwrap();
        assert_eq!(entry.entry, RAW_CODE_START);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(RAW_CODE_START)).unwrap(),
            0xf4
        );
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_page_aligned() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        let mem = memory::create(32 << 20).unwrap();
        let p = load_initrd(&mem, 32 << 20, 0x200_0000 - 0x10000, f.path()).unwrap();
        assert_eq!(p.addr % 0x1000, 0);
        assert!(p.addr + p.size <= 32 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(p.addr + 4999)).unwrap(), 7);
        let err = load_initrd(&mem, 32 << 20, (32 << 20) - 100, f.path()).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
