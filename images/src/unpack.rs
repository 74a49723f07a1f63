//! Layer unpacking: applies OCI layer tars, in order, to a directory, treating every byte as hostile.
//!
//! Every parent directory is resolved by the kernel with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)`: a walk that would leave the unpack root (through `..`, an absolute symlink, or a symlink an
//! earlier entry planted) fails with EXDEV and the entry is refused by name; the last component is then created
//! with `*at` calls that never follow it. (Layers made from overlayfs diffs, as docker and buildkit make them,
//! never write through symlinks, so refusing rather than re-rooting costs real images nothing.) Also refused by
//! name: absolute paths, `..` components, device nodes, hard links whose target is not in the tree, and archives
//! over the size / entry-count / extension-header limits.
//! We do not use `tar::Entry::unpack_in`: it resolves paths with ordinary (symlink-following) syscalls.
//!
//! Whiteouts follow the OCI image spec (layer.md): `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq`
//! empties its directory of everything lower layers put there.

use crate::digest::{Digest, HashingReader};
use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tracing::{debug, warn};

/// Limits that bound what a layer set may make the host do. Decompression bombs end at these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of file contents over all layers.
    pub max_total_bytes: u64,
    /// Total tar entries over all layers.
    pub max_entries: u64,
    /// Largest PAX / GNU long-name extension header (the tar crate reads these into memory).
    pub max_extension_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_total_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_extension_bytes: 1 << 20,
        }
    }
}

/// Why an entry was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The entry is hostile or unsupported.
    #[error("refused: {0}")]
    Refused(String),
    /// A file-system call failed.
    #[error("failed to {0}")]
    Io(&'static str, #[source] io::Error),
}

