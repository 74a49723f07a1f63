//! From the OCI runtime spec containerd writes into the bundle (`config.json`) to what guest-init runs: the
//! process, the limits and the hardening knobs the agent protocol carries.
//!
//! What maps and what does not (the guest builds its own hardened container, see guest-init/src/spec.rs):
//! - process args, env, cwd, uid:gid, hostname, read-only root, memory / CPU / pids limits: taken as given;
//! - capabilities: the spec's bounding set is turned into adds and drops relative to Docker's default set, which
//!   is what guest-init starts from;
//! - seccomp: guest-init always applies Docker's default profile (the spec's own filter is not translated);
//! - no_new_privileges: always on (stricter than runc's default);
//! - namespaces, mounts, devices and cgroup paths of the spec name host objects and are not carried into the VM;
//! - a terminal (`ctr run -t`, `process.terminal`) runs the process on a pty in the guest (`ProcessSpec.tty`); its
//!   size comes later through ResizePty, as with runc.

use agent_protocol::{ProcessSpec, SeccompPolicy, WorkloadSpec};
use oci_spec::runtime::{Process, Spec};
use std::collections::HashMap;
use std::path::Path;

/// The annotation CRI puts on every container of a pod: the pod's sandbox id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation CRI uses to tell the pod's sandbox (pause) container from the others.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Docker's default capability set, which guest-init grants unless told to add or drop.
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
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

/// Errors reading a bundle's spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json could not be read or parsed.
    #[error("failed to read the OCI spec {path}")]
    Load {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// An exec's process spec could not be parsed.
    #[error("failed to parse the exec process spec")]
    Process(#[source] serde_json::Error),
    /// The spec has no process.
    #[error("the OCI spec has no process to run")]
    NoProcess,
}

/// The bundle's `config.json`.
pub fn load(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| Error::Load { path, source })
}

/// The spec's annotations (empty when it has none).
pub fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// The process part of an OCI process.
pub fn process_spec(p: &Process, stdin: bool) -> Result<ProcessSpec, Error> {
    let user = p.user();
    Ok(ProcessSpec {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: Some(p.cwd().display().to_string()).filter(|c| !c.is_empty()),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        stdin,
        tty: p.terminal().unwrap_or(false),
        ..ProcessSpec::default()
    })
}

/// An exec request's process (the JSON of an OCI `process` object).
pub fn exec_process(json: &[u8], stdin: bool) -> Result<ProcessSpec, Error> {
    let p: Process = serde_json::from_slice(json).map_err(Error::Process)?;
    process_spec(&p, stdin)
}

/// The workload guest-init creates for the container's init process.
pub fn workload(spec: &Spec, stdin: bool) -> Result<WorkloadSpec, Error> {
    let process = spec.process().as_ref().ok_or(Error::NoProcess)?;
    let mut w = WorkloadSpec {
        process: process_spec(process, stdin)?,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        seccomp: SeccompPolicy::Default,
        no_new_privileges: true,
        read_only: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        ..WorkloadSpec::default()
    };
    if let Some(bounding) = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
    {
        let granted: Vec<String> = bounding.iter().map(|c| format!("CAP_{c}")).collect();
        w.cap_drop = DOCKER_DEFAULT_CAPS
            .iter()
            .filter(|d| !granted.iter().any(|g| g == *d))
            .map(|d| d.to_string())
            .collect();
        w.cap_add = granted
            .into_iter()
            .filter(|g| !DOCKER_DEFAULT_CAPS.contains(&g.as_str()))
            .collect();
    }
    if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().clone()) {
        w.memory_bytes = res
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);
        w.cpus = res
            .cpu()
            .as_ref()
            .and_then(|c| match (c.quota(), c.period()) {
                (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                _ => None,
            });
        w.pids_limit = res.pids().as_ref().map(|p| p.limit()).filter(|l| *l > 0);
    }
    Ok(w)
}

/// Guest RAM for a workload: its memory limit plus the guest's own overhead, or the CLI's default.
pub fn guest_mem_mib(w: &WorkloadSpec) -> u64 {
    let mut o = crate::sandbox::options::RunOptions::new("");
    o.memory_mib = w.memory_bytes.map(|b| b.div_ceil(1 << 20));
    o.guest_mem_mib()
}

/// vCPUs for a workload: its CPU limit rounded up, at least 1.
pub fn vcpus(w: &WorkloadSpec) -> u8 {
    let mut o = crate::sandbox::options::RunOptions::new("");
    o.cpus = w.cpus;
    o.vcpus()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 1000, "gid": 100}, "args": ["echo", "hi"], "env": ["PATH=/bin"], "cwd": "/srv",
                    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]}},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "linux": {"resources": {"memory": {"limit": 134217728}, "cpu": {"quota": 150000, "period": 100000},
                                "pids": {"limit": 64}}}
    }"#;

    #[test]
    fn process_limits_and_root_reach_the_workload() {
        let w = workload(&spec(BASE), true).unwrap();
        assert_eq!(w.process.args, ["echo", "hi"]);
        assert_eq!(w.process.user.as_deref(), Some("1000:100"));
        assert_eq!(w.process.cwd.as_deref(), Some("/srv"));
        assert!(w.process.stdin && w.read_only && w.no_new_privileges);
        assert_eq!(w.hostname.as_deref(), Some("box"));
        assert_eq!(w.memory_bytes, Some(128 << 20));
        assert_eq!(w.cpus, Some(1.5));
        assert_eq!(w.pids_limit, Some(64));
        assert_eq!(
            guest_mem_mib(&w),
            128 + crate::sandbox::options::GUEST_OVERHEAD_MIB
        );
        assert_eq!(vcpus(&w), 2);
    }

    #[test]
    fn capabilities_become_adds_and_drops_against_dockers_defaults() {
        let w = workload(&spec(BASE), false).unwrap();
        assert_eq!(w.cap_add, ["CAP_SYS_ADMIN"]);
        assert!(w.cap_drop.contains(&"CAP_NET_RAW".to_string()));
        assert!(!w.cap_drop.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(w.cap_drop.len(), DOCKER_DEFAULT_CAPS.len() - 2);
    }

    #[test]
    fn terminals_carry_over_and_exec_specs_parse() {
        let p = exec_process(
            br#"{"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/", "terminal": true}"#,
            true,
        )
        .unwrap();
        assert!(p.tty && p.stdin && p.window.is_none());
        let p = exec_process(
            br#"{"user": {"uid": 0, "gid": 0}, "args": ["ls", "/"], "cwd": "/"}"#,
            true,
        )
        .unwrap();
        assert_eq!(p.args, ["ls", "/"]);
        assert!(exec_process(b"{not json", false).is_err());
    }
}
