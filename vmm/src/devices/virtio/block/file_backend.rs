//! A disk image file, read and written with pread/pwrite straight into guest memory (no bounce buffer).

use super::{DiskBackend, Error};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use vm_memory::VolatileSlice;

/// A raw image file.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    size: u64,
}

impl FileBackend {
    /// Opens `path`, read-only when `read_only` (so the VMM could not write it even if it tried).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(FileBackend { file, size })
    }

    /// An image the VMM was handed open (a runtime block slot's, over its socket): sized with lseek, the one
    /// call the event-loop thread's seccomp filter allows for it.
    pub fn from_file(file: File) -> std::io::Result<Self> {
        // SAFETY: lseek on a descriptor we own; it moves only the file offset, which pread ignores.
        let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        let size = u64::try_from(end).map_err(|_| std::io::Error::last_os_error())?;
        Ok(FileBackend { file, size })
    }
}

/// No disk at all: a runtime block slot before an image is attached (capacity 0, so the guest asks for nothing).
#[derive(Debug, Default)]
pub struct EmptyBackend;

impl DiskBackend for EmptyBackend {
    fn size(&self) -> u64 {
        0
    }
    fn read_at(&mut self, _offset: u64, _buf: &VolatileSlice<'_>) -> std::io::Result<()> {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
    fn write_at(&mut self, _offset: u64, _buf: &VolatileSlice<'_>) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `op(offset, done)` until `len` bytes moved; `op` returns what pread/pwrite return.
fn io_loop(
    len: usize,
    offset: u64,
    mut op: impl FnMut(i64, usize) -> isize,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let off = offset
            .checked_add(done as u64)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let n = op(off, done);
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // The file shrank under us.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n as usize;
    }
    Ok(())
}

impl DiskBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &VolatileSlice<'_>) -> std::io::Result<()> {
        let guard = buf.ptr_guard_mut();
        let ptr = guard.as_ptr();
        let fd = self.file.as_raw_fd();
        io_loop(buf.len(), offset, |off, done| {
            // SAFETY: `ptr` points at `buf.len()` bytes of mapped guest memory that stay mapped while `guard`
            // lives; `done < buf.len()`, so the range written is inside it. Guest memory may change under us,
            // which is fine for raw bytes.
            unsafe { libc::pread(fd, ptr.add(done).cast(), buf.len() - done, off) }
        })
    }

    fn write_at(&mut self, offset: u64, buf: &VolatileSlice<'_>) -> std::io::Result<()> {
        let guard = buf.ptr_guard();
        let ptr = guard.as_ptr();
        let fd = self.file.as_raw_fd();
        io_loop(buf.len(), offset, |off, done| {
            // SAFETY: as in `read_at`; pwrite only reads the range.
            unsafe { libc::pwrite(fd, ptr.add(done).cast(), buf.len() - done, off) }
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
