//! Checks of a run configuration: the same flags `mvrun run` takes, judged against the checklist.

use super::{Finding, Status};
use crate::sandbox::options::{Network, RunOptions, Seccomp};
use vmm::seccomp::SeccompLevel;

/// Docker's default capability set (moby's `oci/caps/defaults.go`): what a container keeps without `--cap-add`.
pub const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Capabilities that hand a container (close to) full control of its kernel: the guest's, under mvrun.
const DANGEROUS_CAPS: [&str; 8] = [
    "ALL",
    "SYS_ADMIN",
    "SYS_MODULE",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "NET_ADMIN",
    "BPF",
    "DAC_READ_SEARCH",
];

fn normalize_cap(c: &str) -> String {
    let c = c.trim().to_ascii_uppercase();
    c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c)
}

/// Every run-configuration check.
pub fn check(o: &RunOptions) -> Vec<Finding> {
    vec![
        capabilities(o),
        seccomp(o),
        vmm_seccomp(o),
        no_new_privileges(o),
        memory_limit(o),
        pids_limit(o),
        read_only_rootfs(o),
        network(o),
        user(o),
    ]
}

fn capabilities(o: &RunOptions) -> Finding {
    let added: Vec<String> = o
        .cap_add
        .iter()
        .map(|c| normalize_cap(c))
        .filter(|c| !DOCKER_DEFAULT_CAPS.contains(&c.as_str()))
        .collect();
    let dangerous: Vec<&String> = added
        .iter()
        .filter(|c| DANGEROUS_CAPS.contains(&c.as_str()))
        .collect();
    let id = "run.capabilities";
    if !dangerous.is_empty() {
        Finding::new(
            id,
            Status::Fail,
            format!(
                "--cap-add {} gives the workload control of the guest kernel",
                join(&dangerous)
            ),
            "drop these capabilities; grant only the narrow one the workload needs",
        )
    } else if !added.is_empty() {
        Finding::new(
            id,
            Status::Warn,
            format!(
                "capabilities added beyond Docker's default set: {}",
                added.join(", ")
            ),
            "check that the workload needs them",
        )
    } else if o.cap_drop.iter().any(|c| normalize_cap(c) == "ALL") {
        Finding::pass(id, "all capabilities dropped")
    } else {
        Finding::pass(id, "Docker's default capability set, nothing added")
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn seccomp(o: &RunOptions) -> Finding {
    let id = "run.seccomp";
    match &o.seccomp {
        Seccomp::Default => Finding::pass(id, "Docker's default seccomp profile"),
        Seccomp::Profile(p) => Finding::new(
            id,
            Status::Info,
            format!("custom seccomp profile {}", p.display()),
            "review the profile against Docker's default",
        ),
        Seccomp::Unconfined => Finding::new(
            id,
            Status::Fail,
            "seccomp=unconfined: every system call of the guest kernel is reachable",
            "remove --security-opt seccomp=unconfined",
        ),
    }
}

fn vmm_seccomp(o: &RunOptions) -> Finding {
    let id = "run.vmm-seccomp";
    match o.vmm_seccomp {
        SeccompLevel::Arguments => Finding::pass(
            id,
            "the VMM's seccomp filters check system calls and their arguments",
        ),
        SeccompLevel::Syscalls => Finding::new(
            id,
            Status::Warn,
            "--seccomp-level 1: the VMM's seccomp filters check system calls but not their arguments",
            "remove --seccomp-level (2 is the default)",
        ),
        SeccompLevel::Off => Finding::new(
            id,
            Status::Fail,
            "--seccomp-level 0: a guest that takes over the VMM reaches every host system call",
            "remove --seccomp-level 0: it is for debugging the VMM only",
        ),
    }
}

fn no_new_privileges(o: &RunOptions) -> Finding {
    let id = "run.no-new-privileges";
    if o.no_new_privileges {
        Finding::pass(
            id,
            "no_new_privs set: setuid binaries cannot raise privileges",
        )
    } else {
        Finding::new(
            id,
            Status::Warn,
            "no-new-privileges=false: setuid binaries in the image can raise privileges",
            "remove --security-opt no-new-privileges=false",
        )
    }
}

fn memory_limit(o: &RunOptions) -> Finding {
    let id = "run.memory-limit";
    match o.memory_mib {
        Some(m) => Finding::pass(id, format!("container memory limited to {m} MiB")),
        None => Finding::new(
            id,
            Status::Warn,
            format!(
                "no container memory limit: the workload can use the whole {} MiB guest",
                o.guest_mem_mib()
            ),
            "set --memory",
        ),
    }
}

fn pids_limit(o: &RunOptions) -> Finding {
    let id = "run.pids-limit";
    if o.pids_limit > 0 {
        Finding::pass(id, format!("at most {} processes", o.pids_limit))
    } else {
        Finding::new(
            id,
            Status::Warn,
            "no pids limit: a fork bomb can exhaust the guest",
            "set --pids-limit",
        )
    }
}

fn read_only_rootfs(o: &RunOptions) -> Finding {
    let id = "run.read-only-rootfs";
    if o.read_only {
        Finding::pass(id, "root filesystem is read-only")
    } else {
        Finding::new(
            id,
            Status::Info,
            "root filesystem is writable (a throwaway overlay; the image itself is never changed)",
            "use --read-only with --tmpfs for the paths the workload writes",
        )
    }
}

fn network(o: &RunOptions) -> Finding {
    let id = "run.network";
    match &o.network {
        Network::None => Finding::pass(id, "no network: loopback only"),
        Network::Tap { name, .. } => Finding::new(
            id,
            Status::Warn,
            format!("networking on through tap {name}: untrusted code can reach the network"),
            "use --network none unless the workload needs the network; filter the tap on the host",
        ),
    }
}

fn user(o: &RunOptions) -> Finding {
    let id = "run.user";
    match o.user.as_deref() {
        Some(u) if !is_root_user(u) => Finding::pass(id, format!("runs as {u}")),
        Some(_) => Finding::new(
            id,
            Status::Warn,
            "runs as root",
            "use --user with a non-root uid",
        ),
        None => Finding::new(
            id,
            Status::Info,
            "user comes from the image (see image.user)",
            "",
        ),
    }
}

/// Whether a `--user` value names root.
pub fn is_root_user(u: &str) -> bool {
    let name = u.split(':').next().unwrap_or(u);
    name == "0" || name == "root"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(o: &RunOptions, id: &str) -> Finding {
        check(o).into_iter().find(|f| f.id == id).unwrap()
    }

    #[test]
    fn defaults_pass_the_hardening_checks() {
        let o = RunOptions::new("busybox");
        for id in [
            "run.capabilities",
            "run.seccomp",
            "run.vmm-seccomp",
            "run.no-new-privileges",
            "run.pids-limit",
            "run.network",
        ] {
            assert_eq!(find(&o, id).status, Status::Pass, "{id}");
        }
        assert_eq!(find(&o, "run.memory-limit").status, Status::Warn);
    }

    #[test]
    fn sys_admin_fails_and_a_harmless_cap_warns() {
        let mut o = RunOptions::new("busybox");
        o.cap_add = vec!["cap_sys_admin".into()];
        assert_eq!(find(&o, "run.capabilities").status, Status::Fail);
        o.cap_add = vec!["IPC_LOCK".into()];
        assert_eq!(find(&o, "run.capabilities").status, Status::Warn);
        o.cap_add = vec!["CHOWN".into()];
        assert_eq!(find(&o, "run.capabilities").status, Status::Pass);
    }

    #[test]
    fn weakened_options_are_flagged() {
        let mut o = RunOptions::new("busybox");
        o.seccomp = Seccomp::Unconfined;
        o.vmm_seccomp = SeccompLevel::Off;
        o.no_new_privileges = false;
        o.pids_limit = -1;
        o.network = Network::Tap {
            name: "tap0".into(),
            netns: None,
        };
        o.user = Some("root".into());
        assert_eq!(find(&o, "run.seccomp").status, Status::Fail);
        assert_eq!(find(&o, "run.vmm-seccomp").status, Status::Fail);
        assert_eq!(find(&o, "run.no-new-privileges").status, Status::Warn);
        assert_eq!(find(&o, "run.pids-limit").status, Status::Warn);
        assert_eq!(find(&o, "run.network").status, Status::Warn);
        assert_eq!(find(&o, "run.user").status, Status::Warn);
    }

    #[test]
    fn limits_and_read_only_pass() {
        let mut o = RunOptions::new("busybox");
        o.memory_mib = Some(128);
        o.read_only = true;
        o.user = Some("65534".into());
        assert_eq!(find(&o, "run.memory-limit").status, Status::Pass);
        assert_eq!(find(&o, "run.read-only-rootfs").status, Status::Pass);
        assert_eq!(find(&o, "run.user").status, Status::Pass);
    }
}
