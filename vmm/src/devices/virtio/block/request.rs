//! Parsing a virtio-blk descriptor chain (virtio 1.2 section 5.2.6): a 16-byte device-readable header
//! (type, reserved, sector), data buffers, and a final device-writable status byte.
//!
//! The header and the status each sit in their own descriptor, as every Linux and Windows driver lays them out
//! (Firecracker and Cloud Hypervisor assume the same). Everything is checked here against guest memory and the
//! disk size, so the device only does I/O on ranges that exist.

use super::defs::*;
use crate::vstate::memory::GuestMemory;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

/// The request header (struct virtio_blk_outhdr).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct OutHdr {
    /// VIRTIO_BLK_T_*.
    pub type_: u32,
    /// Unused (ioprio).
    pub reserved: u32,
    /// First 512-byte sector.
    pub sector: u64,
}
// SAFETY: plain integers, no padding (4 + 4 + 8 bytes, 8-aligned); every bit pattern is valid.
unsafe impl ByteValued for OutHdr {}

/// What the driver asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Flush.
    Flush,
    /// Device ID string.
    GetId,
    /// Anything else (answered VIRTIO_BLK_S_UNSUPP).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// A request whose every buffer lies in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its type.
    pub kind: RequestType,
    /// First sector.
    pub sector: u64,
    /// Total data length.
    pub data_len: u32,
    /// The status byte.
    pub status: GuestAddress,
}

/// Why a chain is not a request the device can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The chain cannot be walked: it leaves guest memory, loops, or is longer than the queue. Nothing in it can be
    /// trusted, not even where the status goes: the queue is broken.
    #[error("descriptor chain is broken (out of guest memory, a loop, or longer than the queue)")]
    Broken,
    /// The chain has no usable status byte at its end: no way to answer, the queue is broken.
    #[error("descriptor chain has no device-writable status byte at its end")]
    NoStatus,
    /// The chain can be answered, with this status (IOERR or UNSUPP), and `status` is where.
    #[error("request refused with virtio-blk status {code}")]
    Refused {
        /// VIRTIO_BLK_S_*.
        code: u8,
        /// The status byte.
        status: GuestAddress,
        /// The request type, when the header could be read.
        kind: Option<RequestType>,
    },
}

