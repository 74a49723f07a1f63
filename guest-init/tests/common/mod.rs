//! Shared test fixtures: a busybox rootfs built from Debian's busybox-static, and the root/cgroup checks.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (containers need namespaces, mounts and cgroups)".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "{BUSYBOX} missing: install busybox-static (scripts/packages.txt)"
        ));
    }
    None
}

/// Prints SKIP and returns true when the test cannot run.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(r) => {
            println!("SKIP: {test}: {r}");
            true
        }
        None => false,
    }
}

/// The probe helper (examples/probe.rs, built by `cargo test`), with the shared libraries it needs.
fn probe_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples/probe");
    p.exists().then_some(p)
}

/// A rootfs in a temporary directory: busybox with one symlink per applet, /etc/passwd and /etc/group with root
/// and nobody, and the probe helper at /probe (plus the libraries it links) when it was built.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("gi-rootfs")
        .tempdir()
        .unwrap();
    let r = dir.path();
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, r.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = symlink("busybox", r.join("bin").join(applet));
        }
    }
    fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(r.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    if let Some(probe) = probe_binary() {
        fs::copy(&probe, r.join("probe")).unwrap();
        // The probe is linked dynamically in debug builds: copy what ldd lists to the same paths.
        let ldd = Command::new("ldd").arg(&probe).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line.split_whitespace().find(|w| w.starts_with('/'));
            if let Some(lib) = path {
                let dest = r.join(lib.trim_start_matches('/'));
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                fs::copy(lib, &dest).unwrap();
            }
        }
    }
    dir
}

/// Output of one `guest-init run`.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `guest-init run --rootfs ROOT ARGS...`.
pub fn run(root: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_guest-init"))
        .arg("run")
        .arg("--rootfs")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "guest-init run {args:?} -> {}\nstdout: {}\nstderr: {}",
        r.code, r.stdout, r.stderr
    );
    r
}

/// `sh -c SCRIPT` in a default container.
pub fn sh(root: &Path, flags: &[&str], script: &str) -> Run {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["--", "sh", "-c", script]);
    run(root, &args)
}
