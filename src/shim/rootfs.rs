//! The container's root filesystem, from the snapshot mounts containerd hands the shim to the read-only block
//! image the guest mounts as /dev/vda.
//!
//! How: containerd's snapshotter gives the rootfs as mounts (overlay with `lowerdir=` the image's committed layers
//! and an empty `upperdir` for the container, or a bind mount of a directory). The guest cannot see host
//! directories (mvrun shares no filesystem with the guest, by design), so the shim packs the tree into an erofs
//! image with the same builder `mvrun run` uses (`images::rootfs::build_image`):
//! - a single lower layer with an empty upper is packed straight from the layer's directory; several layers are
//!   first stacked with a private read-only overlay mount under a temporary directory, unmounted right after;
//! - the image is cached under `<data root>/shim-rootfs/` by the identity of the committed layers (path, device,
//!   inode and change time of each lower directory: committed snapshots never change, and a directory deleted and
//!   made again gets a new inode or ctime), so the second container of an image boots without a build;
//! - a non-empty upper dir, a bind mount, or a spec root directory with no mounts at all (`ctr run --rootfs DIR`)
//!   is a writable, changing tree: packed uncached for this container only, and removed with it.
//!
//! The writable layer is the guest's own: guest-init lays a tmpfs upper over the read-only image (its size bounded
//! by the guest's RAM). Writes therefore stay in the VM and vanish with it; containerd's `upperdir` is never
//! written (so `ctr snapshot diff` of a container shows nothing — a known difference from runc).

use containerd_shim::protos::types::mount::Mount;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors preparing a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// containerd gave no mount, several, or one of a kind mvrun cannot read.
    #[error("failed to use the rootfs mounts: {0}")]
    Unsupported(String),
    /// A filesystem operation failed.
    #[error("failed to {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The overlay mount failed.
    #[error("failed to mount the rootfs layers at {0}")]
    Mount(PathBuf, #[source] nix::Error),
    /// mkfs failed.
    #[error(transparent)]
    Build(#[from] images::rootfs::Error),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A block image ready for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsImage {
    /// The image file.
    pub path: PathBuf,
    /// Whether it belongs to this container alone (delete it with the container) or to the shared cache.
    pub private: bool,
}

/// What the rootfs is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Read-only layers, topmost first.
    Layers(Vec<PathBuf>),
    /// Layers with something already written on top (a non-empty upper dir, or a plain directory).
    Changed(Vec<PathBuf>),
}

/// Reads containerd's mounts; with none (`ctr run --rootfs DIR`), the spec's root directory is the tree.
fn source(mounts: &[Mount], root_dir: Option<&Path>) -> Result<Source, Error> {
    if let ([], Some(dir)) = (mounts, root_dir) {
        return Ok(Source::Changed(vec![dir.to_path_buf()]));
    }
    let [m] = mounts else {
        return Err(Error::Unsupported(format!(
            "expected one mount, got {}",
            mounts.len()
        )));
    };
    let opt = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    match m.type_.as_str() {
        "overlay" => {
            let lower: Vec<PathBuf> = opt("lowerdir")
                .ok_or_else(|| Error::Unsupported("overlay mount without lowerdir".into()))?
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
            match opt("upperdir").map(PathBuf::from) {
                Some(upper) if !dir_is_empty(&upper)? => Ok(Source::Changed(
                    std::iter::once(upper).chain(lower).collect(),
                )),
                _ => Ok(Source::Layers(lower)),
            }
        }
        "bind" | "rbind" => Ok(Source::Changed(vec![PathBuf::from(&m.source)])),
        other => Err(Error::Unsupported(format!(
            "mount type {other:?} (mvrun reads overlay and bind snapshots)"
        ))),
    }
}

fn dir_is_empty(dir: &Path) -> Result<bool, Error> {
    Ok(fs::read_dir(dir).map_err(io("read", dir))?.next().is_none())
}

/// The cache key of a stack of committed layers.
fn layers_key(layers: &[PathBuf]) -> Result<String, Error> {
    let mut h = Sha256::new();
    for l in layers {
        let m = fs::metadata(l).map_err(io("stat", l))?;
        h.update(l.as_os_str().as_encoded_bytes());
        h.update(
            format!(
                "\0{}:{}:{}.{}\n",
                m.dev(),
                m.ino(),
                m.ctime(),
                m.ctime_nsec()
            )
            .as_bytes(),
        );
    }
    Ok(hex::encode(h.finalize()))
}

