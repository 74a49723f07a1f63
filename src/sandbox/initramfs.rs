//! The guest's initramfs: a newc cpio archive holding the static `guest-init` as `/init`, built once per
//! guest-init binary and cached under `$MVRUN_ROOT/initramfs/<sha256>.cpio`.

use crate::paths;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Where setup installs the static guest-init.
pub const INSTALLED_GUEST_INIT: &str = "/usr/local/lib/mvrun/guest-init";
const S_IFCHR: u32 = 0o020000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Errors finding guest-init or building the archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No guest-init binary anywhere.
    #[error("guest-init not found (looked at $MVRUN_GUEST_INIT, {INSTALLED_GUEST_INIT} and next to mvrun): run scripts/build.sh, or set MVRUN_GUEST_INIT")]
    NotFound,
    /// The binary is dynamically linked and cannot run in the guest.
    #[error("guest-init at {0} is dynamically linked; the guest has no shared libraries: build it with guest-init/build-static.sh")]
    Dynamic(PathBuf),
    /// A filesystem operation failed.
    #[error("failed to {what} {path}")]
    Io {
        /// What.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Finds the static guest-init: `$MVRUN_GUEST_INIT`, the installed one, or one beside the running mvrun.
pub fn find_guest_init() -> Result<PathBuf, Error> {
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("guest-init")));
    let candidates = std::env::var_os("MVRUN_GUEST_INIT")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(INSTALLED_GUEST_INIT)])
        .chain(beside_exe);
    for c in candidates {
        if c.is_file() {
            let bytes = fs::read(&c).map_err(|source| Error::Io {
                what: "read",
                path: c.clone(),
                source,
            })?;
            if has_interpreter(&bytes) {
                if std::env::var_os("MVRUN_GUEST_INIT").is_some() {
                    return Err(Error::Dynamic(c));
                }
                continue;
            }
            return Ok(c);
        }
    }
    Err(Error::NotFound)
}

/// Whether an ELF file asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let rd16 = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(entsize), Some(num)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    (0..usize::from(num)).any(|i| {
        let off = phoff as usize + i * usize::from(entsize);
        elf.get(off..off + 4)
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
}

/// The archive for `init` (its bytes become `/init`).
pub fn build_archive(init: &[u8]) -> std::io::Result<Vec<u8>> {
    let dir = |name: &str| cpio::NewcBuilder::new(name).mode(S_IFDIR | 0o755).nlink(2);
    let entries: Vec<(cpio::NewcBuilder, Cursor<&[u8]>)> = vec![
        (dir("dev"), Cursor::new(&[][..])),
        // The kernel opens /dev/console for init's stdio before anything is mounted.
        (
            cpio::NewcBuilder::new("dev/console")
                .mode(S_IFCHR | 0o600)
                .rdev_major(5)
                .rdev_minor(1),
            Cursor::new(&[][..]),
        ),
        (dir("proc"), Cursor::new(&[][..])),
        (dir("sys"), Cursor::new(&[][..])),
        (dir("run"), Cursor::new(&[][..])),
        (dir("mnt"), Cursor::new(&[][..])),
        (
            cpio::NewcBuilder::new("init").mode(S_IFREG | 0o755),
            Cursor::new(init),
        ),
    ];
    cpio::write_cpio(entries.into_iter(), Vec::new())
}

/// The cached initramfs for `guest_init`, built if missing.
pub fn ensure(guest_init: &Path) -> Result<PathBuf, Error> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let init = fs::read(guest_init).map_err(io("read", guest_init))?;
    let digest = hex::encode(Sha256::digest(&init));
    let dir = paths::data_root().join("initramfs");
    let out = dir.join(format!("{}.cpio", &digest[..32]));
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let archive = build_archive(&init).map_err(io("build", &out))?;
    crate::sandbox::state::write_atomic(&out, &archive).map_err(|e| Error::Io {
        what: "write",
        path: out.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_init_and_console() {
        let bytes = build_archive(b"#!init").unwrap();
        let mut names = Vec::new();
        let mut cur = Cursor::new(bytes);
        loop {
            let r = cpio::NewcReader::new(cur).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            names.push((e.name().to_string(), e.mode(), e.file_size()));
            cur = r.finish().unwrap();
        }
        assert!(names.contains(&("init".into(), S_IFREG | 0o755, 6)));
        assert!(names
            .iter()
            .any(|(n, m, _)| n == "dev/console" && m & S_IFCHR != 0));
    }

    #[test]
    fn dynamic_binaries_are_recognized() {
        let me = fs::read("/proc/self/exe").unwrap();
        assert!(
            has_interpreter(&me),
            "the test binary is dynamically linked"
        );
        assert!(!has_interpreter(b"\x7fELF"));
        assert!(!has_interpreter(&[]));
    }
}
