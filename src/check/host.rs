//! Checks of the host mvrun runs on: KVM, the kind of virtualization, the guest kernel it implies, the kernel
//! features the container layer needs, the store's permissions, the VMM's own confinement and the cgroup layout.

use super::{Finding, Status};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the host checks look; tests point it at a fake tree.
#[derive(Clone, Debug)]
pub struct HostEnv {
    /// The KVM device.
    pub kvm: PathBuf,
    /// /sys/module.
    pub sys_module: PathBuf,
    /// /proc.
    pub proc: PathBuf,
    /// /sys/fs/cgroup.
    pub cgroup: PathBuf,
    /// mvrun's store (`MVRUN_ROOT`).
    pub store: PathBuf,
    /// `MVRUN_UNSAFE_NO_JAIL=1` is set: VMMs start without their jail.
    pub unsafe_no_jail: bool,
}

impl HostEnv {
    /// The real host.
    pub fn real() -> Self {
        HostEnv {
            kvm: PathBuf::from("/dev/kvm"),
            sys_module: PathBuf::from("/sys/module"),
            proc: PathBuf::from("/proc"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
            store: crate::paths::data_root(),
            unsafe_no_jail: !crate::sandbox::vmm_process::jailed(),
        }
    }
}

/// How this host virtualizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Virtualization {
    /// VT-x or AMD-V through kvm_intel / kvm_amd.
    Hardware,
    /// A nested paravirtual KVM (kvm_pvm) that emulates the guest.
    Emulated,
    /// KVM with neither module visible.
    Unknown,
}

/// Detects the kind of KVM from the loaded modules.
pub fn virtualization(env: &HostEnv) -> Virtualization {
    let m = |name: &str| env.sys_module.join(name).exists();
    if m("kvm_pvm") {
        Virtualization::Emulated
    } else if m("kvm_intel") || m("kvm_amd") {
        Virtualization::Hardware
    } else {
        Virtualization::Unknown
    }
}

/// Every host check.
pub fn check(env: &HostEnv) -> Vec<Finding> {
    vec![
        kvm(env),
        virt(env),
        kernel_variant(env),
        seccomp(env),
        namespaces(env),
        store(env),
        vmm_confinement(env),
        cgroups(env),
    ]
}

fn kvm(env: &HostEnv) -> Finding {
    let id = "host.kvm";
    if !env.kvm.exists() {
        return Finding::new(
            id,
            Status::Fail,
            format!("{} does not exist", env.kvm.display()),
            "enable virtualization in the firmware or the cloud instance type, and load kvm_intel or kvm_amd",
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&env.kvm)
    {
        Ok(_) => Finding::pass(id, format!("{} is present and usable", env.kvm.display())),
        Err(e) => Finding::new(
            id,
            Status::Fail,
            format!("{} cannot be opened: {e}", env.kvm.display()),
            "run mvrun as root or as a member of the kvm group",
        ),
    }
}

fn virt(env: &HostEnv) -> Finding {
    let id = "host.virtualization";
    match virtualization(env) {
        Virtualization::Hardware => Finding::pass(id, "hardware virtualization (kvm_intel/kvm_amd)"),
        Virtualization::Emulated => Finding::new(
            id,
            Status::Warn,
            "nested paravirtual KVM (kvm_pvm): guests are emulated, about 1 us per instruction",
            "expect boots of tens of seconds; use a host with hardware virtualization for production",
        ),
        Virtualization::Unknown => Finding::new(
            id,
            Status::Info,
            "KVM module kind not visible in /sys/module",
            "",
        ),
    }
}

fn kernel_variant(env: &HostEnv) -> Finding {
    let variant = if virtualization(env) == Virtualization::Emulated {
        "emulated"
    } else {
        "normal"
    };
    Finding::new(
        "host.kernel-variant",
        Status::Info,
        format!(
            "guests boot the `{variant}` kernel variant (mvrun kernel path --variant {variant})"
        ),
        "",
    )
}

fn seccomp(env: &HostEnv) -> Finding {
    let id = "host.seccomp";
    let status = std::fs::read_to_string(env.proc.join("self/status")).unwrap_or_default();
    let actions = std::fs::read_to_string(env.proc.join("sys/kernel/seccomp/actions_avail"))
        .unwrap_or_default();
    if status.lines().any(|l| l.starts_with("Seccomp:")) && actions.contains("kill_process") {
        Finding::pass(
            id,
            "seccomp filters are available (for the VMM's own filters)",
        )
    } else {
        Finding::new(
            id,
            Status::Fail,
            "the host kernel lacks seccomp filters",
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        )
    }
}

fn namespaces(env: &HostEnv) -> Finding {
    let id = "host.namespaces";
    let missing: Vec<&str> = ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"]
        .into_iter()
        .filter(|ns| !env.proc.join("self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        Finding::pass(
            id,
            "mount, pid, net, ipc, uts, user and cgroup namespaces are available",
        )
    } else {
        Finding::new(
            id,
            Status::Warn,
            format!("host lacks namespaces: {}", missing.join(", ")),
            "the VMM jail needs them; use a kernel with all namespace kinds",
        )
    }
}

fn store(env: &HostEnv) -> Finding {
    let id = "host.store-permissions";
    let meta = match std::fs::metadata(&env.store) {
        Ok(m) => m,
        Err(_) => {
            return Finding::new(
                id,
                Status::Info,
                format!("store {} does not exist yet", env.store.display()),
                "",
            )
        }
    };
    let world_writable = meta.mode() & 0o002 != 0;
    if meta.uid() != 0 {
        Finding::new(
            id,
            Status::Fail,
            format!(
                "store {} is owned by uid {}, not root",
                env.store.display(),
                meta.uid()
            ),
            format!("chown root:root {}", env.store.display()),
        )
    } else if world_writable {
        Finding::new(
            id,
            Status::Fail,
            format!(
                "store {} is world-writable: anyone can swap an image or kernel",
                env.store.display()
            ),
            format!("chmod o-w {}", env.store.display()),
        )
    } else {
        Finding::pass(
            id,
            format!(
                "store {} is owned by root and not world-writable",
                env.store.display()
            ),
        )
    }
}

/// The cgroup controllers the VMM's own cgroup limits that this host lacks.
fn missing_vmm_controllers(env: &HostEnv) -> Vec<&'static str> {
    let wanted = ["memory", "cpu", "pids"];
    let v2 = std::fs::read_to_string(env.cgroup.join("cgroup.controllers")).ok();
    wanted
        .into_iter()
        .filter(|c| match &v2 {
            Some(list) => !list.split_whitespace().any(|x| x == *c),
            None => !env.cgroup.join(c).is_dir(),
        })
        .collect()
}

