//! The VMM's jail, in the manner of Firecracker's jailer: the VMM process starts in new PID, mount, network, IPC
//! and UTS namespaces (see [`super::vmm_process`]), then, before the guest runs a single instruction, it
//! - pivots into a tmpfs root that holds only its kernel, initramfs, disks (read-only where they can be), the
//!   sandbox's socket directory and the device nodes it needs; the host's filesystem is unmounted;
//! - builds the VM there (KVM, the tap, the disks, the vsock listener are opened while it is still root);
//! - drops to a per-sandbox unprivileged uid/gid with no supplementary groups (which clears every capability),
//!   sets no_new_privs and lowers its rlimits (open files, file size).
//!
//! [`Plan`] is what the jail holds, computed without touching anything; [`enter`] and [`drop_privileges`] apply it
//! inside the new namespaces. docs/jail.md says what stays reachable and why.

use super::launch_spec::LaunchSpec;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Environment variable: `1` runs the VMM without its jail (debugging only; mvrun warns).
pub const UNSAFE_NO_JAIL_ENV: &str = "MVRUN_UNSAFE_NO_JAIL";
/// The first jail uid (and gid); each sandbox adds an offset made from its id.
pub const BASE_ID: u32 = 900_000_000;
/// Open files the jailed VMM may hold: KVM, vCPU, eventfd and irqfd descriptors, disks, vsock connections.
pub const NOFILE: u64 = 4096;
/// The largest file the VMM may write: the console log is capped here (a guest could otherwise fill the host's
/// disk with console output); a scratch disk larger than this raises the limit to its size.
pub const FSIZE_MIN: u64 = 1 << 30;

/// Paths inside the jail.
pub mod inside {
    /// The guest kernel.
    pub const KERNEL: &str = "/vmlinux";
    /// The initramfs.
    pub const INITRD: &str = "/initrd";
    /// The rootfs image (read-only).
    pub const ROOTFS: &str = "/rootfs";
    /// The scratch disk (read-write).
    pub const SCRATCH: &str = "/scratch";
    /// The sandbox's socket directory (the host's `<sandbox>/vm`).
    pub const VM_DIR: &str = "/vm";
    /// The network namespace to open the tap in, mounted only while the VM is built.
    pub const NETNS: &str = "/netns";
}

/// Errors entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("failed to {what} {path}")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn sys<'a, E: Into<std::io::Error>>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> Error + 'a {
    move |e| Error::Sys {
        what,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// One bind mount into the jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// The host path.
    pub source: PathBuf,
    /// The path inside the jail.
    pub target: &'static str,
    /// Mounted read-only.
    pub read_only: bool,
    /// A directory (else a file).
    pub dir: bool,
}

/// Everything the jail will hold and every limit it sets, computed from the launch spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The host directory the jail's tmpfs root is mounted on (in the VMM's own mount namespace only).
    pub root: PathBuf,
    /// Bind mounts, in order.
    pub binds: Vec<Bind>,
    /// Device nodes to create (same numbers as the host's).
    pub devices: Vec<&'static str>,
    /// The unprivileged uid and gid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE.
    pub fsize: u64,
}

/// The uid (= gid) of sandbox `id`'s jailed VMM: [`BASE_ID`] + the first 5 hex digits of the id, so VMMs of
/// different sandboxes rarely share one (and when they do, their PID namespaces still keep them apart).
pub fn jail_id(id: &str) -> u32 {
    let offset = id
        .get(..5)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    BASE_ID + offset
}

impl Plan {
    /// The jail of the sandbox in host directory `sandbox_dir` running `spec`.
    pub fn for_spec(spec: &LaunchSpec, sandbox_dir: &Path, scratch_len: Option<u64>) -> Plan {
        let file = |source: &Path, target, read_only| Bind {
            source: source.to_path_buf(),
            target,
            read_only,
            dir: false,
        };
        let mut binds = vec![
            file(&spec.kernel, inside::KERNEL, true),
            file(&spec.initrd, inside::INITRD, true),
            file(&spec.rootfs, inside::ROOTFS, true),
        ];
        if let Some(s) = &spec.scratch {
            binds.push(file(s, inside::SCRATCH, false));
        }
        binds.push(Bind {
            source: super::state::SandboxDir::at(sandbox_dir.to_path_buf()).vm_dir(),
            target: inside::VM_DIR,
            read_only: false,
            dir: true,
        });
        let mut devices = vec!["/dev/kvm"];
        if spec.tap.is_some() {
            devices.push("/dev/net/tun");
        }
        let id = jail_id(&spec.id);
        Plan {
            root: super::state::SandboxDir::at(sandbox_dir.to_path_buf()).jail_root(),
            binds,
            devices,
            uid: id,
            gid: id,
            nofile: NOFILE,
            fsize: scratch_len.unwrap_or(0).max(FSIZE_MIN),
        }
    }

