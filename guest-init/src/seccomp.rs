//! Docker-format seccomp profiles, resolved against the workload's final capability set, the CPU architecture and
//! the running kernel into the plain OCI `LinuxSeccomp` libcontainer loads.
//!
//! The default profile is `seccomp/default.json`: moby 20.10.24's `profiles/seccomp/default.json` as Debian 12 ships
//! it in `golang-github-docker-docker-dev`. It is Docker's profile (keyctl, add_key, clone/unshare with namespace
//! flags, mount... refused without CAP_SYS_ADMIN); Podman's profile in golang-github-containers-common allows those
//! and relies on capabilities alone, so it is not "equal in effect to Docker's". The resolution rules follow moby's
//! `profiles/seccomp/seccomp_linux.go`: a rule applies when all its `includes.caps` are in the bounding set, none of
//! its `excludes.caps` are, the architecture matches its includes/excludes, and the kernel is at least `minKernel`.

use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

/// The embedded default profile.
pub const DEFAULT_PROFILE: &str = include_str!("../seccomp/default.json");

/// Errors resolving a profile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile is not valid JSON of the Docker format.
    #[error("failed to parse the seccomp profile")]
    Parse(#[source] serde_json::Error),
    /// The resolved profile is not a valid OCI seccomp section.
    #[error("failed to convert the seccomp profile to the OCI format")]
    Convert(#[source] serde_json::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    name: Option<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

/// This build's architecture in libseccomp's and in Go's naming (moby's profiles use both).
#[cfg(target_arch = "x86_64")]
const ARCH: (&str, &str) = ("SCMP_ARCH_X86_64", "amd64");
#[cfg(target_arch = "aarch64")]
const ARCH: (&str, &str) = ("SCMP_ARCH_AARCH64", "arm64");

/// Parses "major.minor" of a kernel release such as "6.1.0-13-amd64".
pub fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// What the running kernel offers that a profile's resolution depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Its "major.minor", for the rules' `minKernel`.
    pub version: (u32, u32),
    /// Whether it runs 32-bit programs beside 64-bit ones (x86's IA32 emulation). Without it the profile's 32-bit
    /// sub-architectures (x86, x32) are dead weight: such a program cannot issue a system call at all.
    pub compat_32: bool,
}

impl Kernel {
    /// A kernel of this version that runs 32-bit programs (a stock distribution kernel).
    pub fn with_compat(version: (u32, u32)) -> Self {
        Kernel {
            version,
            compat_32: true,
        }
    }
}

/// The running kernel.
pub fn running_kernel() -> Kernel {
    let version = nix::sys::utsname::uname()
        .map(|u| kernel_version(&u.release().to_string_lossy()))
        .unwrap_or((0, 0));
    // The `abi.vsyscall32` sysctl exists exactly when an x86-64 kernel has IA32 emulation built in (mvrun's guest
    // kernel does not). Elsewhere keep every sub-architecture.
    let compat_32 = !cfg!(target_arch = "x86_64") || Path::new("/proc/sys/abi/vsyscall32").exists();
    Kernel { version, compat_32 }
}

/// The profile's 32-bit companions of x86-64, which only a kernel with IA32 emulation can run.
const X86_COMPAT_ARCHES: [&str; 2] = ["SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// Resolves a Docker-format profile for a process whose bounding set is `caps` (`CAP_` names).
///
/// Sub-architectures the kernel cannot run are left out: libseccomp builds the filter once per architecture, and
/// in the guest that work was most of a container's start (27 of 35 million instructions for Docker's profile with
/// x86-64, x86 and x32, measured with callgrind). A system call from a left-out architecture meets the filter's
/// bad-architecture action (kill), which is stricter than Docker's, never looser.
pub fn resolve(profile: &str, caps: &[String], kernel: Kernel) -> Result<LinuxSeccomp, Error> {
    let p: Profile = serde_json::from_str(profile).map_err(Error::Parse)?;
    let (scmp_arch, go_arch) = ARCH;
    let runnable = |a: &String| kernel.compat_32 || !X86_COMPAT_ARCHES.contains(&a.as_str());
    let architectures: Vec<String> = match p.arch_map.iter().find(|m| m.architecture == scmp_arch) {
        Some(m) => std::iter::once(m.architecture.clone())
            .chain(m.sub_architectures.iter().filter(|a| runnable(a)).cloned())
            .collect(),
        None => p
            .architectures
            .iter()
            .filter(|a| runnable(a))
            .cloned()
            .collect(),
    };
    let kernel = kernel.version;
    let has = |c: &String| caps.iter().any(|have| have == c);
    let mut syscalls = Vec::new();
    for rule in &p.syscalls {
        let inc = &rule.includes;
        let exc = &rule.excludes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == go_arch) {
            continue;
        }
        if exc.arches.iter().any(|a| a == go_arch) {
            continue;
        }
        if !inc.caps.iter().all(has) || exc.caps.iter().any(has) {
            continue;
        }
        if let Some(min) = &inc.min_kernel {
            if kernel < kernel_version(min) {
                continue;
            }
        }
        let names: Vec<&String> = rule.names.iter().chain(rule.name.iter()).collect();
        if names.is_empty() {
            continue;
        }
        let mut s = json!({ "names": names, "action": rule.action });
        if let Some(e) = rule.errno_ret {
            s["errnoRet"] = json!(e);
        }
        if let Some(args) = rule.args.as_ref().filter(|a| !a.is_empty()) {
            s["args"] = json!(args);
        }
        syscalls.push(s);
    }
    let mut out = json!({
        "defaultAction": p.default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if !p.flags.is_empty() {
        out["flags"] = json!(p.flags);
    }
    serde_json::from_value(out).map_err(Error::Convert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompAction;

    fn action_for(s: &LinuxSeccomp, name: &str) -> Vec<LinuxSeccompAction> {
        s.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .map(|r| r.action())
            .collect()
    }

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_profile_depends_on_capabilities() {
        let docker = caps(&["CAP_CHOWN", "CAP_NET_RAW"]);
        let s = resolve(DEFAULT_PROFILE, &docker, Kernel::with_compat((6, 1))).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(
            action_for(&s, "keyctl").is_empty(),
            "keyctl must fall to the default (refused)"
        );
        assert!(action_for(&s, "mount").is_empty());
        assert!(action_for(&s, "unshare").is_empty());
        assert_eq!(
            action_for(&s, "read"),
            vec![LinuxSeccompAction::ScmpActAllow]
        );
        assert_eq!(
            action_for(&s, "ptrace"),
            vec![LinuxSeccompAction::ScmpActAllow]
        );

        let admin = caps(&["CAP_SYS_ADMIN"]);
        let s = resolve(DEFAULT_PROFILE, &admin, Kernel::with_compat((6, 1))).unwrap();
        assert_eq!(
            action_for(&s, "mount"),
            vec![LinuxSeccompAction::ScmpActAllow]
        );
        assert_eq!(
            action_for(&s, "unshare"),
            vec![LinuxSeccompAction::ScmpActAllow]
        );
    }

    #[test]
    fn min_kernel_and_arch_rules() {
        let s = resolve(DEFAULT_PROFILE, &[], Kernel::with_compat((4, 4))).unwrap();
        assert!(
            action_for(&s, "ptrace").is_empty(),
            "ptrace needs kernel >= 4.8 without CAP_SYS_PTRACE"
        );
        assert!(action_for(&s, "s390_pci_mmio_read").is_empty());
        assert!(s.architectures().as_ref().is_some_and(|a| !a.is_empty()));
        assert_eq!(kernel_version("6.12.117-mvrun"), (6, 12));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }

    #[test]
    fn compat_arches_only_where_the_kernel_runs_32_bit_programs() {
        let arches = |compat_32| {
            let k = Kernel {
                version: (6, 12),
                compat_32,
            };
            resolve(DEFAULT_PROFILE, &[], k)
                .unwrap()
                .architectures()
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
        };
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(arches(true).len(), 3, "{:?}", arches(true));
            assert_eq!(arches(false), vec!["ScmpArchX86_64".to_string()]);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(arches(true), arches(false));
    }

    #[test]
    fn bad_profiles_are_errors() {
        assert!(matches!(
            resolve("{", &[], Kernel::with_compat((6, 1))),
            Err(Error::Parse(_))
        ));
        let bad_action = r#"{"defaultAction":"SCMP_ACT_NOPE","syscalls":[]}"#;
        assert!(matches!(
            resolve(bad_action, &[], Kernel::with_compat((6, 1))),
            Err(Error::Convert(_))
        ));
    }
}
