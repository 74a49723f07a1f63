//! The VMM process's own cgroup, `/mvrun-vmm/<id>`: memory (guest RAM + headroom), CPU (the sandbox's `--cpus`)
//! and pids limits for the process that runs the guest, so a runaway VMM (or a guest that drives it hard) is
//! bounded on the host. libcgroups picks the host's layout: v1, v2, or a hybrid (v1 controllers beside an
//! empty v2 tree, as on these machines, where the v1 manager is the one that can limit anything).

use libcgroups::common::{self, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use std::path::PathBuf;

/// The parent of every VMM's cgroup.
pub const PARENT: &str = "/mvrun-vmm";
/// Host memory the VMM may use beyond guest RAM: its own heap, device buffers, page tables.
pub const HEADROOM_MIB: u64 = 128;
/// The CFS period the CPU quota is expressed in, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// CPU the VMM gets beyond the guest's `--cpus`, for its event loop (virtio, serial, vsock), in CPUs.
pub const CPU_HEADROOM: f64 = 0.1;
/// Tasks (threads) the VMM may have: vCPUs, the event loop, stdio and helper threads, with room to spare.
pub const PIDS_MAX: i64 = 256;

/// Errors handling the VMM's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup manager for this host's layout.
    #[error("failed to open the cgroup {0}")]
    Manager(PathBuf, #[source] Box<common::CreateCgroupSetupError>),
    /// The limits could not be expressed.
    #[error("failed to describe the VMM's cgroup limits")]
    Spec(#[source] oci_spec::OciSpecError),
    /// The cgroup refused a process or a limit.
    #[error("failed to {0} the cgroup {1}")]
    Apply(
        &'static str,
        PathBuf,
        #[source] Box<common::AnyManagerError>,
    ),
}

/// What the VMM's cgroup allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// CPU quota per [`CPU_PERIOD_US`], in microseconds.
    pub cpu_quota_us: i64,
    /// Maximum tasks.
    pub pids: i64,
}

impl Limits {
    /// Limits for a VM of `mem_mib` MiB and `cpus` CPUs (fractions allowed, as `--cpus`), plus the VMM's own
    /// headroom.
    pub fn for_vm(mem_mib: u64, cpus: f64) -> Limits {
        let cpus = if cpus.is_finite() && cpus > 0.0 {
            cpus
        } else {
            1.0
        };
        Limits {
            memory_bytes: ((mem_mib + HEADROOM_MIB) * 1024 * 1024) as i64,
            // At least 1 ms per period, which the kernel requires.
            cpu_quota_us: (((cpus + CPU_HEADROOM) * CPU_PERIOD_US as f64).round() as i64).max(1000),
            pids: PIDS_MAX,
        }
    }

    fn resources(&self) -> Result<LinuxResources, Error> {
        let memory = LinuxMemoryBuilder::default()
            .limit(self.memory_bytes)
            .build()
            .map_err(Error::Spec)?;
        let cpu = LinuxCpuBuilder::default()
            .quota(self.cpu_quota_us)
            .period(CPU_PERIOD_US)
            .build()
            .map_err(Error::Spec)?;
        let pids = LinuxPidsBuilder::default()
            .limit(self.pids)
            .build()
            .map_err(Error::Spec)?;
        LinuxResourcesBuilder::default()
            .memory(memory)
            .cpu(cpu)
            .pids(pids)
            .build()
            .map_err(Error::Spec)
    }
}

/// The cgroup path (relative to each hierarchy's root) of sandbox `id`'s VMM.
pub fn path_of(id: &str) -> PathBuf {
    PathBuf::from(PARENT).join(id)
}

/// The cgroup of one sandbox's VMM.
pub struct VmmCgroup {
    path: PathBuf,
    manager: AnyCgroupManager,
}

impl VmmCgroup {
    /// Opens (the directories are made when the first task joins) the cgroup of sandbox `id`'s VMM.
    pub fn open(id: &str) -> Result<VmmCgroup, Error> {
        let path = path_of(id);
        // libcgroups warns about every v1 controller the host lacks (hugetlb, net_cls...), on every open: noise
        // for mvrun's users, as the controllers mvrun limits are checked when the limits are applied.
        let manager =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                common::create_cgroup_manager(CgroupConfig {
                    cgroup_path: path.clone(),
                    systemd_cgroup: false,
                    container_name: id.to_string(),
                })
            })
            .map_err(|e| Error::Manager(path.clone(), Box::new(e)))?;
        Ok(VmmCgroup { path, manager })
    }

    /// Moves `pid` into the cgroup and applies `limits`.
    pub fn enter(&self, pid: i32, limits: &Limits) -> Result<(), Error> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(|e| Error::Apply("join", self.path.clone(), Box::new(e)))?;
        let resources = limits.resources()?;
        self.manager
            .apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| Error::Apply("limit", self.path.clone(), Box::new(e)))
    }

    /// Removes the cgroup, killing whatever is still in it.
    pub fn remove(&self) -> Result<(), Error> {
        self.manager
            .remove()
            .map_err(|e| Error::Apply("remove", self.path.clone(), Box::new(e)))
    }
}

/// Removes sandbox `id`'s VMM cgroup if it exists (cleanup of ended and crashed sandboxes); failures are logged.
pub fn remove(id: &str) {
    if !cgroup_exists(id) {
        return;
    }
    match VmmCgroup::open(id).and_then(|c| c.remove()) {
        Ok(()) => {}
        Err(e) => tracing::warn!("{:#}", anyhow::Error::new(e)),
    }
}

/// Whether any hierarchy holds sandbox `id`'s VMM cgroup (a cheap check before opening a manager).
pub fn cgroup_exists(id: &str) -> bool {
    let rel = path_of(id);
    let rel = rel.strip_prefix("/").unwrap_or(&rel);
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten().any(|e| e.path().join(rel).is_dir())
                || std::path::Path::new("/sys/fs/cgroup").join(rel).is_dir()
        })
        .unwrap_or(false)
}

/// The cgroup lines of `/proc/<pid>/cgroup` that name sandbox `id`'s VMM cgroup (for tests and `mvrun check`).
pub fn membership(pid: u32, id: &str) -> Vec<String> {
    let needle = path_of(id).display().to_string();
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(&needle))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm() {
        let l = Limits::for_vm(512, 1.5);
        assert_eq!(l.memory_bytes, (512 + HEADROOM_MIB as i64) * 1024 * 1024);
        assert_eq!(l.cpu_quota_us, 160_000);
        assert_eq!(l.pids, PIDS_MAX);
        // Nonsense CPU figures fall back to one CPU; tiny ones to the kernel's 1 ms minimum.
        assert_eq!(Limits::for_vm(64, f64::NAN).cpu_quota_us, 110_000);
        assert_eq!(Limits::for_vm(64, -1.0).cpu_quota_us, 110_000);
        let r = l.resources().unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(l.memory_bytes));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(CPU_PERIOD_US));
        assert_eq!(r.pids().as_ref().unwrap().limit(), PIDS_MAX);
    }

    #[test]
    fn cgroup_path_is_per_sandbox() {
        assert_eq!(
            path_of("0123456789abcdef0123456789abcdef"),
            PathBuf::from("/mvrun-vmm/0123456789abcdef0123456789abcdef")
        );
    }
}
