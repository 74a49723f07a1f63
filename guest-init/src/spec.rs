//! The workload's OCI runtime spec: an [`agent_protocol::WorkloadSpec`] plus Docker's hardening defaults.
//!
//! Defaults (each relaxed only by an explicit flag): new mount/PID/IPC/UTS/network/cgroup namespaces; Docker's 14
//! default capabilities; the seccomp profile of [`crate::seccomp`]; no_new_privs on (Docker leaves it off: we are
//! stricter); masked and read-only paths as moby 27's `daemon/oci/defaults.go` (a superset of the 20.10 list,
//! adding /proc/interrupts and /sys/devices/virtual/powercap); a device cgroup denying everything but the default
//! nodes libcontainer creates (null, zero, full, random, urandom, tty, console, ptmx); a pids limit.

use std::path::{Path, PathBuf};

use agent_protocol::{ProcessSpec, SeccompPolicy, WorkloadSpec};
use oci_spec::runtime::{
    BoxBuilder, Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, Process, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::{seccomp, user};

/// Docker's default capability set (moby `oci/caps/defaults.go`); CapEff 00000000a80425fb.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability `ALL` stands for (Linux 6.x: 0..=40).
const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Masked paths (moby 27 `daemon/oci/defaults.go`).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Read-only paths (same source).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// PATH when the workload's environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pids limit when none is given (Docker has none; a fork bomb would otherwise take the whole guest down).
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Hostname when none is given.
pub const DEFAULT_HOSTNAME: &str = "mvrun";

/// CFS period for `--cpus`, as Docker uses.
const CPU_PERIOD: u64 = 100_000;

/// Errors building the spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A capability name that Linux does not have.
    #[error("failed to parse capability {0:?}: unknown (use names like NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    Capability(String),
    /// A bad `--tmpfs`, `--workdir` or similar value.
    #[error("invalid {0}")]
    Invalid(String),
    /// The user could not be resolved.
    #[error(transparent)]
    User(#[from] user::Error),
    /// The seccomp profile could not be resolved.
    #[error("failed to resolve the seccomp profile")]
    Seccomp(#[from] seccomp::Error),
    /// oci-spec rejected a value.
    #[error("failed to build the OCI spec")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// Host-side facts the spec needs besides the workload.
#[derive(Clone, Debug)]
pub struct Context {
    /// The container's root filesystem.
    pub rootfs: PathBuf,
    /// cgroup path for the container (libcontainer makes a literal `:youki:<id>` directory without one).
    pub cgroups_path: PathBuf,
    /// Extra bind mounts (source, destination), e.g. the generated /etc/hosts.
    pub binds: Vec<(PathBuf, String)>,
}

fn normalize_cap(name: &str) -> Result<String, Error> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if full == "CAP_ALL" {
        return Ok("ALL".into());
    }
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(Error::Capability(name.into()))
    }
}

/// The final capability set, as Docker computes it: `ALL` in adds starts from every capability, `ALL` in drops
/// starts from none; otherwise the defaults plus adds minus drops.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, Error> {
    let add = add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let drop = drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let base: Vec<&str> = if add.iter().any(|c| c == "ALL") {
        ALL_CAPS.to_vec()
    } else if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS.to_vec()
    };
    let mut caps: Vec<String> = base
        .iter()
        .map(|s| s.to_string())
        .chain(add.into_iter().filter(|c| c != "ALL"))
        .collect();
    if !drop.iter().any(|c| c == "ALL") || caps.len() < ALL_CAPS.len() {
        caps.retain(|c| !drop.contains(c));
    }
    caps.sort();
    caps.dedup();
    Ok(caps)
}

fn to_oci_caps(names: &[String]) -> Capabilities {
    // oci-spec may not know the newest names; those are left out rather than failing (none of Docker's are new).
    names
        .iter()
        .filter_map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.clone())).ok()
        })
        .collect()
}

/// Parses a `--tmpfs PATH[:OPTIONS]` value into a mount (Docker's defaults: noexec, nosuid, nodev).
fn tmpfs_mount(spec: &str) -> Result<Mount, Error> {
    let (dest, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if !user::is_clean_absolute(dest) {
        return Err(Error::Invalid(format!(
            "--tmpfs {spec:?}: the path must be absolute without '..'"
        )));
    }
    let mut options: Vec<String> = vec!["noexec".into(), "nosuid".into(), "nodev".into()];
    options.extend(opts.split(',').filter(|o| !o.is_empty()).map(String::from));
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source("tmpfs")
        .options(options)
        .build()?)
}

/// The OCI process for `p` in the rootfs at `rootfs` with capability set `caps`.
pub fn process(
    p: &ProcessSpec,
    rootfs: &Path,
    caps: &[String],
    no_new_privileges: bool,
) -> Result<Process, Error> {
    if p.args.is_empty() {
        return Err(Error::Invalid("command: it is empty".into()));
    }
    let cwd = p.cwd.clone().unwrap_or_else(|| "/".into());
    if !user::is_clean_absolute(&cwd) {
        return Err(Error::Invalid(format!(
            "--workdir {cwd:?}: it must be absolute without '..'"
        )));
    }
    let id = user::resolve(rootfs, p.user.as_deref().unwrap_or("0"))?;
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    // Docker sets TERM for a terminal when the image and user did not.
    if p.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            id.home.clone().unwrap_or_else(|| "/".into())
        ));
    }
    let set = to_oci_caps(caps);
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;
    let mut user = UserBuilder::default().uid(id.uid).gid(id.gid);
    if !id.groups.is_empty() {
        user = user.additional_gids(id.groups);
    }
    let mut builder = ProcessBuilder::default();
    if let Some(w) = p.window.filter(|_| p.tty) {
        builder = builder.console_size(
            BoxBuilder::default()
                .height(u64::from(w.rows))
                .width(u64::from(w.cols))
                .build()?,
        );
    }
    Ok(builder
        .terminal(p.tty)
        .args(p.args.clone())
        .env(env)
        .cwd(cwd)
        .user(user.build()?)
        .capabilities(capabilities)
        .no_new_privileges(no_new_privileges)
        // No rlimits of our own: the workload inherits guest-init's, as Docker's inherit the daemon's (oci-spec's
        // default would pin RLIMIT_NOFILE to 1024).
        .rlimits(Vec::new())
        .build()?)
}