    /// The VM's configuration with the jail's paths in place of the host's.
    pub fn jailed_paths(&self, config: &mut vmm::VmConfig) {
        if let vmm::Payload::Kernel { kernel, initrd, .. } = &mut config.payload {
            *kernel = inside::KERNEL.into();
            if let Some(i) = initrd {
                *i = inside::INITRD.into();
            }
        }
        for b in &mut config.block {
            b.path = if b.read_only {
                inside::ROOTFS.into()
            } else {
                inside::SCRATCH.into()
            };
        }
        if let Some(v) = &mut config.vsock {
            let name = v
                .uds_path
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default();
            v.uds_path = Path::new(inside::VM_DIR).join(name);
        }
        if let Some(s) = &mut config.block_slots {
            let name = s
                .uds_path
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default();
            s.uds_path = Path::new(inside::VM_DIR).join(name);
        }
        if let Some(n) = &mut config.net {
            n.netns = Some(inside::NETNS.into());
        }
    }
}

/// Builds the jail from `plan` and pivots into it. Runs as root in the VMM's fresh mount namespace; `netns` (the
/// namespace the tap lives in) is bound at [`inside::NETNS`] until [`leave_netns`].
pub fn enter(plan: &Plan, netns: Option<&Path>) -> Result<(), Error> {
    let root = plan.root.as_path();
    // Nothing done here may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make private", Path::new("/")))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(sys("create", root))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )
    .map_err(sys("mount a tmpfs on", root))?;
    for b in &plan.binds {
        bind(root, &b.source, b.target, b.read_only, b.dir)?;
    }
    if let Some(ns) = netns {
        let target = root.join(inside::NETNS.trim_start_matches('/'));
        std::fs::File::create(&target).map_err(sys("create", &target))?;
        mount(
            Some(ns),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("bind", ns))?;
    }
    for dev in &plan.devices {
        make_device(root, dev)?;
    }
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the jail.
    std::env::set_current_dir(root).map_err(sys("enter", root))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's root from", root))?;
    std::env::set_current_dir("/").map_err(sys("enter", Path::new("/")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(sys("make read-only", Path::new("/")))?;
    let _ = nix::unistd::sethostname("mvrun-vmm");
    Ok(())
}

/// Unmounts the tap's network namespace once the tap is open (the open fd keeps working).
pub fn leave_netns() {
    let _ = umount2(inside::NETNS, MntFlags::MNT_DETACH);
}

fn bind(root: &Path, source: &Path, target: &str, read_only: bool, dir: bool) -> Result<(), Error> {
    let at = root.join(target.trim_start_matches('/'));
    if dir {
        std::fs::create_dir_all(&at).map_err(sys("create", &at))?;
    } else {
        std::fs::File::create(&at).map_err(sys("create", &at))?;
    }
    mount(
        Some(source),
        &at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind", source))?;
    let mut flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &at, None::<&str>, flags, None::<&str>).map_err(sys("restrict", &at))
}

/// A device node with the host's numbers, root-owned and 0600: opened before the privileges drop, and not
/// openable after.
fn make_device(root: &Path, dev: &str) -> Result<(), Error> {
    let host = Path::new(dev);
    let rdev = std::fs::metadata(host).map_err(sys("stat", host))?.rdev();
    let at = root.join(dev.trim_start_matches('/'));
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).map_err(sys("create", parent))?;
    }
    nix::sys::stat::mknod(
        &at,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        rdev,
    )
    .map_err(sys("mknod", &at))
}

