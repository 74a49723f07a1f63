//! What a user asks of one sandbox, as both front ends (the CLI's `mvrun run` and the containerd shim) describe
//! it. Pure data plus Docker-compatible parsing of sizes, environment and network specs.

use std::path::PathBuf;

/// Guest RAM when `--memory` is not given, in MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// The pids limit inside the guest when `--pids-limit` is not given (Docker has none; a fork bomb in a VM
/// with a few hundred MiB would otherwise take the guest down before the workload's limit could).
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;
/// The smallest scratch disk `--storage-opt size=` accepts, in MiB (ext4 needs room for its own metadata).
pub const MIN_SCRATCH_MIB: u64 = 16;
/// The largest scratch disk, in MiB (1 TiB): the file is sparse, but a typo should not promise a guest petabytes.
pub const MAX_SCRATCH_MIB: u64 = 1 << 20;
/// Guest RAM kept for the guest kernel and guest-init on top of the container's memory limit, in MiB.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

/// Errors in user-given options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A size like 512m could not be read.
    #[error("invalid size {0:?}: use a number with an optional unit b, k, m or g (e.g. 512m)")]
    Size(String),
    /// A CPU count could not be read.
    #[error("invalid --cpus {0:?}: use a positive number such as 1 or 1.5")]
    Cpus(String),
    /// A network spec could not be read.
    #[error("invalid --network {0:?}: use none or tap:NAME[,netns=PATH]")]
    Network(String),
    /// An environment entry could not be read.
    #[error("invalid environment entry {0:?}")]
    Env(String),
    /// A `--security-opt` could not be read.
    #[error("invalid --security-opt {0:?}: supported are seccomp=unconfined|PATH.json and no-new-privileges[=true|false]")]
    SecurityOpt(String),
    /// A flag mvrun does not support yet.
    #[error("{0} is not supported by mvrun")]
    Unsupported(String),
    /// A `--storage-opt` could not be read.
    #[error("invalid --storage-opt {0:?}: supported is size=SIZE (e.g. size=1g), at least {min} MiB", min = MIN_SCRATCH_MIB)]
    StorageOpt(String),
    /// Too little memory for a guest.
    #[error("--memory {0} MiB is too small: a microVM needs at least {min} MiB", min = GUEST_OVERHEAD_MIB)]
    MemoryTooSmall(u64),
}

/// How the sandbox reaches a network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Loopback only (the default: untrusted code gets no network unless asked).
    #[default]
    None,
    /// A tap device on the host, optionally inside a network namespace.
    Tap {
        /// Tap device name.
        name: String,
        /// Network namespace to open it in (a path such as /var/run/netns/NAME).
        netns: Option<PathBuf>,
    },
}

/// The seccomp profile for the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A Docker-format JSON profile.
    Profile(PathBuf),
}

/// Everything `mvrun run` accepts.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// Image reference.
    pub image: String,
    /// Command (replaces the image's Cmd).
    pub command: Vec<String>,
    /// Replaces the image's Entrypoint (`Some(vec![])` clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Keep stdin open.
    pub interactive: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Remove the sandbox's record when it ends.
    pub remove: bool,
    /// Run in the background.
    pub detach: bool,
    /// Name.
    pub name: Option<String>,
    /// Environment, KEY=VALUE.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
    /// User (uid[:gid] or name).
    pub user: Option<String>,
    /// Container memory limit in MiB (the guest gets this plus its own overhead).
    pub memory_mib: Option<u64>,
    /// CPU limit (also the vCPU count, rounded up).
    pub cpus: Option<f64>,
    /// Pids limit inside the container.
    pub pids_limit: i64,
    /// Network.
    pub network: Network,
    /// Guest address on the tap, CIDR.
    pub ip: Option<String>,
    /// Guest default gateway.
    pub gateway: Option<String>,
    /// DNS servers for /etc/resolv.conf.
    pub dns: Vec<String>,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// Size of a scratch disk (MiB) for the container's writable layer; without one the layer is a tmpfs in guest
    /// RAM.
    pub scratch_mib: Option<u64>,
    /// Capabilities to add.
    pub cap_add: Vec<String>,
    /// Capabilities to drop.
    pub cap_drop: Vec<String>,
    /// Seccomp profile.
    pub seccomp: Seccomp,
    /// no_new_privs (on unless `--security-opt no-new-privileges=false`).
    pub no_new_privileges: bool,
    /// tmpfs mounts, `PATH[:OPTIONS]`.
    pub tmpfs: Vec<String>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Guest kernel override.
    pub kernel: Option<PathBuf>,
    /// Print per-phase timings.
    pub timings: bool,
    /// The VMM's own seccomp filters (`--seccomp-level`; on unless turned off to debug the VMM).
    pub vmm_seccomp: vmm::seccomp::SeccompLevel,
}

