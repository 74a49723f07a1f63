//! The content-addressed store under `MVRUN_ROOT`.
//!
//! ```text
//! blobs/sha256/<hex>          manifests, configs and layers, each verified against its digest before it lands
//! image-index.json            { "images": { "<normalized name>": { "manifest": "sha256:..." } } }
//! rootfs/<hex>.<erofs|ext4>   block image built from the manifest <hex>
//! tmp/                        work files; renamed into place when complete, swept by prune
//! locks/                      flock files
//! ```
//! Every file appears by rename after fsync, so a crash leaves either the old state or the new one plus garbage in
//! tmp/ and unreferenced blobs (both removed by prune). Pulls, imports and rootfs builds hold `locks/store.lock`
//! shared; prune holds it exclusive so it never deletes a blob that a running pull has written but not yet indexed.
//! The index itself is rewritten under `locks/index.lock`.

use crate::digest::{Digest, HashingWriter};
use crate::registry::PullOptions;
use crate::rootfs::RootfsFormat;
use crate::unpack::UnpackLimits;
use crate::{reference, Error, Result};
use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};
use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

/// Largest manifest or index accepted (the limit docker's registry applies on push).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers an image may have.
pub const MAX_LAYERS: usize = 256;

const INDEX_FILE: &str = "image-index.json";

/// Handle on the store. Cheap; every method takes the locks it needs.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    format: RootfsFormat,
    limits: UnpackLimits,
    max_layer_bytes: u64,
}

/// One image in the store: its manifest and config, both verified.
#[derive(Debug, Clone)]
pub struct Image {
    name: Option<String>,
    digest: Digest,
    manifest: ImageManifest,
    config: ImageConfiguration,
    origin: Option<Origin>,
}

/// Where an image in the store came from, recorded when it was named (pull, import or the built-in recipe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// Pulled from a registry.
    Registry {
        /// The registry host (`registry-1.docker.io`, `127.0.0.1:5000`).
        registry: String,
        /// Whether the pull used HTTPS (false: plain HTTP, asked for with `--insecure` or a localhost registry).
        tls: bool,
    },
    /// Imported from a local OCI layout or `docker save` archive.
    Import {
        /// The path it was imported from, as given.
        path: String,
    },
    /// mvrun's built-in image, made from the host's busybox-static.
    BuiltIn,
}

impl Image {
    /// The normalized name it was resolved by, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// The manifest digest (the image's identity in the store).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    /// The image manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }
    /// The image configuration: `config().config()` holds Env, Cmd, Entrypoint, User, WorkingDir.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }
    /// Where it came from; `None` for images named by a store that did not record it yet.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }
    /// Sum of the (compressed) layer sizes.
    pub fn size(&self) -> u64 {
        self.manifest.layers().iter().map(|l| l.size()).sum()
    }
}

/// A row of `mvrun images`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Normalized name.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Sum of layer sizes.
    pub size: u64,
    /// The config's `created`, if any.
    pub created: Option<String>,
    /// Whether the rootfs image has been built.
    pub rootfs: Option<PathBuf>,
}

/// What prune removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Blobs deleted.
    pub blobs: usize,
    /// Rootfs images deleted.
    pub rootfs_images: usize,
    /// Bytes freed.
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    images: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    manifest: String,
    /// Absent in indexes written before provenance was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
}

