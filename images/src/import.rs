//! Import without a registry: an OCI image layout (directory or tar, spec image-layout.md) or a `docker save`
//! archive (manifest.json + config + layer tars). Every blob is verified as a pull verifies it: a layout's blobs
//! against their descriptors, a docker archive's config against its file name and its layers against the
//! config's diff_ids. A tar is first unpacked with the same hostile-input unpacker the layers use.

use crate::digest::Digest;
use crate::store::{self, ImageStore, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::unpack::{UnpackLimits, Unpacker};
use crate::{builtin, reference, Error, Image, Result};
use oci_spec::image::{Arch, Descriptor, ImageIndex, MediaType, Os};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

pub(crate) fn import(store: &ImageStore, path: &Path, name: &str) -> Result<Image> {
    let name = if builtin::is_builtin_name(name) {
        builtin::BUILTIN_NAME.to_string()
    } else {
        reference::normalize_reference(name)?
    };
    let meta = std::fs::metadata(path).map_err(Error::io("read", path))?;
    let work;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        work = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(store.tmp_dir())
            .map_err(Error::io("create work directory in", store.tmp_dir()))?;
        let file = File::open(path).map_err(Error::io("open", path))?;
        let limits = UnpackLimits {
            max_total_bytes: store.unpack_limits().max_total_bytes,
            max_entries: 100_000,
            ..UnpackLimits::default()
        };
        let mut u = Unpacker::new(work.path(), limits).map_err(|source| Error::Unpack {
            layer: path.display().to_string(),
            source,
        })?;
        u.unpack_layer(file).map_err(|source| Error::Unpack {
            layer: path.display().to_string(),
            source,
        })?;
        work.path().to_path_buf()
    };
    let mut layout = Layout::open(&dir)?;
    // Recorded as the image's provenance: the file or directory the user named, made absolute.
    layout.source = std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    if layout.exists("index.json") {
        import_oci(store, &layout, &name)
    } else if layout.exists("manifest.json") {
        import_docker(store, &layout, &name)
    } else {
        Err(Error::invalid(
            path.display().to_string(),
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

// A layout directory; every file is opened by the kernel resolving inside it.
struct Layout {
    fd: OwnedFd,
    path: String,
    /// What the user imported (the archive, not its extraction directory).
    source: String,
}

impl Layout {
    fn origin(&self) -> crate::store::Origin {
        crate::store::Origin::Import {
            path: self.source.clone(),
        }
    }

    fn open(dir: &Path) -> Result<Self> {
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            what: "open",
            path: dir.into(),
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            path: dir.display().to_string(),
            source: dir.display().to_string(),
        })
    }
    fn file(&self, rel: &str) -> Result<File> {
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            how,
        )
        .map(File::from)
        .map_err(|e| Error::Io {
            what: "open",
            path: Path::new(&self.path).join(rel),
            source: e.into(),
        })
    }
    fn exists(&self, rel: &str) -> bool {
        self.file(rel).is_ok()
    }
    fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.file(rel)?
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(Error::io("read", Path::new(&self.path).join(rel)))?;
        if data.len() as u64 > limit {
            return Err(Error::TooLarge {
                what: rel.to_string(),
                size: data.len() as u64,
                limit,
            });
        }
        Ok(data)
    }
    fn blob_rel(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }
}

fn import_oci(store: &ImageStore, layout: &Layout, name: &str) -> Result<Image> {
    let mut index_bytes = layout.read("index.json", MAX_MANIFEST_BYTES)?;
    let mut what = "index.json".to_string();
    // An index may point at a further (multi-platform) index: follow at most one more level.
    for _ in 0..2 {
        let index: ImageIndex =
            serde_json::from_slice(&index_bytes).map_err(|source| Error::Json {
                what: what.clone(),
                source,
            })?;
        let desc = choose(&index, name).ok_or_else(|| {
            Error::invalid(
                what.clone(),
                format!(
                    "lists {} manifests and none is linux/amd64 or named {name}",
                    index.manifests().len()
                ),
            )
        })?;
        let d = Digest::parse(desc.digest().as_ref())?;
        if desc.size() > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge {
                what: format!("manifest {d}"),
                size: desc.size(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let bytes = layout.read(&Layout::blob_rel(&d), MAX_MANIFEST_BYTES)?;
        verify(&format!("manifest {d}"), &bytes, &d, desc.size())?;
        match desc.media_type() {
            MediaType::ImageIndex => {
                index_bytes = bytes;
                what = format!("index {d}");
            }
            _ => return import_manifest(store, layout, name, &bytes, &d),
        }
    }
    Err(Error::invalid(
        what,
        "image indexes nested deeper than two levels",
    ))
}

fn choose<'a>(index: &'a ImageIndex, name: &str) -> Option<&'a Descriptor> {
    let m = index.manifests();
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let ref_name = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
    };
    let amd64 = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_none_or(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    };
    if m.len() == 1 {
        return m.first();
    }
    m.iter()
        .filter(amd64)
        .find(|d| ref_name(d).as_deref() == Some(tag))
        .or_else(|| {
            let candidates: Vec<_> = m
                .iter()
                .filter(|d| {
                    d.platform()
                        .as_ref()
                        .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
                })
                .collect();
            (candidates.len() == 1).then(|| candidates[0])
        })
}