impl RunOptions {
    /// Options for `image` with every default.
    pub fn new(image: impl Into<String>) -> Self {
        RunOptions {
            image: image.into(),
            command: Vec::new(),
            entrypoint: None,
            interactive: false,
            tty: false,
            remove: false,
            detach: false,
            name: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            memory_mib: None,
            cpus: None,
            pids_limit: DEFAULT_PIDS_LIMIT,
            network: Network::None,
            ip: None,
            gateway: None,
            dns: Vec::new(),
            read_only: false,
            scratch_mib: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: Seccomp::Default,
            no_new_privileges: true,
            tmpfs: Vec::new(),
            hostname: None,
            kernel: None,
            timings: false,
            vmm_seccomp: Default::default(),
        }
    }

    /// Guest RAM in MiB: the container's limit plus the guest's own overhead, or the default.
    pub fn guest_mem_mib(&self) -> u64 {
        self.memory_mib
            .map(|m| m + GUEST_OVERHEAD_MIB)
            .unwrap_or(DEFAULT_MEM_MIB)
    }

    /// vCPUs: `--cpus` rounded up, at least 1.
    pub fn vcpus(&self) -> u8 {
        self.cpus
            .map(|c| c.ceil().clamp(1.0, 32.0) as u8)
            .unwrap_or(1)
    }
}

/// Parses a Docker-style size (`512m`, `1g`, `1048576`) into MiB, rounding up.
pub fn parse_size_mib(s: &str) -> Result<u64, Error> {
    let err = || Error::Size(s.to_string());
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(['k', 'm', 'g']))
        .unwrap_or(&t);
    let (num, mult): (&str, u64) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(mult).ok_or_else(err)?;
    if bytes == 0 {
        return Err(err());
    }
    Ok(bytes.div_ceil(1 << 20))
}

/// Parses `--cpus`.
pub fn parse_cpus(s: &str) -> Result<f64, Error> {
    match s.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 && c <= 32.0 => Ok(c),
        _ => Err(Error::Cpus(s.to_string())),
    }
}

/// Parses `--network`.
pub fn parse_network(s: &str) -> Result<Network, Error> {
    let err = || Error::Network(s.to_string());
    if s == "none" {
        return Ok(Network::None);
    }
    let rest = s.strip_prefix("tap:").ok_or_else(err)?;
    let mut parts = rest.split(',');
    let name = parts
        .next()
        .filter(|n| !n.is_empty() && n.len() < 16)
        .ok_or_else(err)?;
    let mut netns = None;
    for p in parts {
        match p.split_once('=') {
            Some(("netns", path)) if !path.is_empty() => netns = Some(PathBuf::from(path)),
            _ => return Err(err()),
        }
    }
    Ok(Network::Tap {
        name: name.to_string(),
        netns,
    })
}

/// Parses one `--storage-opt` (Docker's `size=SIZE`: the container's writable layer gets a disk of that size)
/// into `opts`.
pub fn apply_storage_opt(opts: &mut RunOptions, s: &str) -> Result<(), Error> {
    let err = || Error::StorageOpt(s.to_string());
    let size = s.strip_prefix("size=").ok_or_else(err)?;
    let mib = parse_size_mib(size).map_err(|_| err())?;
    if !(MIN_SCRATCH_MIB..=MAX_SCRATCH_MIB).contains(&mib) {
        return Err(err());
    }
    opts.scratch_mib = Some(mib);
    Ok(())
}

/// Parses one `--security-opt` into `opts`.
pub fn apply_security_opt(opts: &mut RunOptions, s: &str) -> Result<(), Error> {
    let err = || Error::SecurityOpt(s.to_string());
    let (key, value) = s.split_once(['=', ':']).unwrap_or((s, ""));
    match (key, value) {
        ("seccomp", "unconfined") => opts.seccomp = Seccomp::Unconfined,
        ("seccomp", path) if !path.is_empty() => {
            opts.seccomp = Seccomp::Profile(PathBuf::from(path))
        }
        ("no-new-privileges", "" | "true") => opts.no_new_privileges = true,
        ("no-new-privileges", "false") => opts.no_new_privileges = false,
        ("label" | "apparmor", _) => {
            return Err(Error::Unsupported(format!("--security-opt {key}")))
        }
        _ => return Err(err()),
    }
    Ok(())
}

