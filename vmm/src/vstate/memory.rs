//! Guest RAM: anonymous host mappings laid out around the 32-bit MMIO hole.

use crate::arch::layout::{MMIO_END, MMIO_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The guest's RAM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host refused the mapping.
    #[error("failed to map {mib} MiB of guest memory")]
    Map {
        /// Requested size.
        mib: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges for `size` bytes of guest memory: below the MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_START as usize),
            (GuestAddress(MMIO_END), (size - MMIO_START) as usize),
        ]
    }
}

/// Maps `size` bytes of guest RAM. The mapping is lazy: host pages are touched only when the guest uses them.
pub fn create(size: u64) -> Result<GuestMemory, Error> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|source| Error::Map {
        mib: size >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_START as usize));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_END), ((4u64 << 30) - MMIO_START) as usize)
        );
    }
}
