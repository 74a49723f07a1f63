//! Where mvrun keeps its files on the host.

use std::path::PathBuf;

/// The data directory: `MVRUN_ROOT`, default `/var/lib/mvrun` (images, rootfs images, kernels).
pub fn data_root() -> PathBuf {
    std::env::var_os("MVRUN_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/mvrun"))
}

/// The runtime directory for live sandboxes: `MVRUN_RUN_DIR`, default `/run/mvrun`.
pub fn run_root() -> PathBuf {
    std::env::var_os("MVRUN_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/mvrun"))
}
