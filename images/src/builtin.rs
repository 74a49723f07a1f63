//! The built-in `busybox` image, made locally from Debian's busybox-static so `mvrun run busybox ...` works on a
//! machine with no registry. It is stored like any pulled image (one uncompressed layer, an OCI config with
//! Cmd ["sh"] and PATH, /etc/passwd with root and nobody) under the name `mvrun/busybox:latest`.
//! Rule: the names `busybox`, `busybox:latest`, `mvrun/busybox` and `mvrun/busybox:latest` always mean this image;
//! a registry's busybox is reached by its full name (`docker.io/library/busybox`).

use crate::store::ImageStore;
use crate::{Error, Image, Result};
use oci_spec::image::{
    ConfigBuilder, DescriptorBuilder, ImageConfigurationBuilder, ImageManifestBuilder, MediaType,
    RootFsBuilder,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The name the built-in image is stored under.
pub const BUILTIN_NAME: &str = "mvrun/busybox:latest";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// True for the names that resolve to the built-in image.
pub fn is_builtin_name(reference: &str) -> bool {
    matches!(
        reference,
        "busybox"
            | "busybox:latest"
            | "mvrun/busybox"
            | "mvrun/busybox:latest"
            | "docker.io/mvrun/busybox:latest"
    )
}

/// The static busybox to package: `MVRUN_BUSYBOX` or /bin/busybox (Debian's busybox-static).
pub fn busybox_path() -> PathBuf {
    std::env::var_os("MVRUN_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Builds the image, stores it and names it.
pub(crate) fn create(store: &ImageStore) -> Result<Image> {
    let bb = busybox_path();
    let binary = fs::read(&bb).map_err(|e| {
        Error::Builtin(format!(
            "cannot read {} ({e}); install Debian's busybox-static",
            bb.display()
        ))
    })?;
    if !is_static_elf(&binary) {
        return Err(Error::Builtin(format!(
            "{} is not a static ELF binary; install Debian's busybox-static",
            bb.display()
        )));
    }
    let applets = applets(&bb)?;
    let layer = layer_tar(&binary, &applets)
        .map_err(|e| Error::Builtin(format!("cannot write the layer tar: {e}")))?;
    let layer_digest = store.put_blob_bytes(&layer)?;

    let err = |e: oci_spec::OciSpecError| Error::Builtin(e.to_string());
    let config = ImageConfigurationBuilder::default()
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![PATH_ENV.to_string()])
                .cmd(vec!["sh".to_string()])
                .working_dir("/".to_string())
                .build()
                .map_err(err)?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer_digest.to_string()])
                .build()
                .map_err(err)?,
        )
        .build()
        .map_err(err)?;
    let config_bytes = serde_json::to_vec(&config).map_err(|source| Error::Json {
        what: "built-in config".into(),
        source,
    })?;
    let config_digest = store.put_blob_bytes(&config_bytes)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(
                    config_digest
                        .as_str()
                        .parse::<oci_spec::image::Digest>()
                        .map_err(err)?,
                )
                .size(config_bytes.len() as u64)
                .build()
                .map_err(err)?,
        )
        .layers(vec![DescriptorBuilder::default()
            .media_type(MediaType::ImageLayer)
            .digest(
                layer_digest
                    .as_str()
                    .parse::<oci_spec::image::Digest>()
                    .map_err(err)?,
            )
            .size(layer.len() as u64)
            .build()
            .map_err(err)?])
        .build()
        .map_err(err)?;
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
        what: "built-in manifest".into(),
        source,
    })?;
    store.commit_image(BUILTIN_NAME, &manifest_bytes, crate::store::Origin::BuiltIn)
}

// No PT_INTERP program header means no dynamic loader: it runs in a rootfs with no libc.
fn is_static_elf(b: &[u8]) -> bool {
    let rd16 = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let rd32 = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let rd64 = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..phnum).all(|i| rd32(phoff + i * phentsize).is_some_and(|t| t != 3))
}

fn applets(bb: &Path) -> Result<Vec<String>> {
    let out = Command::new(bb)
        .arg("--list")
        .output()
        .map_err(|e| Error::Builtin(format!("cannot run {} --list: {e}", bb.display())))?;
    if !out.status.success() {
        return Err(Error::Builtin(format!(
            "{} --list failed: {}",
            bb.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && *a != "busybox"
                && a.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.[".contains(&c))
        })
        .map(str::to_string)
        .collect())
}

// A reproducible tar: fixed times and owners, so the same busybox gives the same digests everywhere.
fn layer_tar(binary: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("sbin", 0o755),
        ("var", 0o755),
        ("var/tmp", 0o1777),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, "bin/busybox", binary)?;
    for a in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    let files: [(&str, &str); 3] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n"),
    ];
    for (path, body) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        b.append_data(&mut h, path, body.as_bytes())?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn static_check() {
        let mut bb = Vec::new();
        if fs::File::open(busybox_path())
            .and_then(|mut f| f.read_to_end(&mut bb))
            .is_ok()
        {
            assert!(is_static_elf(&bb));
        }
        let mut sh = Vec::new();
        fs::File::open("/bin/bash")
            .and_then(|mut f| f.read_to_end(&mut sh))
            .expect("read /bin/bash");
        assert!(!is_static_elf(&sh), "bash is dynamic");
        assert!(!is_static_elf(b"\x7fELF"));
    }
}