fn vmm_confinement(env: &HostEnv) -> Finding {
    let id = "host.vmm-confinement";
    let seccomp = "its vCPU and event-loop threads run under their seccomp filters by default (docs/vmm-seccomp.md)";
    if env.unsafe_no_jail {
        return Finding::new(
            id,
            Status::Warn,
            format!(
                "{}=1: VMMs run without their jail (host filesystem, root, no cgroup); {seccomp}",
                crate::sandbox::jail::UNSAFE_NO_JAIL_ENV
            ),
            format!(
                "unset {} (a debugging switch)",
                crate::sandbox::jail::UNSAFE_NO_JAIL_ENV
            ),
        );
    }
    let missing = missing_vmm_controllers(env);
    if !missing.is_empty() {
        return Finding::new(
            id,
            Status::Warn,
            format!(
                "the VMM jail is on, but the host has no {} cgroup controller for the VMM's own limits; {seccomp}",
                missing.join(", ")
            ),
            "mount the cgroup controllers (memory, cpu, pids) so the VMM's limits apply",
        );
    }
    Finding::pass(
        id,
        format!(
            "the VMM jail is on (own namespaces, pivot_root, unprivileged uid, no_new_privs, rlimits, memory/cpu/pids \
             cgroup; docs/jail.md); {seccomp}"
        ),
    )
}