fn verify(what: &str, bytes: &[u8], d: &Digest, size: u64) -> Result<()> {
    if bytes.len() as u64 != size {
        return Err(Error::SizeMismatch {
            what: what.into(),
            expected: size,
            actual: bytes.len() as u64,
        });
    }
    let got = Digest::of(bytes);
    if &got != d {
        return Err(Error::DigestMismatch {
            what: what.into(),
            expected: d.to_string(),
            actual: got.to_string(),
        });
    }
    Ok(())
}

fn import_manifest(
    store: &ImageStore,
    layout: &Layout,
    name: &str,
    bytes: &[u8],
    digest: &Digest,
) -> Result<Image> {
    let manifest = store::parse_manifest(bytes, digest)?;
    let cfg = manifest.config();
    let cd = Digest::parse(cfg.digest().as_ref())?;
    if cfg.size() > MAX_CONFIG_BYTES {
        return Err(Error::TooLarge {
            what: format!("config {cd}"),
            size: cfg.size(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    copy_blob(store, layout, "config", &cd, cfg.size(), MAX_CONFIG_BYTES)?;
    let config = store::parse_config(&store.read_blob(&cd, MAX_CONFIG_BYTES)?, &cd)?;
    store::check_layers_match(&manifest, &config, digest)?;
    for l in manifest.layers() {
        let d = Digest::parse(l.digest().as_ref())?;
        copy_blob(
            store,
            layout,
            "layer",
            &d,
            l.size(),
            store.max_layer_bytes(),
        )?;
    }
    store.commit_image(name, bytes, layout.origin())
}

fn copy_blob(
    store: &ImageStore,
    layout: &Layout,
    what: &str,
    d: &Digest,
    size: u64,
    limit: u64,
) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            what: format!("{what} {d}"),
            size,
            limit,
        });
    }
    if store.has_blob(d, Some(size)) {
        return Ok(());
    }
    let mut f = layout.file(&Layout::blob_rel(d))?;
    store.put_blob(
        &format!("{what} {d}"),
        d,
        Some(size),
        limit,
        &mut f,
        &mut |_| {},
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker(store: &ImageStore, layout: &Layout, name: &str) -> Result<Image> {
    let list: Vec<DockerManifest> = serde_json::from_slice(&layout.read("manifest.json", 1 << 20)?)
        .map_err(|source| Error::Json {
            what: "manifest.json".into(),
            source,
        })?;
    let entry = if list.len() == 1 {
        &list[0]
    } else {
        list.iter()
            .find(|m| {
                m.repo_tags
                    .iter()
                    .flatten()
                    .any(|t| reference::normalize_reference(t).is_ok_and(|n| n == name))
            })
            .ok_or_else(|| {
                Error::invalid(
                    "manifest.json",
                    format!("lists {} images and none is tagged {name}", list.len()),
                )
            })?
    };
    // Legacy archives name the config "<hex>.json", newer ones "blobs/sha256/<hex>": either way the name is the
    // digest, so the bytes must hash to it.
    let config_bytes = layout.read(&entry.config, MAX_CONFIG_BYTES)?;
    let cd = Digest::of(&config_bytes);
    if let Some(named) = digest_in_name(&entry.config) {
        if named != cd.hex() {
            return Err(Error::DigestMismatch {
                what: format!("config {}", entry.config),
                expected: format!("sha256:{named}"),
                actual: cd.to_string(),
            });
        }
    }
    store.put_blob_bytes(&config_bytes)?;
    let config = store::parse_config(&config_bytes, &cd)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::invalid(
            "manifest.json",
            format!(
                "lists {} layers but the config lists {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (rel, diff_id) in entry.layers.iter().zip(diff_ids) {
        let mut f = layout.file(rel)?;
        let (d, size) =
            store.put_blob_computed(&format!("layer {rel}"), store.max_layer_bytes(), &mut f)?;
        if let Some(named) = digest_in_name(rel) {
            if named != d.hex() {
                return Err(Error::DigestMismatch {
                    what: format!("layer {rel}"),
                    expected: format!("sha256:{named}"),
                    actual: d.to_string(),
                });
            }
        }
        let mut head = [0u8; 4];
        let n = File::open(store.blob_path(&d))
            .and_then(|mut f| f.read(&mut head))
            .map_err(Error::io("read", store.blob_path(&d)))?;
        let media_type = match &head[..n] {
            [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => {
                // Uncompressed: the blob digest is the diff_id.
                if d.as_str() != diff_id {
                    return Err(Error::DigestMismatch {
                        what: format!("layer {rel} (diff_id)"),
                        expected: diff_id.clone(),
                        actual: d.to_string(),
                    });
                }
                "application/vnd.oci.image.layer.v1.tar"
            }
        };
        layers.push(
            serde_json::json!({ "mediaType": media_type, "digest": d.as_str(), "size": size }),
        );
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config_bytes.len() },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
        what: "converted manifest".into(),
        source,
    })?;
    store.commit_image(name, &bytes, layout.origin())
}

// "<hex>.json" or "blobs/sha256/<hex>" -> hex.
fn digest_in_name(rel: &str) -> Option<String> {
    // ("<id>/layer.tar" names a legacy v1 layer id, not a digest.)
    let candidates = [rel.strip_prefix("blobs/sha256/"), rel.strip_suffix(".json")];
    candidates
        .into_iter()
        .flatten()
        .find(|h| Digest::parse(&format!("sha256:{h}")).is_ok())
        .map(str::to_string)
}