/// Resolves `-e KEY=VALUE` and `-e KEY` (the host's value, skipped when unset) entries.
pub fn resolve_env(entries: &[String]) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for e in entries {
        match e.split_once('=') {
            Some(("", _)) => return Err(Error::Env(e.clone())),
            Some(_) => out.push(e.clone()),
            None if e.is_empty() => return Err(Error::Env(e.clone())),
            None => {
                if let Ok(v) = std::env::var(e) {
                    out.push(format!("{e}={v}"));
                }
            }
        }
    }
    Ok(out)
}

/// Reads a Docker `--env-file`: KEY=VALUE or KEY lines; blank lines and `#` comments are skipped.
pub fn parse_env_file(text: &str) -> Result<Vec<String>, Error> {
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    resolve_env(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("512m"), Ok(512));
        assert_eq!(parse_size_mib("512MB"), Ok(512));
        assert_eq!(parse_size_mib("1g"), Ok(1024));
        assert_eq!(parse_size_mib("1048576"), Ok(1));
        assert_eq!(parse_size_mib("100k"), Ok(1));
        for bad in ["", "m", "-1m", "1x", "0", "99999999999999g"] {
            assert!(parse_size_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_and_vcpus() {
        assert_eq!(parse_cpus("1.5"), Ok(1.5));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("nan").is_err());
        assert!(parse_cpus("64").is_err());
        let mut o = RunOptions::new("busybox");
        assert_eq!(o.vcpus(), 1);
        o.cpus = Some(1.5);
        assert_eq!(o.vcpus(), 2);
    }

    #[test]
    fn guest_memory_adds_overhead() {
        let mut o = RunOptions::new("busybox");
        assert_eq!(o.guest_mem_mib(), DEFAULT_MEM_MIB);
        o.memory_mib = Some(128);
        assert_eq!(o.guest_mem_mib(), 128 + GUEST_OVERHEAD_MIB);
    }

    #[test]
    fn networks() {
        assert_eq!(parse_network("none"), Ok(Network::None));
        assert_eq!(
            parse_network("tap:tap0,netns=/var/run/netns/t"),
            Ok(Network::Tap {
                name: "tap0".into(),
                netns: Some("/var/run/netns/t".into())
            })
        );
        for bad in [
            "host",
            "bridge",
            "tap:",
            "tap:x,foo=bar",
            "tap:averyveryverylongname",
        ] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn security_opts() {
        let mut o = RunOptions::new("busybox");
        apply_security_opt(&mut o, "seccomp=unconfined").unwrap();
        assert_eq!(o.seccomp, Seccomp::Unconfined);
        apply_security_opt(&mut o, "no-new-privileges=false").unwrap();
        assert!(!o.no_new_privileges);
        apply_security_opt(&mut o, "no-new-privileges").unwrap();
        assert!(o.no_new_privileges);
        assert!(matches!(
            apply_security_opt(&mut o, "apparmor=x"),
            Err(Error::Unsupported(_))
        ));
        assert!(apply_security_opt(&mut o, "bogus").is_err());
    }

    #[test]
    fn storage_opts() {
        let mut o = RunOptions::new("busybox");
        apply_storage_opt(&mut o, "size=1g").unwrap();
        assert_eq!(o.scratch_mib, Some(1024));
        apply_storage_opt(&mut o, "size=64M").unwrap();
        assert_eq!(o.scratch_mib, Some(64));
        for bad in [
            "size=",
            "size=1m",
            "size=2000000g",
            "size=lots",
            "1g",
            "dm.basesize=1g",
        ] {
            assert!(
                matches!(apply_storage_opt(&mut o, bad), Err(Error::StorageOpt(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn env_entries_and_files() {
        std::env::set_var("MVRUN_TEST_ENV", "v");
        assert_eq!(
            resolve_env(&[
                "A=1".into(),
                "MVRUN_TEST_ENV".into(),
                "MVRUN_UNSET_XYZ".into()
            ]),
            Ok(vec!["A=1".to_string(), "MVRUN_TEST_ENV=v".to_string()])
        );
        assert!(resolve_env(&["=x".into()]).is_err());
        assert_eq!(
            parse_env_file("# comment\n\nB=2\n  C=3  \n"),
            Ok(vec!["B=2".to_string(), "C=3".to_string()])
        );
    }
}