/// Unpack failures. The entry's path is always named where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The unpack root could not be opened.
    #[error("failed to open unpack directory {0}")]
    Root(String, #[source] io::Error),
    /// The archive stream is broken (or over a limit checked while reading it).
    #[error("failed to read the layer archive")]
    Archive(#[source] io::Error),
    /// One entry failed or was refused.
    #[error("failed to unpack entry {entry:?}")]
    Entry {
        /// The entry's path as the archive spells it (clipped).
        entry: String,
        /// Why.
        #[source]
        source: EntryError,
    },
    /// The layer's uncompressed bytes do not hash to its diff_id.
    #[error("failed to verify the layer: uncompressed digest {actual} is not the config's diff_id {expected}")]
    DiffId {
        /// The config's diff_id.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
}

type EResult<T> = std::result::Result<T, EntryError>;

fn refused<T>(msg: impl Into<String>) -> EResult<T> {
    Err(EntryError::Refused(msg.into()))
}

fn io_err(op: &'static str) -> impl FnOnce(Errno) -> EntryError {
    move |e| EntryError::Io(op, e.into())
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const MAX_PATH: usize = 4096;

/// Applies layers to one directory.
pub struct Unpacker {
    root: OwnedFd,
    limits: UnpackLimits,
    bytes: u64,
    entries: u64,
    chown: bool,
}

impl Unpacker {
    /// Opens `root` (an existing, empty or partly unpacked directory we own).
    pub fn new(root: &Path, limits: UnpackLimits) -> Result<Self, Error> {
        let fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Root(root.display().to_string(), e.into()))?;
        // Ownership can only be kept by root; a non-root unpack (tests, imports of tars) keeps the caller's.
        let chown = rustix::process::geteuid().is_root();
        Ok(Self {
            root: fd,
            limits,
            bytes: 0,
            entries: 0,
            chown,
        })
    }

    /// Decompresses (gzip, zstd or none, by magic number) and applies one layer. Returns the digest of the
    /// uncompressed tar (the diff_id).
    pub fn unpack_layer(&mut self, layer: impl Read) -> Result<Digest, Error> {
        let stream = decompress(layer).map_err(Error::Archive)?;
        // Bound the decompressed stream too: after the tar's end we read on to hash the rest for the diff_id.
        let cap = self
            .limits
            .max_total_bytes
            .saturating_sub(self.bytes)
            .saturating_add(self.limits.max_entries.saturating_mul(3 * 512))
            .saturating_add(16 << 20);
        let mut hashed = HashingReader::new(CapReader {
            inner: stream,
            left: cap,
            cap,
        });
        {
            let guard = TarGuard::new(&mut hashed, self.limits.max_extension_bytes);
            self.unpack_tar(guard)?;
        }
        io::copy(&mut hashed, &mut io::sink()).map_err(Error::Archive)?;
        Ok(hashed.finish().0)
    }

    /// Applies one uncompressed layer tar.
    pub fn unpack_tar(&mut self, tar: impl Read) -> Result<(), Error> {
        let mut archive = tar::Archive::new(tar);
        // Paths created by this layer: an opaque whiteout keeps these and drops what lower layers made.
        let mut this_layer: HashSet<Vec<u8>> = HashSet::new();
        for entry in archive.entries().map_err(Error::Archive)? {
            let mut entry = entry.map_err(Error::Archive)?;
            let path = entry.path_bytes().into_owned();
            let named = |source| Error::Entry {
                entry: clip(&path),
                source,
            };
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(named(EntryError::Refused(format!(
                    "more than {} entries in the image",
                    self.limits.max_entries
                ))));
            }
            self.apply(&mut entry, &path, &mut this_layer)
                .map_err(named)?;
        }
        Ok(())
    }

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        this_layer: &mut HashSet<Vec<u8>>,
    ) -> EResult<()> {
        let comps = split_path(raw)?;
        let Some((name, parents)) = comps.split_last() else {
            // "./" itself: the root's metadata is ours to keep.
            return Ok(());
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        // Whiteouts.
        if *name == OPAQUE {
            let dir = self.open_dir(parents, true)?;
            let prefix = join(parents);
            return clear_opaque(dir.as_fd(), &prefix, this_layer);
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if target.is_empty()
                || target == b"."
                || target == b".."
                || target.starts_with(WHITEOUT_PREFIX)
            {
                // .wh..wh.plnk and friends are aufs bookkeeping, not whiteouts.
                return if target.starts_with(WHITEOUT_PREFIX) {
                    Ok(())
                } else {
                    refused("malformed whiteout name")
                };
            }
            match self.open_dir(parents, false) {
                Ok(dir) => {
                    return remove_all(dir.as_fd(), target).or_else(|e| {
                        if is_enoent(&e) {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                }
                Err(e) if is_enoent(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let parent = self.open_dir(parents, true)?;
        let parent = parent.as_fd();
        let header = entry.header();
        let mode = Mode::from_raw_mode(
            header.mode().map_err(|e| EntryError::Io("read mode", e))? & 0o7777,
        );
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let xattrs = read_xattrs(entry)?;

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !prepare_slot(parent, name, true)? {
                    rustix::fs::mkdirat(parent, *name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("create directory"))?;
                }
                let fd = rustix::fs::openat(
                    parent,
                    *name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err("open directory"))?;
                self.set_meta(fd.as_fd(), uid, gid, mode, mtime, &xattrs)?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                prepare_slot(parent, name, false)?;
                let fd = rustix::fs::openat(
                    parent,
                    *name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err("create file"))?;
                let mut file = std::fs::File::from(fd);
                let budget = self.limits.max_total_bytes.saturating_sub(self.bytes);
                let n = copy_limited(entry, &mut file, budget, self.limits.max_total_bytes)?;
                self.bytes += n;
                self.set_meta(file.as_fd(), uid, gid, mode, mtime, &xattrs)?;
            }
            T::Symlink => {
                let target = link.unwrap_or_default();
                if target.is_empty() || target.len() >= MAX_PATH || target.contains(&0) {
                    return refused("symlink target is empty, too long or has a NUL");
                }
                prepare_slot(parent, name, false)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, *name)
                    .map_err(io_err("create symlink"))?;
                if self.chown {
                    rustix::fs::chownat(
                        parent,
                        *name,
                        Some(uid_of(uid)),
                        Some(gid_of(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("chown symlink"))?;
                }
                let ts = timestamps(mtime);
                rustix::fs::utimensat(parent, *name, &ts, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("set symlink times"))?;
            }
            T::Link => {
                let target = link.unwrap_or_default();
                let tcomps = split_path(&target).map_err(|e| match e {
                    EntryError::Refused(m) => EntryError::Refused(format!("hard link target: {m}")),
                    other => other,
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return refused("hard link to the root directory");
                };
                let tdir = match self.open_dir(tparents, false) {
                    Ok(d) => d,
                    Err(e) if is_enoent(&e) => {
                        return refused(format!(
                            "hard link target {:?} is not in the image",
                            clip(&target)
                        ))
                    }
                    Err(e) => return Err(e),
                };
                let st = match rustix::fs::statat(tdir.as_fd(), *tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => {
                        return refused(format!(
                            "hard link target {:?} is not in the image",
                            clip(&target)
                        ))
                    }
                    Err(e) => return Err(io_err("stat hard link target")(e)),
                };
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return refused("hard link to a directory");
                }
                prepare_slot(parent, name, false)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, never what it points to.
                rustix::fs::linkat(tdir.as_fd(), *tname, parent, *name, AtFlags::empty())
                    .map_err(io_err("create hard link"))?;
            }
            T::Fifo => {
                prepare_slot(parent, name, false)?;
                rustix::fs::mknodat(parent, *name, FileType::Fifo, mode, 0)
                    .map_err(io_err("create fifo"))?;
            }
            T::Char | T::Block => return refused("device nodes are not allowed in images"),
            other => {
                return refused(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                ))
            }
        }
        let mut p = Vec::new();
        for c in &comps {
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(c);
            this_layer.insert(p.clone());
        }
        Ok(())
    }

    // Opens the directory `comps` under the root, every step resolved by the kernel inside the root. With
    // `create`, missing directories are made (layers may omit parent entries).
    fn open_dir(&self, comps: &[&[u8]], create: bool) -> EResult<OwnedFd> {
        let path = if comps.is_empty() {
            b".".to_vec()
        } else {
            join(comps)
        };
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let open = || {
            rustix::fs::openat2(
                &self.root,
                OsStr::from_bytes(&path),
                flags,
                Mode::empty(),
                how,
            )
        };
        let mapped = |e: Errno| match e {
            Errno::NOTDIR => {
                EntryError::Refused(format!("parent {:?} is not a directory", clip(&path)))
            }
            Errno::XDEV | Errno::LOOP => EntryError::Refused(format!(
                "{:?} leads through a symlink out of the image root",
                clip(&path)
            )),
            e => io_err("open parent directory")(e),
        };
        match open() {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) if create && !comps.is_empty() => {
                let (last, parents) = comps.split_last().unwrap_or((&comps[0], &[]));
                let parent = self.open_dir(parents, true)?;
                match rustix::fs::mkdirat(&parent, *last, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err("create parent directory")(e)),
                }
                open().map_err(mapped)
            }
            Err(e) => Err(mapped(e)),
        }
    }

    fn set_meta(
        &self,
        fd: BorrowedFd<'_>,
        uid: u64,
        gid: u64,
        mode: Mode,
        mtime: u64,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> EResult<()> {
        if self.chown {
            rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))
                .map_err(io_err("chown"))?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(fd, mode).map_err(io_err("chmod"))?;
        for (k, v) in xattrs {
            if let Err(e) = rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty())
            {
                // The file system under tmp/ may not take every namespace; the image still works without them.
                warn!(xattr = %String::from_utf8_lossy(k), "failed to keep extended attribute: {e}");
            }
        }
        rustix::fs::futimens(fd, &timestamps(mtime)).map_err(io_err("set times"))
    }
}

fn uid_of(id: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u32::try_from(id).unwrap_or(65534))
}
fn gid_of(id: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(u32::try_from(id).unwrap_or(65534))
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn is_enoent(e: &EntryError) -> bool {
    matches!(e, EntryError::Io(_, io) if io.kind() == io::ErrorKind::NotFound)
}

fn clip(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned()
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Splits an archive path into components, refusing absolute paths, `..`, NULs and over-long names.
pub fn split_path(raw: &[u8]) -> EResult<Vec<&[u8]>> {
    if raw.len() >= MAX_PATH {
        return refused("path longer than 4096 bytes");
    }
    if raw.contains(&0) {
        return refused("path contains a NUL byte");
    }
    if raw.starts_with(b"/") {
        return refused("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return refused("path contains '..'"),
            c if c.len() > 255 => return refused("path component longer than 255 bytes"),
            c => out.push(c),
        }
    }
    Ok(out)
}

// Gets `name` in `parent` ready to be created. Returns true when it is an existing directory that a directory
// entry should keep (tar semantics: a directory entry over a directory only updates its metadata).
fn prepare_slot(parent: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> EResult<bool> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(io_err("stat existing entry")(e)),
        Ok(st) => {
            let existing_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if existing_dir && is_dir {
                return Ok(true);
            }
            remove_all(parent, name)?;
            Ok(false)
        }
    }
}

// Removes `name` in `parent` and, for a directory, everything under it, never following a symlink.
fn remove_all(parent: BorrowedFd<'_>, name: &[u8]) -> EResult<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(io_err("remove entry")(e)),
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("open directory to remove"))?;
    for child in children(dir.as_fd())? {
        remove_all(dir.as_fd(), &child)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(io_err("remove directory"))
}

fn children(dir: BorrowedFd<'_>) -> EResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in Dir::read_from(dir).map_err(io_err("read directory"))? {
        let e = e.map_err(io_err("read directory"))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

fn clear_opaque(dir: BorrowedFd<'_>, prefix: &[u8], this_layer: &HashSet<Vec<u8>>) -> EResult<()> {
    for child in children(dir)? {
        let mut p = prefix.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&child);
        if !this_layer.contains(&p) {
            remove_all(dir, &child)?;
        }
    }
    Ok(())
}

fn read_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> EResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| EntryError::Io("read pax headers", e))?
    else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|e| EntryError::Io("read pax headers", e))?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        // user.* and file capabilities and ACLs are image content; trusted.* and the rest would steer the host
        // kernel (overlayfs uses trusted.overlay.*), so they are dropped.
        let keep = name.starts_with(b"user.")
            || name == b"security.capability"
            || name == b"system.posix_acl_access"
            || name == b"system.posix_acl_default";
        if keep {
            out.push((name.to_vec(), ext.value_bytes().to_vec()));
        } else {
            debug!(xattr = %String::from_utf8_lossy(name), "dropping extended attribute");
        }
    }
    Ok(out)
}