/// An flock held until dropped.
pub(crate) struct Lock(#[allow(dead_code)] File);

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, normally `mvrun::paths::data_root()`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for dir in ["blobs/sha256", "rootfs", "tmp", "locks"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(Error::io("create store directory", &p))?;
        }
        let store = Self {
            root,
            format: RootfsFormat::default(),
            limits: UnpackLimits::default(),
            max_layer_bytes: 16 << 30,
        };
        store.sweep_tmp_if_alone();
        Ok(store)
    }

    /// Chooses the rootfs block image format (default erofs).
    pub fn with_rootfs_format(mut self, format: RootfsFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the unpack limits (total size, entry count) applied to every layer set.
    pub fn with_unpack_limits(mut self, limits: UnpackLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the largest compressed layer accepted from a registry or archive.
    pub fn with_max_layer_bytes(mut self, max: u64) -> Self {
        self.max_layer_bytes = max;
        self
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn rootfs_format(&self) -> RootfsFormat {
        self.format
    }
    pub(crate) fn unpack_limits(&self) -> &UnpackLimits {
        &self.limits
    }
    pub(crate) fn max_layer_bytes(&self) -> u64 {
        self.max_layer_bytes
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }
    pub(crate) fn rootfs_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.{}", d.hex(), self.format.extension()))
    }

    /// The image for `reference`: the built-in image for `busybox`/`mvrun/busybox`, else the local store, else a
    /// pull from its registry.
    pub fn resolve_or_pull(&self, reference: &str, opts: &PullOptions) -> Result<Image> {
        if crate::builtin::is_builtin_name(reference) {
            return self.ensure_builtin_busybox();
        }
        if let Some(image) = self.lookup(reference)? {
            debug!(image = reference, digest = %image.digest, "found in the local store");
            return Ok(image);
        }
        self.pull(reference, opts)
    }

    /// The image stored under `reference` (a name, or `name@sha256:...`), if present.
    pub fn lookup(&self, reference: &str) -> Result<Option<Image>> {
        // The built-in image's name is kept as is (not docker.io/...), so `mvrun images` shows it as mvrun/busybox.
        let builtin = crate::builtin::is_builtin_name(reference);
        let parsed = reference::parse(reference)?;
        let name = if builtin {
            crate::builtin::BUILTIN_NAME.to_string()
        } else {
            parsed.whole()
        };
        if let Some(entry) = self.read_index()?.images.get(&name) {
            let digest = Digest::parse(&entry.manifest)?;
            let mut image = self.load_image(Some(name), &digest)?;
            image.origin = entry.origin.clone();
            return Ok(Some(image));
        }
        // A digest reference is found by content even under another name.
        if let Some(d) = parsed.digest() {
            let digest = Digest::parse(d)?;
            if self.blob_path(&digest).exists() {
                return self.load_image(Some(name), &digest).map(Some);
            }
        }
        Ok(None)
    }

    /// Pulls `reference` from its registry into the store (always asks the registry).
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image> {
        let _lock = self.lock_shared()?;
        crate::registry::pull(self, reference, opts)
    }

    /// Imports an OCI image layout (directory or tar) or a `docker save` archive as `name`.
    pub fn import(&self, path: impl AsRef<Path>, name: &str) -> Result<Image> {
        let _lock = self.lock_shared()?;
        crate::import::import(self, path.as_ref(), name)
    }

    /// The built-in busybox image, made from the host's busybox-static on first use.
    pub fn ensure_builtin_busybox(&self) -> Result<Image> {
        if let Some(image) = self.lookup(crate::builtin::BUILTIN_NAME)? {
            return Ok(image);
        }
        let _lock = self.lock_shared()?;
        crate::builtin::create(self)
    }

    /// The rootfs block image for `image`, built on first use and cached by manifest digest.
    pub fn rootfs_image(&self, image: &Image) -> Result<PathBuf> {
        let path = self.rootfs_path(&image.digest);
        if path.exists() {
            return Ok(path);
        }
        let _lock = self.lock_shared()?;
        // One builder per image; others wait here and then find the file.
        let _build = self.lock(
            &format!("rootfs-{}", image.digest.hex()),
            FlockOperation::LockExclusive,
        )?;
        if path.exists() {
            return Ok(path);
        }
        crate::rootfs::build_for_image(self, image, &path)?;
        Ok(path)
    }

    /// Unpacks `image` into the empty directory `dir` (the same verified unpack the rootfs build does), e.g. to
    /// audit its files.
    pub fn unpack_to(&self, image: &Image, dir: &Path) -> Result<()> {
        crate::rootfs::unpack_image(self, image, dir)
    }

    /// The rootfs block image's path if it has been built already.
    pub fn rootfs_if_built(&self, image: &Image) -> Option<PathBuf> {
        let p = self.rootfs_path(&image.digest);
        p.exists().then_some(p)
    }

    /// Every named image.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for (name, entry) in index.images {
            let digest = Digest::parse(&entry.manifest)?;
            match self.load_image(Some(name.clone()), &digest) {
                Ok(img) => {
                    let rootfs = self.rootfs_path(&digest);
                    out.push(ImageSummary {
                        name,
                        digest: digest.to_string(),
                        size: img.size(),
                        created: img.config.created().clone(),
                        rootfs: rootfs.exists().then_some(rootfs),
                    })
                }
                Err(e) => warn!(image = name, "skipping unreadable image: {e}"),
            }
        }
        Ok(out)
    }

    /// Removes the name `reference` from the index. Blobs and rootfs images stay until `prune`.
    pub fn remove(&self, reference: &str) -> Result<Image> {
        let name = if crate::builtin::is_builtin_name(reference) {
            crate::builtin::BUILTIN_NAME.to_string()
        } else {
            reference::normalize_reference(reference)?
        };
        // Shared store lock: the index rewrite's temp file lives in tmp/, which a lone opener may sweep.
        let _lock = self.lock_shared()?;
        let _guard = self.lock("index", FlockOperation::LockExclusive)?;
        let mut index = self.read_index()?;
        let entry = index
            .images
            .remove(&name)
            .ok_or_else(|| Error::NotFound(name.clone()))?;
        self.write_index(&index)?;
        let digest = Digest::parse(&entry.manifest)?;
        let mut image = self.load_image(Some(name), &digest)?;
        image.origin = entry.origin;
        Ok(image)
    }

    /// Deletes every blob and rootfs image no indexed image references, and leftovers in tmp/.
    pub fn prune(&self) -> Result<PruneReport> {
        let _lock = self.lock("store", FlockOperation::LockExclusive)?;
        let mut keep_blobs = HashSet::new();
        let mut keep_rootfs = HashSet::new();
        for entry in self.read_index()?.images.values() {
            let digest = Digest::parse(&entry.manifest)?;
            keep_blobs.insert(digest.hex().to_string());
            keep_rootfs.insert(digest.hex().to_string());
            // An unreadable manifest keeps only itself; its other blobs can be pulled again.
            if let Ok(img) = self.load_image(None, &digest) {
                keep_blobs.insert(
                    Digest::parse(img.manifest.config().digest().as_ref())?
                        .hex()
                        .to_string(),
                );
                for l in img.manifest.layers() {
                    keep_blobs.insert(Digest::parse(l.digest().as_ref())?.hex().to_string());
                }
            }
        }
        let mut report = PruneReport::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(Error::io("read", &blobs))? {
            let entry = entry.map_err(Error::io("read", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
                report.blobs += 1;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs).map_err(Error::io("read", &rootfs))? {
            let entry = entry.map_err(Error::io("read", &rootfs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('.').next().unwrap_or_default();
            if !keep_rootfs.contains(hex) {
                report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
                report.rootfs_images += 1;
            }
        }
        self.sweep_tmp();
        sync_dir(&blobs)?;
        sync_dir(&rootfs)?;
        info!(
            blobs = report.blobs,
            rootfs = report.rootfs_images,
            bytes = report.bytes,
            "pruned"
        );
        Ok(report)
    }

    // ---- crate-internal plumbing ----

    pub(crate) fn lock(&self, name: &str, op: FlockOperation) -> Result<Lock> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("open lock file", &path))?;
        flock(&file, op).map_err(|e| Error::Io {
            what: "lock",
            path,
            source: e.into(),
        })?;
        Ok(Lock(file))
    }

    pub(crate) fn lock_shared(&self) -> Result<Lock> {
        self.lock("store", FlockOperation::LockShared)
    }

    // On open: if no other process holds the store, stale work files from a crash can go.
    fn sweep_tmp_if_alone(&self) {
        if let Ok(lock) = self.lock("store", FlockOperation::NonBlockingLockExclusive) {
            self.sweep_tmp();
            drop(lock);
        }
    }

    fn sweep_tmp(&self) {
        let tmp = self.tmp_dir();
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let p = entry.path();
                // remove_dir_all does not follow symlinks, so hostile trees left by a crashed unpack are safe.
                let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(e) = r {
                    warn!(path = %p.display(), "failed to remove leftover work file: {e}");
                }
            }
        }
    }

    pub(crate) fn has_blob(&self, d: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(d)) {
            Ok(m) => size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Streams `reader` into the store as blob `expected`; refuses it unless both digest and size match.
    /// `progress` gets the running byte count.
    pub(crate) fn put_blob(
        &self,
        what: &str,
        expected: &Digest,
        size: Option<u64>,
        limit: u64,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        if self.has_blob(expected, size) {
            return Ok(());
        }
        let (tmp, digest, n) =
            self.spool(what, size.unwrap_or(limit).min(limit), reader, progress)?;
        if let Some(s) = size {
            if n != s {
                return Err(Error::SizeMismatch {
                    what: what.to_string(),
                    expected: s,
                    actual: n,
                });
            }
        }
        if &digest != expected {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        self.persist_blob(tmp, &digest)
    }

    /// Streams `reader` into the store under the digest of its bytes (for blobs whose digest nobody gave us, such
    /// as layers of a `docker save` archive; the caller checks the digest against diff_ids).
    pub(crate) fn put_blob_computed(
        &self,
        what: &str,
        limit: u64,
        reader: &mut dyn Read,
    ) -> Result<(Digest, u64)> {
        let (tmp, digest, n) = self.spool(what, limit, reader, &mut |_| {})?;
        if !self.has_blob(&digest, Some(n)) {
            self.persist_blob(tmp, &digest)?;
        }
        Ok((digest, n))
    }

    pub(crate) fn put_blob_bytes(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        self.put_blob(
            "blob",
            &digest,
            Some(data.len() as u64),
            u64::MAX,
            &mut &data[..],
            &mut |_| {},
        )?;
        Ok(digest)
    }

    // Copies at most `limit` bytes into a temporary file in tmp/, hashing as it goes; one byte more is an error.
    fn spool(
        &self,
        what: &str,
        limit: u64,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(tempfile::NamedTempFile, Digest, u64)> {
        let mut w = self.blob_writer(what, limit)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        what: "read",
                        path: PathBuf::from(what),
                        source,
                    })
                }
            };
            w.write(&buf[..n])?;
            progress(w.written());
        }
        w.finish()
    }

    /// A writer for one incoming blob (used by the async pull loop).
    pub(crate) fn blob_writer(&self, what: &str, limit: u64) -> Result<BlobWriter> {
        let tmp_dir = self.tmp_dir();
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp_dir)
            .map_err(Error::io("create temporary file in", &tmp_dir))?;
        Ok(BlobWriter {
            w: HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp)),
            limit,
            what: what.to_string(),
            tmp_dir,
        })
    }

    /// Moves a verified blob into the store: digest and size must both match.
    pub(crate) fn commit_blob(&self, w: BlobWriter, expected: &Digest, size: u64) -> Result<()> {
        let what = w.what.clone();
        let (tmp, digest, n) = w.finish()?;
        if n != size {
            return Err(Error::SizeMismatch {
                what,
                expected: size,
                actual: n,
            });
        }
        if &digest != expected {
            return Err(Error::DigestMismatch {
                what,
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        self.persist_blob(tmp, &digest)
    }

    fn persist_blob(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        tmp.persist(&dest).map_err(|e| Error::Io {
            what: "store blob",
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(dest.parent().unwrap_or(&self.root))
    }

    /// Reads a whole blob, refusing one over `limit` bytes.
    pub(crate) fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(Error::io("open blob", &path))?;
        let mut data = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(Error::io("read blob", &path))?;
        if data.len() as u64 > limit {
            return Err(Error::TooLarge {
                what: format!("blob {d}"),
                size: data.len() as u64,
                limit,
            });
        }
        Ok(data)
    }

    /// Loads and checks an image whose manifest is in the store.
    pub(crate) fn load_image(&self, name: Option<String>, digest: &Digest) -> Result<Image> {
        let bytes = self.read_blob(digest, MAX_MANIFEST_BYTES)?;
        let manifest = parse_manifest(&bytes, digest)?;
        let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
        let config_bytes = self.read_blob(&config_digest, MAX_CONFIG_BYTES)?;
        let config = parse_config(&config_bytes, &config_digest)?;
        check_layers_match(&manifest, &config, digest)?;
        Ok(Image {
            name,
            digest: digest.clone(),
            manifest,
            config,
            origin: None,
        })
    }

    /// Checks a manifest whose config and layers are all in the store (verified), stores it and names it, recording
    /// where it came from.
    pub(crate) fn commit_image(
        &self,
        name: &str,
        manifest_bytes: &[u8],
        origin: Origin,
    ) -> Result<Image> {
        if manifest_bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge {
                what: "manifest".into(),
                size: manifest_bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let digest = Digest::of(manifest_bytes);
        let manifest = parse_manifest(manifest_bytes, &digest)?;
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let bd = Digest::parse(d.digest().as_ref())?;
            if !self.has_blob(&bd, Some(d.size())) {
                return Err(Error::invalid(
                    format!("manifest {digest}"),
                    format!("blob {bd} is missing from the store"),
                ));
            }
        }
        self.put_blob_bytes(manifest_bytes)?;
        let mut image = self.load_image(Some(name.to_string()), &digest)?;
        self.tag(name, &digest, origin.clone())?;
        image.origin = Some(origin);
        Ok(image)
    }

    pub(crate) fn tag(&self, name: &str, digest: &Digest, origin: Origin) -> Result<()> {
        let _guard = self.lock("index", FlockOperation::LockExclusive)?;
        let mut index = self.read_index()?;
        index.images.insert(
            name.to_string(),
            IndexEntry {
                manifest: digest.to_string(),
                origin: Some(origin),
            },
        );
        self.write_index(&index)
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.root.join(INDEX_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
                version: 1,
                images: BTreeMap::new(),
            }),
            Err(e) => Err(Error::io("read", path)(e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| Error::Json {
            what: "index".into(),
            source,
        })?;
        write_atomic(&self.tmp_dir(), &self.root.join(INDEX_FILE), &bytes)
    }
}

/// An incoming blob in tmp/: bounded, hashed, removed on drop unless committed.
pub(crate) struct BlobWriter {
    w: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
    limit: u64,
    what: String,
    tmp_dir: PathBuf,
}

impl BlobWriter {
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        let total = self.w.written() + data.len() as u64;
        if total > self.limit {
            return Err(Error::TooLarge {
                what: self.what.clone(),
                size: total,
                limit: self.limit,
            });
        }
        self.w
            .write_all(data)
            .map_err(Error::io("write", &self.tmp_dir))
    }
    pub(crate) fn written(&self) -> u64 {
        self.w.written()
    }
    fn finish(self) -> Result<(tempfile::NamedTempFile, Digest, u64)> {
        let (digest, n, bw) = self.w.finish();
        let tmp = bw.into_inner().map_err(|e| Error::Io {
            what: "write",
            path: self.tmp_dir.clone(),
            source: e.into_error(),
        })?;
        tmp.as_file()
            .sync_all()
            .map_err(Error::io("sync", tmp.path()))?;
        Ok((tmp, digest, n))
    }
}

/// Writes `dest` by temporary file + fsync + rename + fsync of the directory.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix("w-")
        .tempfile_in(tmp_dir)
        .map_err(Error::io("create temporary file in", tmp_dir))?;
    tmp.write_all(bytes)
        .map_err(Error::io("write", tmp.path().to_path_buf()))?;
    tmp.as_file()
        .sync_all()
        .map_err(Error::io("sync", tmp.path().to_path_buf()))?;
    tmp.persist(dest).map_err(|e| Error::Io {
        what: "rename into place",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dest.parent().unwrap_or(Path::new("/")))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync directory", dir))
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Parses and checks an image manifest (not an index).
pub(crate) fn parse_manifest(bytes: &[u8], digest: &Digest) -> Result<ImageManifest> {
    let what = format!("manifest {digest}");
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.clone(),
        source,
    })?;
    if manifest.schema_version() != 2 {
        return Err(Error::invalid(
            what,
            format!("schemaVersion {} is not 2", manifest.schema_version()),
        ));
    }
    if let Some(mt) = manifest.media_type() {
        if !MANIFEST_TYPES.contains(&mt.to_string().as_str()) {
            return Err(Error::invalid(
                what,
                format!("media type {mt} is not an image manifest"),
            ));
        }
    }
    let cmt = manifest.config().media_type().to_string();
    if !CONFIG_TYPES.contains(&cmt.as_str()) {
        return Err(Error::invalid(
            what,
            format!("config media type {cmt} is not an image config"),
        ));
    }
    if manifest.layers().len() > MAX_LAYERS {
        return Err(Error::invalid(
            what,
            format!(
                "{} layers is over the limit of {MAX_LAYERS}",
                manifest.layers().len()
            ),
        ));
    }
    Digest::parse(manifest.config().digest().as_ref())?;
    for l in manifest.layers() {
        Digest::parse(l.digest().as_ref())?;
        if !is_layer_type(l.media_type()) {
            return Err(Error::invalid(
                what,
                format!(
                    "layer {} has unsupported media type {}",
                    l.digest(),
                    l.media_type()
                ),
            ));
        }
    }
    Ok(manifest)
}

fn is_layer_type(mt: &MediaType) -> bool {
    matches!(
        mt,
        MediaType::ImageLayer
            | MediaType::ImageLayerGzip
            | MediaType::ImageLayerZstd
            | MediaType::ImageLayerNonDistributable
            | MediaType::ImageLayerNonDistributableGzip
            | MediaType::ImageLayerNonDistributableZstd
    ) || matches!(
        mt.to_string().as_str(),
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
    )
}

pub(crate) fn parse_config(bytes: &[u8], digest: &Digest) -> Result<ImageConfiguration> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: format!("image config {digest}"),
        source,
    })
}

