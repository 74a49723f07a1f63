//! What a guest-booting test needs from the host. Each check returns why the test cannot run here (the test prints
//! `SKIP: reason` and returns), or `None`.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::path::Path;

/// /dev/kvm, open for reading and writing.
pub fn kvm() -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .err()
        .map(|_| "/dev/kvm is missing or not usable".into())
}

/// A static guest-init: MVRUN_GUEST_INIT, or the one scripts/build.sh installs.
pub fn guest_init() -> Option<String> {
    let installed = Path::new("/usr/local/lib/mvrun/guest-init").exists();
    (std::env::var_os("MVRUN_GUEST_INIT").is_none() && !installed)
        .then(|| "no static guest-init (set MVRUN_GUEST_INIT or run scripts/build.sh)".into())
}

/// Every (program, Debian package) of `needed`.
pub fn programs(needed: &[(&str, &str)]) -> Option<String> {
    needed
        .iter()
        .find(|(bin, _)| !Path::new(bin).exists())
        .map(|(bin, pkg)| format!("{bin} is missing (install Debian's {pkg})"))
}

/// Root, which `what` needs.
pub fn root(what: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } != 0).then(|| format!("{what} needs root"))
}
