//! The guest kernel mvrun boots: built by mvrun itself from Debian's `linux-source-6.12` with the config fragment
//! and patches in `kernels/` (embedded in this binary), cached under `$MVRUN_ROOT/kernels/<variant>-<hash>/` by the
//! hash of everything that goes into it.
//!
//! Two variants come from the same source: `normal`, for hosts with hardware virtualization, and `emulated`, for
//! hosts whose KVM runs a guest through its instruction emulator (nested paravirtual KVM, `kvm_pvm`), which turns on
//! the workarounds of `kernels/patches/` (see `kernels/README.md`).

mod build;
pub mod config;
mod inputs;
mod progress;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use build::{build, BuildOptions};
pub use inputs::{inputs_hash, source_tarball};

/// A kernel variant: one build configuration of the same source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// For hosts with hardware virtualization: upstream code, our patches compiled out.
    Normal,
    /// For emulated-KVM hosts (`kvm_pvm`): the normal config plus `kernels/emulated.config`.
    Emulated,
}

impl Variant {
    /// Both variants.
    pub const ALL: [Variant; 2] = [Variant::Normal, Variant::Emulated];

    /// The variant this host's guests need: `emulated` where the nested paravirtual KVM module (`kvm_pvm`) is
    /// loaded, since that KVM runs a non-PVM guest through its instruction emulator; `normal` everywhere else.
    pub fn for_this_host() -> Variant {
        Self::for_sysfs(Path::new("/sys"))
    }

    fn for_sysfs(sys: &Path) -> Variant {
        if sys.join("module/kvm_pvm").exists() {
            Variant::Emulated
        } else {
            Variant::Normal
        }
    }

    /// The variant's name, as the CLI and the cache directory spell it.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Normal => "normal",
            Variant::Emulated => "emulated",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Variant::Normal),
            "emulated" => Ok(Variant::Emulated),
            other => Err(Error::UnknownVariant(other.to_string())),
        }
    }
}

/// The files of one built kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// The uncompressed ELF kernel, booted through PVH.
    pub vmlinux: PathBuf,
    /// The same kernel as a bzImage (Linux boot protocol).
    pub bzimage: PathBuf,
    /// The final `.config` it was built with.
    pub config: PathBuf,
    /// Its symbol table, to turn a guest RIP into a function name.
    pub system_map: PathBuf,
}

impl KernelArtifacts {
    fn in_dir(dir: &Path) -> Self {
        KernelArtifacts {
            vmlinux: dir.join("vmlinux"),
            bzimage: dir.join("bzImage"),
            config: dir.join("config"),
            system_map: dir.join("System.map"),
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.vmlinux.parent().unwrap_or(Path::new("/"))
    }

    fn complete(&self) -> bool {
        [&self.vmlinux, &self.bzimage, &self.config, &self.system_map]
            .iter()
            .all(|p| p.is_file())
    }
}

/// Errors finding or building a guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel source package is not installed.
    #[error("failed to find the kernel source {path}: install Debian's linux-source-6.12 package")]
    SourceMissing {
        /// Where the source tarball was looked for.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The build script could not be started.
    #[error("failed to start the kernel build script (bash)")]
    Spawn(#[source] std::io::Error),
    /// The build script failed; the log holds its whole output.
    #[error("failed to build the {variants} kernel: {reason}; build log: {log}")]
    BuildFailed {
        /// The variants being built.
        variants: String,
        /// The script's own error lines, or its exit status.
        reason: String,
        /// The full build log.
        log: PathBuf,
    },
    /// A variant name that is neither `normal` nor `emulated`.
    #[error("failed to parse kernel variant {0:?}: expected normal or emulated")]
    UnknownVariant(String),
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Where built kernels are kept: `$MVRUN_ROOT/kernels`.
pub fn kernels_dir() -> PathBuf {
    crate::paths::data_root().join("kernels")
}

fn cache_dir(variant: Variant, hash: &str) -> PathBuf {
    kernels_dir().join(format!("{variant}-{hash}"))
}

/// The kernel of `variant` for the current inputs, if it has been built; never builds.
pub fn path_if_built(variant: Variant) -> Option<KernelArtifacts> {
    let hash = inputs_hash().ok()?;
    let artifacts = KernelArtifacts::in_dir(&cache_dir(variant, &hash));
    artifacts.complete().then_some(artifacts)
}

/// The kernel of `variant`, built first if the cache does not hold it yet (minutes; `progress` shows how it goes
/// on stderr). Safe to call from several processes at once: one builds, the others wait for it.
pub fn ensure_built(variant: Variant, progress: bool) -> Result<KernelArtifacts> {
    let mut built = build(
        &[variant],
        &BuildOptions {
            force: false,
            progress,
        },
    )?;
    Ok(built.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_follows_the_kvm_pvm_module() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(Variant::for_sysfs(sys.path()), Variant::Normal);
        std::fs::create_dir_all(sys.path().join("module/kvm_intel")).unwrap();
        assert_eq!(Variant::for_sysfs(sys.path()), Variant::Normal);
        std::fs::create_dir_all(sys.path().join("module/kvm_pvm")).unwrap();
        assert_eq!(Variant::for_sysfs(sys.path()), Variant::Emulated);
    }

    #[test]
    fn variant_names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
        }
        let err = "fast".parse::<Variant>().unwrap_err().to_string();
        assert!(
            err.contains("\"fast\"") && err.contains("normal or emulated"),
            "{err}"
        );
    }

    #[test]
    fn artifacts_live_in_one_directory() {
        let a = KernelArtifacts::in_dir(Path::new("/x/normal-abc"));
        assert_eq!(a.dir(), Path::new("/x/normal-abc"));
        assert_eq!(a.bzimage, Path::new("/x/normal-abc/bzImage"));
        assert!(!a.complete());
    }
}