/// The full OCI spec for `w`.
pub fn build(w: &WorkloadSpec, ctx: &Context) -> Result<Spec, Error> {
    let caps = capabilities(&w.cap_add, &w.cap_drop)?;
    let process = process(&w.process, &ctx.rootfs, &caps, w.no_new_privileges)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    // Docker leaves /sys/fs/cgroup read-only; keep the default list's cgroup mount and make sure of it.
    for m in &mut mounts {
        if m.destination() == Path::new("/sys/fs/cgroup") {
            let mut o = m.options().clone().unwrap_or_default();
            if !o.iter().any(|x| x == "ro") {
                o.push("ro".into());
            }
            m.set_options(Some(o));
        }
    }
    for t in &w.tmpfs {
        mounts.push(tmpfs_mount(t)?);
    }
    for (src, dest) in &ctx.binds {
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string(), "rprivate".to_string()])
                .build()?,
        );
    }

    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?]);
    if let Some(limit) = w.memory_bytes {
        let limit = i64::try_from(limit)
            .map_err(|_| Error::Invalid(format!("--memory {limit}: too large")))?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if let Some(cpus) = w.cpus {
        if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
            return Err(Error::Invalid(format!(
                "--cpus {cpus}: use a positive number"
            )));
        }
        let quota = (cpus * CPU_PERIOD as f64).round() as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD)
                .build()?,
        );
    }
    let pids = w.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT);
    // 0 or negative means unlimited, as `docker run --pids-limit`.
    if pids > 0 {
        resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(oci_spec::runtime::get_default_namespaces())
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .resources(resources.build()?)
        .cgroups_path(ctx.cgroups_path.clone());
    match &w.seccomp {
        SeccompPolicy::Unconfined => {}
        SeccompPolicy::Default => {
            linux = linux.seccomp(seccomp::resolve(
                seccomp::DEFAULT_PROFILE,
                &caps,
                seccomp::running_kernel(),
            )?)
        }
        SeccompPolicy::Profile(text) => {
            linux = linux.seccomp(seccomp::resolve(text, &caps, seccomp::running_kernel())?)
        }
    }

    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path(&ctx.rootfs)
                .readonly(w.read_only)
                .build()?,
        ))
        .set_hostname(Some(
            w.hostname
                .clone()
                .unwrap_or_else(|| DEFAULT_HOSTNAME.into()),
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux.build()?));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn capability_sets_follow_docker() {
        let d = capabilities(&[], &[]).unwrap();
        assert_eq!(d.len(), 14);
        let mask: u64 = d
            .iter()
            .map(|c| 1u64 << ALL_CAPS.iter().position(|a| a == c).unwrap())
            .sum();
        assert_eq!(format!("{mask:016x}"), "00000000a80425fb");
        let no_raw = capabilities(&[], &s(&["net_raw"])).unwrap();
        assert!(!no_raw.contains(&"CAP_NET_RAW".to_string()) && no_raw.len() == 13);
        assert_eq!(
            capabilities(&s(&["CHOWN"]), &s(&["ALL"])).unwrap(),
            s(&["CAP_CHOWN"])
        );
        assert_eq!(
            capabilities(&s(&["ALL"]), &s(&["SYS_ADMIN"]))
                .unwrap()
                .len(),
            40
        );
        assert!(matches!(
            capabilities(&s(&["CAP_FLY"]), &[]),
            Err(Error::Capability(_))
        ));
    }

    #[test]
    fn tmpfs_and_paths_are_checked() {
        assert!(tmpfs_mount("/run:size=1m").is_ok());
        assert!(tmpfs_mount("run").is_err());
        assert!(tmpfs_mount("/a/../b").is_err());
        let root = tempfile::tempdir().unwrap();
        let p = ProcessSpec {
            args: s(&["sh"]),
            cwd: Some("../x".into()),
            ..Default::default()
        };
        assert!(process(&p, root.path(), &[], true).is_err());
        let p = ProcessSpec::default();
        assert!(process(&p, root.path(), &[], true).is_err());
    }

    #[test]
    fn a_terminal_gets_its_size_and_term() {
        let root = tempfile::tempdir().unwrap();
        let mut p = ProcessSpec {
            args: s(&["sh"]),
            tty: true,
            window: Some(agent_protocol::WindowSize { rows: 24, cols: 80 }),
            ..Default::default()
        };
        let oci = process(&p, root.path(), &[], true).unwrap();
        assert_eq!(oci.terminal(), Some(true));
        let b = oci.console_size().unwrap();
        assert_eq!((b.height(), b.width()), (24, 80));
        assert!(oci
            .env()
            .as_ref()
            .unwrap()
            .contains(&"TERM=xterm".to_string()));
        p.env = s(&["TERM=vt100"]);
        let oci = process(&p, root.path(), &[], true).unwrap();
        assert!(!oci
            .env()
            .as_ref()
            .unwrap()
            .contains(&"TERM=xterm".to_string()));
        p.tty = false;
        let oci = process(&p, root.path(), &[], true).unwrap();
        assert_eq!(oci.terminal(), Some(false));
        assert!(oci.console_size().is_none(), "no terminal, no size");
    }
}