fn copy_limited(r: &mut impl Read, w: &mut impl Write, budget: u64, limit: u64) -> EResult<u64> {
    let mut buf = vec![0u8; 128 << 10];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EntryError::Io("read file data", e)),
        };
        n += k as u64;
        if n > budget {
            return refused(format!(
                "total unpacked size is over the limit of {limit} bytes"
            ));
        }
        w.write_all(&buf[..k])
            .map_err(|e| EntryError::Io("write file", e))?;
    }
}

/// Wraps `r` in the decompressor its magic number asks for (gzip, zstd) or none.
pub fn decompress<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 << 10, r);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

struct CapReader<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for CapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte would be over: is there one?
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "decompressed layer is over the limit of {} bytes",
                    self.cap
                ))),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Watches the tar stream go by and refuses extension headers (PAX, GNU long names) over a limit before the tar
/// crate reads them into memory (it reads them whole, with no bound of its own). It follows the same header
/// walk as the tar crate: header, data rounded up to 512, PAX `size` overriding the next entry's size.
struct TarGuard<R> {
    inner: R,
    max_ext: u64,
    pos: u64,
    next_header: u64,
    header: [u8; 512],
    pax: Option<(u64, Vec<u8>)>, // (data end, bytes) of a PAX header being captured
    pax_size: Option<u64>,
    done: bool,
}

