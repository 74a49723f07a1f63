//! What the CLI hands the per-sandbox VMM process (`mvrun-vmm`): everything needed to build the VM and start the
//! workload, written to `<sandbox dir>/spec.json` before the process starts.

use agent_protocol::WorkloadSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where the workload's stdio goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdioMode {
    /// The VMM process's own stdio (inherited from the CLI): a foreground `mvrun run`.
    Inherit,
    /// `stdout.log` / `stderr.log` in the sandbox directory: a detached sandbox.
    Log,
    /// The front end drives the agent itself (the containerd shim, which creates, starts, execs and waits for
    /// processes as containerd asks): the VMM process only runs the VM until the guest ends it.
    External,
}

/// The launch spec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Sandbox id.
    pub id: String,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with guest-init.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// `--cpus` as given (the VMM's CPU quota); `vcpus` when absent.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Read-only rootfs image.
    pub rootfs: PathBuf,
    /// Writable scratch disk for the container's writable layer (else a tmpfs in guest RAM).
    #[serde(default)]
    pub scratch: Option<PathBuf>,
    /// Tap device and the netns to open it in.
    pub tap: Option<(String, Option<PathBuf>)>,
    /// The guest NIC's MAC on `tap` (the shim gives a pod's VM its CNI veth's MAC); one made from `id` when absent.
    #[serde(default)]
    pub guest_mac: Option<[u8; 6]>,
    /// What guest-init runs.
    pub workload: WorkloadSpec,
    /// Where stdio goes.
    pub stdio: StdioMode,
    /// The workload has a terminal.
    pub tty: bool,
    /// How long to wait for the guest's agent.
    pub boot_timeout_secs: u64,
    /// Print phase timings at the end.
    pub timings: bool,
    /// Phases the CLI already measured (name, duration).
    pub cli_phases: Vec<(String, Duration)>,
    /// Empty read-only disks the front end fills while the guest runs (a pod's later containers: see
    /// [`slot_device`]); 0 for none.
    #[serde(default)]
    pub block_slots: u8,
    /// The VMM threads' seccomp filters: 0 off, 1 system calls, 2 system calls and arguments (the default).
    #[serde(default = "default_vmm_seccomp_level")]
    pub vmm_seccomp_level: u8,
    /// The host's KVM runs guests through its instruction emulator (`vmm::VmConfig::emulated_kvm`).
    #[serde(default)]
    pub emulated_kvm: bool,
}

fn default_vmm_seccomp_level() -> u8 {
    vmm::seccomp::SeccompLevel::default().as_u8()
}

/// Environment variable: guest-init's log filter (`mvrun.log=` on the guest's command line), e.g. `info`; its
/// lines land in the sandbox's console.log.
pub const GUEST_LOG_ENV: &str = "MVRUN_GUEST_LOG";

/// Guest-init's command-line words for a sandbox (read by guest-init: see guest-init/src/cmdline.rs). The rootfs
/// is the first disk (/dev/vda), the scratch disk, when there is one, the second.
pub fn guest_cmdline(rootfs_fstype: &str, scratch: bool) -> String {
    let mut words = vec![
        "quiet".to_string(),
        "mvrun.rootfs=/dev/vda".to_string(),
        format!("mvrun.rootfstype={rootfs_fstype}"),
    ];
    if scratch {
        words.push(format!("mvrun.scratch={}", super::scratch::GUEST_DEVICE));
        words.push("mvrun.scratchtype=ext4".to_string());
    }
    // One command-line word: a filter with spaces or quotes would split it, so it is dropped with a warning.
    if let Ok(filter) = std::env::var(GUEST_LOG_ENV) {
        if !filter.is_empty() && filter.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            words.push(format!("mvrun.log={filter}"));
        } else {
            tracing::warn!("ignoring {GUEST_LOG_ENV}={filter:?}: not a single command-line word");
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    vmm::config::cmdline_with(vmm::DEFAULT_CMDLINE, &words)
}

/// The guest's device node of runtime block slot `slot` in a VM with `disks` configured disks before it (the
/// rootfs, the scratch disk): the guest names virtio disks in slot order, vda first.
pub fn slot_device(disks: usize, slot: u8) -> String {
    let n = disks + usize::from(slot);
    // vda..vdz, then vdaa.. as Linux's virtblk_name_format does.
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if n < 26 {
        format!("/dev/vd{}", letters[n] as char)
    } else {
        format!(
            "/dev/vd{}{}",
            letters[n / 26 - 1] as char,
            letters[n % 26] as char
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_named_after_the_configured_disks() {
        assert_eq!(slot_device(1, 0), "/dev/vdb");
        assert_eq!(slot_device(2, 3), "/dev/vdf");
        assert_eq!(slot_device(1, 25), "/dev/vdaa");
    }

    #[test]
    fn scratch_disk_is_named_on_the_command_line_only_when_there_is_one() {
        let plain = guest_cmdline("erofs", false);
        assert!(plain.contains("mvrun.rootfs=/dev/vda mvrun.rootfstype=erofs"));
        assert!(!plain.contains("mvrun.scratch"));
        let with = guest_cmdline("ext4", true);
        assert!(
            with.contains("mvrun.scratch=/dev/vdb mvrun.scratchtype=ext4"),
            "{with}"
        );
    }
}
