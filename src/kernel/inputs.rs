//! What goes into a kernel build, embedded in the binary so an installed `mvrun` needs no source tree: the build
//! script, the config fragments and the patches of `kernels/`; plus the identity of the source package. Their hash
//! names the cache directory, so a change to any of them means a new build.

use super::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel source Debian's `linux-source-6.12` installs.
const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.12.tar.xz";
const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// `kernels/` files as (path relative to `kernels/`, contents). Keep in step with the directory: a unit test checks.
pub(crate) const FILES: &[(&str, &str)] = &[
    ("build.sh", include_str!("../../kernels/build.sh")),
    ("mvrun.config", include_str!("../../kernels/mvrun.config")),
    (
        "emulated.config",
        include_str!("../../kernels/emulated.config"),
    ),
    (
        "patches/0001-mvrun-emulated-kvm-kconfig-menu.patch",
        include_str!("../../kernels/patches/0001-mvrun-emulated-kvm-kconfig-menu.patch"),
    ),
    (
        "patches/0002-mvrun-skip-int3-selftest.patch",
        include_str!("../../kernels/patches/0002-mvrun-skip-int3-selftest.patch"),
    ),
    (
        "patches/0003-mvrun-no-fwait-in-fpu-drop.patch",
        include_str!("../../kernels/patches/0003-mvrun-no-fwait-in-fpu-drop.patch"),
    ),
    (
        "patches/0004-mvrun-syscall-at-cpl3-fixup.patch",
        include_str!("../../kernels/patches/0004-mvrun-syscall-at-cpl3-fixup.patch"),
    ),
    (
        "patches/0005-mvrun-clear-cpu-features-the-emulator-lacks.patch",
        include_str!(
            "../../kernels/patches/0005-mvrun-clear-cpu-features-the-emulator-lacks.patch"
        ),
    ),
    (
        "patches/0006-mvrun-lean-sysfs.patch",
        include_str!("../../kernels/patches/0006-mvrun-lean-sysfs.patch"),
    ),
];

/// One embedded file by its path under `kernels/`.
pub(crate) fn file(name: &str) -> &'static str {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .unwrap_or("")
}

/// The source tarball: `MVRUN_KERNEL_SOURCE`, else Debian's.
pub fn source_tarball() -> PathBuf {
    std::env::var_os("MVRUN_KERNEL_SOURCE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOURCE))
}

/// Identifies the source without reading its 150 MB: the package version when dpkg knows it, and the size.
fn source_identity(tarball: &Path) -> Result<String> {
    let meta = std::fs::metadata(tarball).map_err(|_| Error::SourceMissing {
        path: tarball.to_path_buf(),
    })?;
    let version = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unpackaged".to_string());
    Ok(format!("{SOURCE_PACKAGE} {version} {} bytes", meta.len()))
}

/// The cache key of the current inputs: 16 hex digits of SHA-256 over the source identity and every embedded file.
pub fn inputs_hash() -> Result<String> {
    Ok(hash_of(&source_identity(&source_tarball())?, FILES))
}

fn hash_of(source: &str, files: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    for (name, text) in files {
        // Length-prefixed, so moving bytes between names changes the hash.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// Writes the embedded `kernels/` files under `dir` (build.sh made executable).
pub(crate) fn write_to(dir: &Path) -> Result<()> {
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                action: "create",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| Error::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernels_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = ["build.sh", "mvrun.config", "emulated.config"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for entry in std::fs::read_dir(root.join("patches")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".patch") {
                on_disk.push(format!("patches/{name}"));
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "src/kernel/inputs.rs FILES must list kernels/ exactly"
        );
        for (name, text) in FILES {
            assert_eq!(std::fs::read_to_string(root.join(name)).unwrap(), *text);
        }
    }

    #[test]
    fn hash_changes_with_any_input() {
        let base = hash_of("src 1", &[("a", "x"), ("b", "y")]);
        assert_eq!(base.len(), 16);
        assert_eq!(base, hash_of("src 1", &[("a", "x"), ("b", "y")]));
        assert_ne!(base, hash_of("src 2", &[("a", "x"), ("b", "y")]));
        assert_ne!(base, hash_of("src 1", &[("a", "x"), ("b", "z")]));
        assert_ne!(base, hash_of("src 1", &[("a", "xb"), ("", "y")]));
    }

    #[test]
    fn files_are_written_with_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        write_to(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(
                dir.path()
                    .join("patches/0002-mvrun-skip-int3-selftest.patch")
            )
            .unwrap(),
            file("patches/0002-mvrun-skip-int3-selftest.patch")
        );
        assert!(file("build.sh").starts_with("#!/usr/bin/env bash"));
    }
}