/// Builds (or finds in the cache) the block image for containerd's rootfs `mounts` (or, when there are none, the
/// OCI spec's root directory `root_dir`); `scratch` is a directory of this container's for private images and
/// temporary mount points.
pub fn prepare(
    mounts: &[Mount],
    root_dir: Option<&Path>,
    cache: &Path,
    scratch: &Path,
) -> Result<RootfsImage, Error> {
    let format = images::RootfsFormat::Erofs;
    match source(mounts, root_dir)? {
        Source::Layers(layers) => {
            fs::create_dir_all(cache).map_err(io("create", cache))?;
            let path = cache.join(format!("{}.{}", layers_key(&layers)?, format.extension()));
            if path.is_file() {
                return Ok(RootfsImage {
                    path,
                    private: false,
                });
            }
            // Built under a unique name and renamed: concurrent builders of the same layers both succeed and the
            // cache never holds a half-written image.
            let tmp = cache.join(format!(
                ".{}.{}.tmp",
                std::process::id(),
                rand::random::<u32>()
            ));
            let built = build(&layers, &tmp, scratch, format);
            if let Err(e) = built {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
            Ok(RootfsImage {
                path,
                private: false,
            })
        }
        Source::Changed(layers) => {
            let path = scratch.join(format!("rootfs.{}", format.extension()));
            let _ = fs::remove_file(&path);
            build(&layers, &path, scratch, format)?;
            Ok(RootfsImage {
                path,
                private: true,
            })
        }
    }
}

fn build(
    layers: &[PathBuf],
    out: &Path,
    scratch: &Path,
    format: images::RootfsFormat,
) -> Result<(), Error> {
    if let [only] = layers {
        return Ok(images::rootfs::build_image(only, out, format)?);
    }
    let target = scratch.join("rootfs-layers");
    fs::create_dir_all(&target).map_err(io("create", &target))?;
    let lower = layers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // Only lower dirs: the kernel makes a read-only overlay and touches none of containerd's directories.
    nix::mount::mount(
        Some(OsStr::new("overlay")),
        &target,
        Some(OsStr::new("overlay")),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lower}").as_str()),
    )
    .map_err(|e| Error::Mount(target.clone(), e))?;
    let built = images::rootfs::build_image(&target, out, format);
    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&target);
    Ok(built?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[String]) -> Mount {
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: options.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn layers_with_an_empty_upper_are_cacheable() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let m = overlay(&[
            "index=off".into(),
            format!("upperdir={}", upper.display()),
            "lowerdir=/l/2:/l/1".into(),
        ]);
        assert_eq!(
            source(std::slice::from_ref(&m), None).unwrap(),
            Source::Layers(vec!["/l/2".into(), "/l/1".into()])
        );
        fs::write(upper.join("written"), b"x").unwrap();
        assert_eq!(
            source(&[m], None).unwrap(),
            Source::Changed(vec![upper, "/l/2".into(), "/l/1".into()])
        );
    }

    #[test]
    fn odd_mounts_are_refused_with_a_reason() {
        assert!(source(&[], None).is_err());
        assert_eq!(
            source(&[], Some(Path::new("/b/rootfs"))).unwrap(),
            Source::Changed(vec!["/b/rootfs".into()]),
            "ctr run --rootfs: the spec's root directory"
        );
        let m = Mount {
            type_: "tmpfs".into(),
            ..Default::default()
        };
        let e = source(&[m], None).unwrap_err().to_string();
        assert!(e.contains("tmpfs"), "{e}");
        assert!(source(&[overlay(&["upperdir=/x".into()])], None).is_err());
    }

    #[test]
    fn the_key_follows_the_layers_identity() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir(&a).unwrap();
        let k1 = layers_key(std::slice::from_ref(&a)).unwrap();
        assert_eq!(k1, layers_key(std::slice::from_ref(&a)).unwrap());
        fs::remove_dir(&a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::create_dir(&a).unwrap();
        fs::write(t.path().join("pad"), b"").unwrap();
        assert_ne!(
            k1,
            layers_key(std::slice::from_ref(&a)).unwrap(),
            "a re-made directory is new"
        );
    }

    #[test]
    fn a_single_layer_is_packed_and_cached() {
        if std::process::Command::new("mkfs.erofs")
            .arg("--help")
            .output()
            .is_err()
        {
            println!("SKIP: mkfs.erofs (erofs-utils) is not installed");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        fs::create_dir_all(layer.join("bin")).unwrap();
        fs::write(layer.join("bin/x"), b"hello").unwrap();
        let m = overlay(&[format!("lowerdir={}", layer.display())]);
        let cache = t.path().join("cache");
        let scratch = t.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let img = prepare(std::slice::from_ref(&m), None, &cache, &scratch).unwrap();
        assert!(!img.private && img.path.starts_with(&cache));
        let again = prepare(&[m], None, &cache, &scratch).unwrap();
        assert_eq!(img, again);
        assert_eq!(
            fs::read_dir(&cache).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
