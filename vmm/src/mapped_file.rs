//! A payload file (kernel segment, initrd) put into guest memory by mapping its pages rather than copying them.
//!
//! Each whole page of file data that lands page-aligned in guest memory is mapped there MAP_PRIVATE | MAP_FIXED
//! over the guest's anonymous memory: the VMM neither faults in nor copies those pages before the guest runs,
//! and the guest reads the page cache's copy, shared by every VM booted from the same file, until it writes a
//! page (copy-on-write, private to that VM). A partial last page, or data that is not page-aligned, is copied
//! as before, so bytes past the data (an ELF segment's .bss) stay zero. The files are the kernel store's
//! (content-addressed, replaced by rename, never rewritten in place) and the sandbox's own initramfs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const PAGE: u64 = 4096;

/// A file read into guest memory by mapping (see the module's documentation).
pub(crate) struct MappedFile {
    file: File,
    len: u64,
    /// Bytes mapped rather than copied, for tests and logs.
    pub(crate) mapped: u64,
}

impl MappedFile {
    /// Wraps `file`, whose size must not change while the VM lives.
    pub(crate) fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            mapped: 0,
        })
    }

    /// The file's size.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Maps as many whole pages of the file at its current position as fit at `dst` (`max` bytes), when both are
    /// page-aligned. Returns the bytes mapped (0 when nothing could be).
    fn map_pages(&mut self, dst: *mut u8, max: usize) -> std::io::Result<usize> {
        let pos = self.file.stream_position()?;
        if (dst as u64) % PAGE != 0 || pos % PAGE != 0 {
            return Ok(0);
        }
        // Whole pages only, and only pages the file covers entirely: a page past its end would fault (SIGBUS).
        let n = (max as u64).min(self.len.saturating_sub(pos)) / PAGE * PAGE;
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `dst..dst + n` lies inside one live guest-memory mapping (the VolatileSlice the caller was
        // handed), which this replaces with a private copy-on-write mapping of the same size; nothing else
        // holds references into guest memory as plain Rust memory. MAP_FIXED keeps the address.
        let p = unsafe {
            libc::mmap(
                dst.cast(),
                n as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                self.file.as_raw_fd(),
                pos as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED || p.cast::<u8>() != dst {
            // Guest memory there may now be unmapped: refuse rather than copy into a hole.
            return Err(std::io::Error::last_os_error());
        }
        self.file.seek(SeekFrom::Current(n as i64))?;
        self.mapped += n;
        Ok(n as usize)
    }
}

impl Read for MappedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for MappedFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for MappedFile {
    /// Fills `buf` as far as the file goes (vm-memory's guest-memory reads make one call per region): whole
    /// pages mapped, the rest copied.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let dst = buf.ptr_guard_mut().as_ptr();
        let mapped = self
            .map_pages(dst, buf.len())
            .map_err(VolatileMemoryError::IOError)?;
        buf.bitmap().mark_dirty(0, mapped);
        let mut done = mapped;
        while done < buf.len() {
            let mut rest = buf.offset(done)?;
            match self.file.read_volatile(&mut rest) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(VolatileMemoryError::IOError(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn whole_pages_are_mapped_and_the_tail_copied_with_zeros_after_it() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        // Bytes after the data in the file must not show up in guest memory.
        f.write_all(&[0xee; 4096]).unwrap();
        let mem = memory::create(16 << 20).unwrap();
        let mut m = MappedFile::new(f.reopen().unwrap()).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x10_0000), &mut m, data.len())
            .unwrap();
        assert_eq!(m.mapped, 3 * 4096);
        let mut back = vec![0u8; data.len() + 64];
        mem.read_slice(&mut back, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&back[..data.len()], &data[..]);
        assert!(back[data.len()..].iter().all(|b| *b == 0));
        // The guest's writes stay private to the VM.
        mem.write_obj(0x55u8, GuestAddress(0x10_0000)).unwrap();
        let mut first = [0u8; 1];
        f.reopen().unwrap().read_exact(&mut first).unwrap();
        assert_eq!(first[0], data[0]);
    }

    #[test]
    fn unaligned_data_is_copied() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[9u8; 3 * 4096]).unwrap();
        let mem = memory::create(16 << 20).unwrap();
        let mut m = MappedFile::new(f.reopen().unwrap()).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x10_0010), &mut m, 2 * 4096)
            .unwrap();
        assert_eq!(m.mapped, 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_2000)).unwrap(), 9);
    }
}