/// The manifest's layers and the config's diff_ids must pair up one to one.
pub(crate) fn check_layers_match(
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    digest: &Digest,
) -> Result<()> {
    let (layers, diff_ids) = (manifest.layers().len(), config.rootfs().diff_ids().len());
    if layers != diff_ids {
        return Err(Error::invalid(
            format!("image {digest}"),
            format!("manifest has {layers} layers but the config lists {diff_ids} diff_ids"),
        ));
    }
    for d in config.rootfs().diff_ids() {
        Digest::parse(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_written_before_provenance_still_reads_and_origins_round_trip() {
        let old: Index = serde_json::from_str(
            r#"{"version":1,"images":{"docker.io/library/a:1":{"manifest":"sha256:00"}}}"#,
        )
        .unwrap();
        assert_eq!(old.images["docker.io/library/a:1"].origin, None);

        let origin = Origin::Registry {
            registry: "ghcr.io".into(),
            tls: true,
        };
        let json = serde_json::to_string(&origin).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"registry","registry":"ghcr.io","tls":true}"#
        );
        assert_eq!(serde_json::from_str::<Origin>(&json).unwrap(), origin);
        assert_eq!(
            serde_json::to_string(&Origin::BuiltIn).unwrap(),
            r#"{"kind":"built-in"}"#
        );
    }
}