/// Drops to the plan's uid/gid with no supplementary groups (which clears every capability), sets the rlimits and
/// no_new_privs.
pub fn drop_privileges(plan: &Plan) -> Result<(), Error> {
    let none = Path::new("");
    set_rlimit(libc::RLIMIT_NOFILE, plan.nofile).map_err(sys("set RLIMIT_NOFILE", none))?;
    set_rlimit(libc::RLIMIT_FSIZE, plan.fsize).map_err(sys("set RLIMIT_FSIZE", none))?;
    // A write past the file-size limit fails with EFBIG instead of killing the VMM.
    // SAFETY: SIG_IGN for SIGXFSZ installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // Empty the bounding set too (while CAP_SETPCAP is still held), so nothing can ever regain a capability.
    for cap in 0..=last_cap() {
        // SAFETY: prctl with integer arguments; unknown capabilities fail harmlessly.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    let gid = nix::unistd::Gid::from_raw(plan.gid);
    let uid = nix::unistd::Uid::from_raw(plan.uid);
    nix::unistd::setgroups(&[]).map_err(sys("clear the groups", none))?;
    // glibc applies these to every thread of the process.
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("set the gid", none))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("set the uid", none))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys("set no_new_privs", none)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The highest capability number the kernel knows (probed with PR_CAPBSET_READ: no /proc in the jail).
fn last_cap() -> libc::c_ulong {
    let mut cap: libc::c_ulong = 0;
    // SAFETY: prctl with integer arguments; it fails (EINVAL) past the last capability.
    while cap < 128 && unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap + 1, 0, 0, 0) } >= 0 {
        cap += 1;
    }
    cap
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads a valid, initialized struct.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::launch_spec::StdioMode;

    fn spec(scratch: bool, tap: bool) -> LaunchSpec {
        LaunchSpec {
            id: "abcde0123456789abcdef0123456789a".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.cpio".into(),
            cmdline: String::new(),
            mem_mib: 256,
            vcpus: 1,
            cpus: None,
            rootfs: "/img/rootfs.erofs".into(),
            scratch: scratch.then(|| "/run/mvrun/x/scratch.ext4".into()),
            tap: tap.then(|| ("tap0".to_string(), None)),
            guest_mac: None,
            workload: Default::default(),
            stdio: StdioMode::Log,
            tty: false,
            boot_timeout_secs: 1,
            timings: false,
            cli_phases: Vec::new(),
            block_slots: 0,
            vmm_seccomp_level: 2,
            emulated_kvm: false,
        }
    }

    #[test]
    fn the_jail_holds_only_what_the_vm_needs() {
        let p = Plan::for_spec(&spec(false, false), Path::new("/run/mvrun/x"), None);
        let targets: Vec<_> = p.binds.iter().map(|b| (b.target, b.read_only)).collect();
        assert_eq!(
            targets,
            [
                (inside::KERNEL, true),
                (inside::INITRD, true),
                (inside::ROOTFS, true),
                (inside::VM_DIR, false)
            ]
        );
        assert_eq!(p.binds[3].source, Path::new("/run/mvrun/x/vm"));
        assert_eq!(p.root, Path::new("/run/mvrun/x/root"));
        assert_eq!(p.devices, ["/dev/kvm"]);
        assert_eq!(p.fsize, FSIZE_MIN);
        assert_eq!(p.nofile, NOFILE);
    }

    #[test]
    fn scratch_is_writable_and_the_tap_brings_tun() {
        let p = Plan::for_spec(&spec(true, true), Path::new("/run/mvrun/x"), Some(4 << 30));
        let scratch = p
            .binds
            .iter()
            .find(|b| b.target == inside::SCRATCH)
            .unwrap();
        assert!(!scratch.read_only);
        assert_eq!(p.devices, ["/dev/kvm", "/dev/net/tun"]);
        assert_eq!(
            p.fsize,
            4 << 30,
            "a large scratch disk raises the file-size limit"
        );
    }

    #[test]
    fn uids_are_unprivileged_and_per_sandbox() {
        assert_eq!(jail_id("abcde0123"), BASE_ID + 0xabcde);
        assert_eq!(jail_id("00000"), BASE_ID);
        assert_eq!(
            jail_id("zz"),
            BASE_ID,
            "a malformed id still gets an unprivileged uid"
        );
        assert!(jail_id("fffff") < u32::MAX - 1);
    }

    #[test]
    fn the_vm_config_sees_jail_paths() {
        let p = Plan::for_spec(&spec(true, true), Path::new("/run/mvrun/x"), None);
        let mut c = vmm::VmConfig {
            payload: vmm::Payload::Kernel {
                kernel: "/k/vmlinux".into(),
                initrd: Some("/k/initrd.cpio".into()),
                cmdline: String::new(),
            },
            block: vec![
                vmm::config::BlockConfig {
                    path: "/img/rootfs.erofs".into(),
                    read_only: true,
                    id: "rootfs".into(),
                },
                vmm::config::BlockConfig {
                    path: "/run/mvrun/x/scratch.ext4".into(),
                    read_only: false,
                    id: "scratch".into(),
                },
            ],
            vsock: Some(vmm::config::VsockConfig {
                guest_cid: 3,
                uds_path: "/run/mvrun/x/vm/vsock.sock".into(),
            }),
            net: Some(vmm::config::NetConfig {
                tap_name: "tap0".into(),
                netns: None,
                mac: [2, 0, 0, 0, 0, 1],
            }),
            block_slots: Some(vmm::config::BlockSlotsConfig {
                count: 2,
                uds_path: "/run/mvrun/x/vm/slots.sock".into(),
            }),
            ..Default::default()
        };
        p.jailed_paths(&mut c);
        let vmm::Payload::Kernel { kernel, initrd, .. } = &c.payload else {
            unreachable!()
        };
        assert_eq!(kernel, Path::new(inside::KERNEL));
        assert_eq!(initrd.as_deref(), Some(Path::new(inside::INITRD)));
        assert_eq!(c.block[0].path, Path::new(inside::ROOTFS));
        assert_eq!(c.block[1].path, Path::new(inside::SCRATCH));
        assert_eq!(c.vsock.unwrap().uds_path, Path::new("/vm/vsock.sock"));
        assert_eq!(c.block_slots.unwrap().uds_path, Path::new("/vm/slots.sock"));
        assert_eq!(
            c.net.unwrap().netns.as_deref(),
            Some(Path::new(inside::NETNS))
        );
    }
}