impl<R: Read> TarGuard<R> {
    fn new(inner: R, max_ext: u64) -> Self {
        Self {
            inner,
            max_ext,
            pos: 0,
            next_header: 0,
            header: [0; 512],
            pax: None,
            pax_size: None,
            done: false,
        }
    }

    fn observe(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() && !self.done {
            if self.pos < self.next_header {
                let k = data
                    .len()
                    .min(usize::try_from(self.next_header - self.pos).unwrap_or(usize::MAX));
                if let Some((end, buf)) = &mut self.pax {
                    let take =
                        k.min(usize::try_from(end.saturating_sub(self.pos)).unwrap_or(usize::MAX));
                    buf.extend_from_slice(&data[..take]);
                }
                self.pos += k as u64;
                data = &data[k..];
                if self.pos == self.next_header {
                    if let Some((_, buf)) = self.pax.take() {
                        self.pax_size = pax_value(&buf, b"size")
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                    }
                }
                continue;
            }
            let off = usize::try_from(self.pos - self.next_header).unwrap_or(512);
            let k = data.len().min(512 - off);
            self.header[off..off + k].copy_from_slice(&data[..k]);
            self.pos += k as u64;
            data = &data[k..];
            if off + k == 512 {
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> io::Result<()> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            self.done = true; // End of archive as the tar crate reads it.
            return Ok(());
        }
        let Some(size) = header_size(&h[124..136]) else {
            self.done = true; // The tar crate refuses this header itself.
            return Ok(());
        };
        let kind = h[156];
        let is_ext = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if is_ext && size > self.max_ext {
            return Err(io::Error::other(format!(
                "tar extension header of {size} bytes is over the limit of {}",
                self.max_ext
            )));
        }
        if kind == b'S' && h[482] != 0 {
            return Err(io::Error::other(
                "GNU sparse entries with extension blocks are not supported",
            ));
        }
        let data = if is_ext {
            size
        } else {
            self.pax_size.take().unwrap_or(size)
        };
        let start = self.pos;
        if kind == b'x' {
            self.pax = Some((start + data, Vec::new()));
        }
        let padded = data
            .checked_add(511)
            .ok_or_else(|| io::Error::other("tar entry size overflow"))?
            & !511;
        self.next_header = start
            .checked_add(padded)
            .ok_or_else(|| io::Error::other("tar entry size overflow"))?;
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256 (GNU) encoding.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

// PAX records are "<len> <key>=<value>\n".
fn pax_value<'a>(mut buf: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    while !buf.is_empty() {
        let sp = buf.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&buf[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > buf.len() {
            return found;
        }
        let rec = &buf[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            if &rec[..eq] == key {
                found = Some(&rec[eq + 1..]);
            }
        }
        buf = &buf[len..];
    }
    found
}
