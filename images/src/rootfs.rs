//! The read-only rootfs block image each sandbox mounts as /dev/vda: the image's layers unpacked in order into a
//! work directory, then packed with `mkfs.erofs` (erofs-utils) or `mkfs.ext4 -d` (e2fsprogs).
//! images/README.md has the measurements behind the default (erofs: faster to build, smaller).

use crate::store::{Image, ImageStore};
use crate::unpack::Unpacker;
use crate::Digest;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tracing::info;

/// Block image formats the guest kernel mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootfsFormat {
    /// erofs, uncompressed (no decompression cost on guest reads).
    #[default]
    Erofs,
    /// ext4 without a journal.
    Ext4,
}

impl RootfsFormat {
    /// File extension in `rootfs/`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Erofs => "erofs",
            Self::Ext4 => "ext4",
        }
    }
}

impl std::str::FromStr for RootfsFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "erofs" => Ok(Self::Erofs),
            "ext4" => Ok(Self::Ext4),
            _ => Err(format!("unknown rootfs format {s:?} (erofs or ext4)")),
        }
    }
}

/// Rootfs build failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("failed to {0} {1}")]
    Io(&'static str, PathBuf, #[source] io::Error),
    /// The mkfs tool could not run or failed.
    #[error("failed to build the rootfs image with {tool}: {detail}")]
    Mkfs {
        /// The tool.
        tool: &'static str,
        /// Exit status and the end of its stderr, or why it did not start.
        detail: String,
    },
}

/// Packs `dir` into the block image `out` (which must not exist).
pub fn build_image(dir: &Path, out: &Path, format: RootfsFormat) -> Result<(), Error> {
    let mut cmd;
    let tool;
    match format {
        RootfsFormat::Erofs => {
            tool = "mkfs.erofs";
            cmd = Command::new(tool);
            cmd.arg("--quiet").arg(out).arg(dir);
        }
        RootfsFormat::Ext4 => {
            tool = "mkfs.ext4";
            let (bytes, inodes) = tree_usage(dir)?;
            // Data in 4 KiB blocks plus inode tables, bitmaps and directories: 10% + 16 MiB headroom.
            let size_kib = (bytes + inodes * 4096) / 1024 * 11 / 10 + 16 * 1024;
            let f = File::create(out).map_err(|e| Error::Io("create", out.into(), e))?;
            f.set_len(size_kib * 1024)
                .map_err(|e| Error::Io("size", out.into(), e))?;
            cmd = Command::new(tool);
            cmd.args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-m",
                "0",
                "-O",
                "^has_journal,^resize_inode",
            ])
            .arg("-N")
            .arg((inodes + inodes / 5 + 1024).to_string())
            .arg("-E")
            .arg("root_owner=0:0")
            .arg("-d")
            .arg(dir)
            .arg(out)
            .arg(format!("{size_kib}k"));
        }
    }
    let output = cmd.output().map_err(|e| Error::Mkfs {
        tool,
        detail: format!(
            "cannot run it ({e}); install {}",
            if tool == "mkfs.erofs" {
                "erofs-utils"
            } else {
                "e2fsprogs"
            }
        ),
    })?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ");
        return Err(Error::Mkfs {
            tool,
            detail: format!("{}: {tail}", output.status),
        });
    }
    Ok(())
}

fn tree_usage(dir: &Path) -> Result<(u64, u64), Error> {
    let (mut bytes, mut inodes) = (0u64, 1u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| Error::Io("read", d.clone(), e))? {
            let e = e.map_err(|e| Error::Io("read", d.clone(), e))?;
            let m = e
                .path()
                .symlink_metadata()
                .map_err(|err| Error::Io("stat", e.path(), err))?;
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Unpacks `image`'s layers in order into the empty directory `tree`, checking each against its diff_id.
pub(crate) fn unpack_image(store: &ImageStore, image: &Image, tree: &Path) -> crate::Result<()> {
    let mut unpacker = Unpacker::new(tree, store.unpack_limits().clone()).map_err(|source| {
        crate::Error::Unpack {
            layer: "-".into(),
            source,
        }
    })?;
    let diff_ids = image.config().rootfs().diff_ids();
    for (layer, diff_id) in image.manifest().layers().iter().zip(diff_ids) {
        let d = Digest::parse(layer.digest().as_ref())?;
        let path = store.blob_path(&d);
        let file = File::open(&path).map_err(crate::Error::io("open layer", &path))?;
        let got = unpacker
            .unpack_layer(file)
            .map_err(|source| crate::Error::Unpack {
                layer: d.to_string(),
                source,
            })?;
        if got.as_str() != diff_id {
            return Err(crate::Error::Unpack {
                layer: d.to_string(),
                source: crate::unpack::Error::DiffId {
                    expected: diff_id.clone(),
                    actual: got.to_string(),
                },
            });
        }
    }
    Ok(())
}

/// Unpacks `image`'s layers (checking each against its diff_id) and packs them into `dest`, atomically.
pub(crate) fn build_for_image(store: &ImageStore, image: &Image, dest: &Path) -> crate::Result<()> {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in(store.tmp_dir())
        .map_err(crate::Error::io(
            "create work directory in",
            store.tmp_dir(),
        ))?;
    let tree = work.path().join("rootfs");
    fs::create_dir(&tree).map_err(crate::Error::io("create", &tree))?;
    unpack_image(store, image, &tree)?;
    let unpacked = started.elapsed();
    let out = work.path().join("image");
    build_image(&tree, &out, store.rootfs_format())?;
    File::open(&out)
        .and_then(|f| f.sync_all())
        .map_err(crate::Error::io("sync", &out))?;
    fs::rename(&out, dest).map_err(crate::Error::io("rename into place", dest))?;
    crate::store::sync_dir(dest.parent().unwrap_or(store.root()))?;
    info!(image = %image.digest(), ?unpacked, total = ?started.elapsed(), path = %dest.display(), "built rootfs image");
    Ok(())
}