fn cgroups(env: &HostEnv) -> Finding {
    let id = "host.cgroups";
    let v2_root = env.cgroup.join("cgroup.controllers").exists();
    let hybrid = env.cgroup.join("unified").join("cgroup.procs").exists();
    let layout = if v2_root {
        "cgroup v2 (unified)"
    } else if hybrid {
        "hybrid: cgroup v1 with cgroup2 at /sys/fs/cgroup/unified"
    } else if Path::new(&env.cgroup).join("memory").exists() {
        "cgroup v1"
    } else {
        "no cgroup hierarchy found"
    };
    Finding::new(
        id,
        Status::Info,
        format!("host cgroup layout: {layout} (limits inside the guest always use cgroup v2)"),
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake() -> (tempfile::TempDir, HostEnv) {
        let t = tempfile::tempdir().unwrap();
        let env = HostEnv {
            kvm: t.path().join("kvm"),
            sys_module: t.path().join("module"),
            proc: PathBuf::from("/proc"),
            cgroup: t.path().join("cgroup"),
            store: t.path().join("store"),
            unsafe_no_jail: false,
        };
        std::fs::create_dir_all(&env.sys_module).unwrap();
        std::fs::create_dir_all(&env.cgroup).unwrap();
        (t, env)
    }

    fn find(env: &HostEnv, id: &str) -> Finding {
        check(env).into_iter().find(|f| f.id == id).unwrap()
    }

    #[test]
    fn missing_kvm_fails_with_a_remedy() {
        let (_t, env) = fake();
        let f = find(&env, "host.kvm");
        assert_eq!(f.status, Status::Fail);
        assert!(f.remedy.contains("kvm_intel"));
    }

    #[test]
    fn usable_kvm_passes() {
        let (_t, mut env) = fake();
        std::fs::write(&env.kvm, b"").unwrap();
        assert_eq!(find(&env, "host.kvm").status, Status::Pass);
        env.kvm = PathBuf::from("/nonexistent");
        assert_eq!(find(&env, "host.kvm").status, Status::Fail);
    }

    #[test]
    fn virtualization_kind_picks_the_kernel_variant() {
        let (_t, env) = fake();
        std::fs::create_dir(env.sys_module.join("kvm_pvm")).unwrap();
        assert_eq!(find(&env, "host.virtualization").status, Status::Warn);
        assert!(find(&env, "host.kernel-variant")
            .reason
            .contains("`emulated`"));
        std::fs::remove_dir(env.sys_module.join("kvm_pvm")).unwrap();
        std::fs::create_dir(env.sys_module.join("kvm_intel")).unwrap();
        assert_eq!(find(&env, "host.virtualization").status, Status::Pass);
        assert!(find(&env, "host.kernel-variant")
            .reason
            .contains("`normal`"));
    }

    #[test]
    fn world_writable_store_fails() {
        let (_t, env) = fake();
        std::fs::create_dir(&env.store).unwrap();
        std::fs::set_permissions(&env.store, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(&env, "host.store-permissions").status, Status::Pass);
        std::fs::set_permissions(&env.store, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = find(&env, "host.store-permissions");
        assert_eq!(f.status, Status::Fail);
        assert!(f.remedy.contains("chmod o-w"));
    }

    #[test]
    fn store_owned_by_another_user_fails() {
        let (_t, env) = fake();
        std::fs::create_dir(&env.store).unwrap();
        std::os::unix::fs::chown(&env.store, Some(65534), None).unwrap();
        assert_eq!(find(&env, "host.store-permissions").status, Status::Fail);
    }

    #[test]
    fn this_hosts_kernel_features_pass() {
        let env = HostEnv::real();
        assert_eq!(find(&env, "host.seccomp").status, Status::Pass);
        assert_eq!(find(&env, "host.namespaces").status, Status::Pass);
    }

    #[test]
    fn hybrid_cgroups_are_described() {
        let (_t, env) = fake();
        std::fs::create_dir_all(env.cgroup.join("unified")).unwrap();
        std::fs::write(env.cgroup.join("unified/cgroup.procs"), b"").unwrap();
        assert!(find(&env, "host.cgroups").reason.contains("hybrid"));
    }

    #[test]
    fn the_vmm_jail_is_reported() {
        let (_t, mut env) = fake();
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(env.cgroup.join(c)).unwrap();
        }
        let f = find(&env, "host.vmm-confinement");
        assert!(f.reason.contains("jail is on"), "{}", f.reason);
        assert_eq!(f.status, Status::Pass);
        assert!(f.reason.contains("seccomp"));

        std::fs::remove_dir(env.cgroup.join("pids")).unwrap();
        let f = find(&env, "host.vmm-confinement");
        assert!(
            f.reason.contains("no pids cgroup controller"),
            "{}",
            f.reason
        );

        env.unsafe_no_jail = true;
        let f = find(&env, "host.vmm-confinement");
        assert_eq!(f.status, Status::Warn);
        assert!(f.reason.contains("without their jail"), "{}", f.reason);
        assert!(f.remedy.contains("unset MVRUN_UNSAFE_NO_JAIL"));
    }

    #[test]
    fn v2_controllers_are_read_from_the_root() {
        let (_t, env) = fake();
        std::fs::write(
            env.cgroup.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert!(missing_vmm_controllers(&env).is_empty());
        std::fs::write(env.cgroup.join("cgroup.controllers"), "cpu io\n").unwrap();
        assert_eq!(missing_vmm_controllers(&env), ["memory", "pids"]);
    }
}
