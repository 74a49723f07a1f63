//! The scratch disk (`--storage-opt size=SIZE`): a sparse file in the sandbox's runtime directory, formatted as
//! ext4 on the host and attached as the guest's second, writable virtio-blk disk (/dev/vdb), where guest-init
//! puts the overlay's upper layer instead of a tmpfs in guest RAM. It lives and goes with the sandbox's runtime
//! files.
//!
//! Formatted here, not in the guest: mkfs on the host costs milliseconds, in an emulated guest it would cost
//! seconds and a mkfs in the initramfs; the guest only ever mounts it.

use std::path::Path;
use std::process::{Command, Stdio};

/// The scratch file's name in the sandbox directory.
pub const FILE_NAME: &str = "scratch.ext4";
/// The guest device it becomes (the rootfs is /dev/vda, attached first).
pub const GUEST_DEVICE: &str = "/dev/vdb";

/// Errors making the scratch disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sparse file could not be created.
    #[error("failed to create the scratch disk {path}")]
    Create {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.ext4 could not run.
    #[error("failed to run mkfs.ext4 (install e2fsprogs)")]
    Mkfs(#[source] std::io::Error),
    /// mkfs.ext4 failed.
    #[error("failed to format the scratch disk {path}: mkfs.ext4 said: {stderr}")]
    MkfsFailed {
        /// The file.
        path: std::path::PathBuf,
        /// What it printed.
        stderr: String,
    },
}

/// Creates `path` (which must not exist) as a sparse ext4 image of `size_mib` MiB. On failure nothing is left at
/// `path`.
pub fn create(path: &Path, size_mib: u64) -> Result<(), Error> {
    let create_err = |source| Error::Create {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(create_err)?;
    let result = file
        .set_len(size_mib << 20)
        .map_err(create_err)
        .and_then(|()| format(path));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn format(path: &Path) -> Result<(), Error> {
    // No journal: the disk dies with the sandbox, so crash consistency buys nothing and journal writes cost guest
    // instructions. No reserved blocks: there is no root-owned daemon to keep room for. Inode tables are zeroed
    // here (lazy_itable_init=0) so the guest kernel does not spend emulated time doing it in the background.
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,nodiscard",
            "-L",
            "mvrun-scratch",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::Mkfs)?;
    if !out.status.success() {
        return Err(Error::MkfsFailed {
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn makes_a_sparse_ext4_image() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            println!("SKIP: mkfs.ext4 is not installed (e2fsprogs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        create(&path, 256).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 256 << 20);
        assert!(
            meta.blocks() * 512 < meta.len() / 4,
            "sparse: {} bytes allocated",
            meta.blocks() * 512
        );
        let out = Command::new("dumpe2fs").arg("-h").arg(&path).output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("mvrun-scratch"), "{text}");
            assert!(!text.contains("has_journal"), "{text}");
        }
        // An existing file is never overwritten, and a failure leaves nothing behind.
        assert!(matches!(create(&path, 256), Err(Error::Create { .. })));
        assert!(path.exists(), "the existing file is not ours to remove");
        let bad = dir.path().join("tiny");
        assert!(matches!(create(&bad, 0), Err(Error::MkfsFailed { .. })));
        assert!(!bad.exists());
    }
}