/// Parses `chain` against `mem` and a disk of `capacity_sectors`; the data buffers go into `data` (cleared first;
/// at most a queue's worth of entries, so the caller's vector never grows past that).
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    capacity_sectors: u64,
    data: &mut Vec<Descriptor>,
) -> Result<Request, ParseError>
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    data.clear();
    let mut header = None;
    let mut last = None;
    let mut truncated = false;
    for desc in chain {
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(ParseError::Broken);
        }
        truncated = desc.has_next();
        match header {
            None => header = Some(desc),
            Some(_) => {
                if let Some(prev) = last.replace(desc) {
                    data.push(prev);
                }
            }
        }
    }
    // The iterator stops early (with NEXT still set on the last one) at a loop, a chain longer than the
    // queue, an index past the table, or an unreadable descriptor.
    let Some(header) = header.filter(|_| !truncated) else {
        return Err(ParseError::Broken);
    };
    let status = match last {
        Some(s) if s.is_write_only() && s.len() >= 1 => s.addr(),
        _ => return Err(ParseError::NoStatus),
    };
    let refuse = |code, kind| ParseError::Refused { code, status, kind };
    if header.is_write_only() || (header.len() as usize) < std::mem::size_of::<OutHdr>() {
        return Err(refuse(VIRTIO_BLK_S_IOERR, None));
    }
    let hdr: OutHdr = mem
        .read_obj(header.addr())
        .map_err(|_| ParseError::Broken)?;
    let kind = RequestType::from(u32::from_le(hdr.type_));
    let sector = u64::from_le(hdr.sector);
    let refuse = |code| refuse(code, Some(kind));
    let writable = match kind {
        RequestType::Unsupported(_) => return Err(refuse(VIRTIO_BLK_S_UNSUPP)),
        RequestType::In | RequestType::GetId => true,
        RequestType::Out | RequestType::Flush => false,
    };
    let mut data_len: u32 = 0;
    for d in data.iter() {
        // A zero-length buffer or one going the wrong way is a driver bug; refuse rather than guess.
        if d.len() == 0 || d.is_write_only() != writable {
            return Err(refuse(VIRTIO_BLK_S_IOERR));
        }
        // The chain iterator already refuses chains whose lengths overflow u32.
        data_len = data_len
            .checked_add(d.len())
            .ok_or(refuse(VIRTIO_BLK_S_IOERR))?;
    }
    match kind {
        RequestType::In | RequestType::Out => {
            let sectors = u64::from(data_len) / SECTOR_SIZE;
            let in_disk = sector
                .checked_add(sectors)
                .is_some_and(|end| end <= capacity_sectors);
            if u64::from(data_len) % SECTOR_SIZE != 0 || !in_disk {
                return Err(refuse(VIRTIO_BLK_S_IOERR));
            }
        }
        RequestType::GetId if data_len == 0 => return Err(refuse(VIRTIO_BLK_S_IOERR)),
        _ => {}
    }
    Ok(Request {
        kind,
        sector,
        data_len,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{ro, wo, Buf, Driver, TestMem, DATA_START};
    use virtio_queue::QueueOwnedT;

    fn parse_one(bufs: &[Buf], hdr: OutHdr, cap: u64) -> Result<Request, ParseError> {
        let mem = TestMem::new();
        let mut drv = Driver::new(&mem, 0, 16);
        drv.write(DATA_START, hdr.as_slice());
        drv.add(bufs);
        let mut q = drv.queue();
        let chain = q.iter(&mem.mem).unwrap().next().unwrap();
        let mut data = Vec::new();
        parse(chain, &mem.mem, cap, &mut data)
    }

    fn hdr(type_: u32, sector: u64) -> OutHdr {
        OutHdr {
            type_,
            reserved: 0,
            sector,
        }
    }

    const H: u64 = DATA_START;
    const D: u64 = DATA_START + 0x1000;
    const S: u64 = DATA_START + 0x100;

    #[test]
    fn a_read_parses() {
        let r = parse_one(&[ro(H, 16), wo(D, 1024), wo(S, 1)], hdr(0, 2), 8).unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!((r.sector, r.data_len, r.status), (2, 1024, GuestAddress(S)));
    }

    #[test]
    fn hostile_shapes_are_refused() {
        let ioerr = |r: Result<Request, ParseError>| {
            matches!(
                r,
                Err(ParseError::Refused {
                    code: VIRTIO_BLK_S_IOERR,
                    ..
                })
            )
        };
        // Past the end of the disk, partly or by overflow.
        assert!(ioerr(parse_one(
            &[ro(H, 16), wo(D, 1024), wo(S, 1)],
            hdr(0, 7),
            8
        )));
        assert!(ioerr(parse_one(
            &[ro(H, 16), wo(D, 512), wo(S, 1)],
            hdr(0, u64::MAX),
            8
        )));
        // Not a whole number of sectors, zero-length, wrong direction, short header.
        assert!(ioerr(parse_one(
            &[ro(H, 16), wo(D, 100), wo(S, 1)],
            hdr(0, 0),
            8
        )));
        assert!(ioerr(parse_one(
            &[ro(H, 16), wo(D, 0), wo(S, 1)],
            hdr(0, 0),
            8
        )));
        assert!(ioerr(parse_one(
            &[ro(H, 16), ro(D, 512), wo(S, 1)],
            hdr(0, 0),
            8
        )));
        assert!(ioerr(parse_one(
            &[ro(H, 16), wo(D, 512), wo(S, 1)],
            hdr(1, 0),
            8
        )));
        assert!(ioerr(parse_one(&[ro(H, 8), wo(S, 1)], hdr(4, 0), 8)));
        assert!(ioerr(parse_one(&[wo(H, 16), wo(S, 1)], hdr(4, 0), 8)));
        // Unknown type.
        assert!(matches!(
            parse_one(&[ro(H, 16), wo(S, 1)], hdr(77, 0), 8),
            Err(ParseError::Refused {
                code: VIRTIO_BLK_S_UNSUPP,
                kind: Some(RequestType::Unsupported(77)),
                ..
            })
        ));
        // No status: read-only last, zero-length last, header only.
        assert_eq!(
            parse_one(&[ro(H, 16), ro(S, 1)], hdr(4, 0), 8),
            Err(ParseError::NoStatus)
        );
        assert_eq!(
            parse_one(&[ro(H, 16), wo(S, 0)], hdr(4, 0), 8),
            Err(ParseError::NoStatus)
        );
        assert_eq!(
            parse_one(&[ro(H, 16)], hdr(4, 0), 8),
            Err(ParseError::NoStatus)
        );
        // Out of guest memory; oversized (u32::MAX) buffer.
        assert_eq!(
            parse_one(&[ro(H, 16), wo(0xffff_0000, 512), wo(S, 1)], hdr(0, 0), 8),
            Err(ParseError::Broken)
        );
        assert_eq!(
            parse_one(&[ro(H, 16), wo(D, u32::MAX), wo(S, 1)], hdr(0, 0), 1 << 40),
            Err(ParseError::Broken)
        );
    }

    #[test]
    fn loops_and_chains_longer_than_the_queue_are_broken() {
        use crate::devices::virtio::test_utils::{NEXT, WRITE};
        let mem = TestMem::new();
        let mut drv = Driver::new(&mem, 0, 16);
        drv.write(DATA_START, hdr(0, 0).as_slice());
        // 0 -> 1 -> ... -> 15 -> 0: every descriptor says "next", so the walk ends only at the queue size.
        let descs: Vec<Descriptor> = (0..16u16)
            .map(|i| {
                let (addr, len, flags) = if i == 0 {
                    (H, 16, NEXT)
                } else {
                    (D, 512, WRITE | NEXT)
                };
                Descriptor::new(addr, len, flags, (i + 1) % 16)
            })
            .collect();
        drv.add_raw(&descs, 0);
        let mut q = drv.queue();
        let mut data = Vec::new();
        let chain = q.iter(&mem.mem).unwrap().next().unwrap();
        assert_eq!(
            parse(chain, &mem.mem, 1 << 20, &mut data),
            Err(ParseError::Broken)
        );
        assert!(data.len() < 16);
        // A next index past the table.
        drv.add_raw(&[Descriptor::new(H, 16, NEXT, 999)], 0);
        let chain = q.iter(&mem.mem).unwrap().next().unwrap();
        assert_eq!(
            parse(chain, &mem.mem, 1 << 20, &mut data),
            Err(ParseError::Broken)
        );
    }
}
