//! Several containers in one VM (a pod): what sets a pod member apart from the VM's one container.
//!
//! - its root filesystem: a read-only image on a block device of its own (a slot the host filled after boot,
//!   see the VMM's block slots), mounted read-only under a tmpfs upper layer of its own in an overlay, exactly as
//!   the boot rootfs is; the image's content is as hostile as any image's (the kernel's erofs driver reads it);
//! - the namespaces it joins: those of another container of the VM (the pod's sandbox container), by the
//!   guest's own `/proc/PID/ns/*` paths, for the kinds the host asked (network, IPC, UTS, and PID only when the
//!   pod shares it); every other namespace, its cgroup, its capabilities and its seccomp filter are its own.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_protocol::{Namespace, RootfsDevice};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

/// Filesystem types a container image may have.
const FSTYPES: [&str; 3] = ["erofs", "ext4", "squashfs"];
/// How long a freshly attached device may take to show its size (the guest handles the VMM's
/// configuration-change interrupt in a work queue).
const DEVICE_WAIT: Duration = Duration::from_secs(30);
/// `_IO(0x12, 97)`: drop the device's cached blocks (include/uapi/linux/fs.h).
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Errors placing a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host asked for something malformed.
    #[error("invalid {0}")]
    Invalid(String),
    /// The device never showed a size.
    #[error("failed to use {0}: it stayed empty for {1:?} (no image attached?)")]
    Empty(String, Duration),
    /// A system call failed.
    #[error("failed to {what}")]
    Sys {
        /// What.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

/// Whether `id` may name a container: it becomes a directory and a cgroup name.
pub fn valid_container_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The device node a request names, checked: `<device_dir>/vdX` (a virtio disk), nothing else.
pub fn device_path(device_dir: &Path, d: &RootfsDevice) -> Result<PathBuf, Error> {
    let name = d
        .device
        .strip_prefix("/dev/")
        .filter(|n| {
            n.len() >= 3
                && n.len() <= 4
                && n.starts_with("vd")
                && n[2..].bytes().all(|b| b.is_ascii_lowercase())
        })
        .ok_or_else(|| Error::Invalid(format!("rootfs device {:?}: not /dev/vdX", d.device)))?;
    Ok(device_dir.join(name))
}

/// The filesystem type a request names (default erofs).
pub fn fstype(d: &RootfsDevice) -> Result<&str, Error> {
    let t = d.fstype.as_deref().unwrap_or("erofs");
    FSTYPES
        .contains(&t)
        .then_some(t)
        .ok_or_else(|| Error::Invalid(format!("rootfs filesystem type {t:?}")))
}

/// The device's size in sectors as the guest kernel sees it now.
fn sectors(dev: &Path) -> Result<u64, Error> {
    let real = fs::canonicalize(dev).map_err(sys(format!("resolve {}", dev.display())))?;
    let name = real.file_name().unwrap_or_default().to_string_lossy();
    let path = format!("/sys/block/{name}/size");
    let text = fs::read_to_string(&path).map_err(sys(format!("read {path}")))?;
    Ok(text.trim().parse().unwrap_or(0))
}

/// Drops the device's cached blocks: a slot's previous image must not be read through the page cache as part
/// of the next one.
fn flush_buffers(dev: &Path) {
    match fs::File::open(dev) {
        // SAFETY: BLKFLSBUF takes no argument and touches no memory of ours.
        Ok(f) => unsafe {
            if libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) != 0 {
                tracing::warn!(
                    "failed to flush the buffers of {}: {}",
                    dev.display(),
                    std::io::Error::last_os_error()
                );
            }
        },
        Err(e) => tracing::warn!("failed to open {} to flush it: {e}", dev.display()),
    }
}

fn mnt(
    src: &Path,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    fs::create_dir_all(target).map_err(sys(format!("create {}", target.display())))?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| Error::Sys {
        what: format!("mount {fstype} {} on {}", src.display(), target.display()),
        source: e.into(),
    })
}

/// A container's own root filesystem: its image's device mounted read-only, a tmpfs upper layer, the overlay.
#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
    device: PathBuf,
    /// The merged root the container runs on.
    pub root: PathBuf,
}

impl Rootfs {
    /// Mounts `device` (read-only, `fstype`) under `dir` with a tmpfs upper layer of `tmpfs_size` (tmpfs `size=`
    /// syntax). Waits for the device to show a size first.
    pub fn mount(
        dir: &Path,
        device: &Path,
        fstype: &str,
        tmpfs_size: &str,
    ) -> Result<Rootfs, Error> {
        let deadline = Instant::now() + DEVICE_WAIT;
        while sectors(device)? == 0 {
            if Instant::now() >= deadline {
                return Err(Error::Empty(device.display().to_string(), DEVICE_WAIT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        flush_buffers(device);
        let r = Rootfs {
            dir: dir.to_path_buf(),
            device: device.to_path_buf(),
            root: dir.join("rootfs"),
        };
        let result = (|| {
            let lower = dir.join("lower");
            let scratch = dir.join("scratch");
            mnt(device, &lower, fstype, MsFlags::MS_RDONLY, None)?;
            mnt(
                Path::new("upper"),
                &scratch,
                "tmpfs",
                MsFlags::MS_NODEV,
                Some(&format!("size={tmpfs_size},mode=0755")),
            )?;
            for d in ["upper", "work"] {
                fs::create_dir_all(scratch.join(d)).map_err(sys(format!("create {d}")))?;
            }
            let opts = format!(
                "lowerdir={},upperdir={}/upper,workdir={}/work",
                lower.display(),
                scratch.display(),
                scratch.display()
            );
            mnt(
                Path::new("overlay"),
                &r.root,
                "overlay",
                MsFlags::empty(),
                Some(&opts),
            )
        })();
        match result {
            Ok(()) => Ok(r),
            Err(e) => {
                r.unmount();
                Err(e)
            }
        }
    }

    /// The device it was mounted from.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Unmounts everything (lazily when something still holds it) and releases the device.
    pub fn unmount(&self) {
        for m in ["rootfs", "scratch", "lower"] {
            let p = self.dir.join(m);
            if umount2(&p, MntFlags::empty()).is_err() {
                // EINVAL (never mounted) or EBUSY: a detached mount goes when its last user does.
                let _ = umount2(&p, MntFlags::MNT_DETACH);
            }
        }
        flush_buffers(&self.device);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("failed to remove {}: {e}", self.dir.display());
        }
    }
}

fn ns_type(n: Namespace) -> (LinuxNamespaceType, &'static str) {
    match n {
        Namespace::Network => (LinuxNamespaceType::Network, "net"),
        Namespace::Ipc => (LinuxNamespaceType::Ipc, "ipc"),
        Namespace::Uts => (LinuxNamespaceType::Uts, "uts"),
        Namespace::Pid => (LinuxNamespaceType::Pid, "pid"),
    }
}

/// Makes `spec` join `namespaces` of the process `pid` (another container's init) instead of creating its own.
/// Joining UTS drops the spec's hostname: the pod's is the sandbox's.
pub fn join_namespaces(spec: &mut Spec, pid: i32, namespaces: &[Namespace]) -> Result<(), Error> {
    let Some(linux) = spec.linux().clone() else {
        return Ok(());
    };
    let mut list: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    for n in namespaces {
        let (typ, name) = ns_type(*n);
        list.retain(|ns| ns.typ() != typ);
        list.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .path(format!("/proc/{pid}/ns/{name}"))
                .build()
                .map_err(|e| Error::Invalid(format!("namespace {name}: {e}")))?,
        );
    }
    let mut linux = linux;
    linux.set_namespaces(Some(list));
    spec.set_linux(Some(linux));
    if namespaces.contains(&Namespace::Uts) {
        spec.set_hostname(None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_and_devices_are_checked() {
        for ok in ["a", "sandbox", "0123abc_.-x", &"f".repeat(128)] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "-a", "a/b", "a b", &"f".repeat(129), "é"] {
            assert!(!valid_container_id(bad), "{bad}");
        }
        let dev = |d: &str| RootfsDevice {
            device: d.into(),
            fstype: None,
        };
        assert_eq!(
            device_path(Path::new("/dev"), &dev("/dev/vdc")).unwrap(),
            Path::new("/dev/vdc")
        );
        assert_eq!(
            device_path(Path::new("/t"), &dev("/dev/vdab")).unwrap(),
            Path::new("/t/vdab")
        );
        for bad in [
            "/dev/sda",
            "/dev/vd",
            "/dev/vd1",
            "/dev/../vda",
            "vdb",
            "/dev/vdb/x",
            "/dev/vdabc",
        ] {
            assert!(device_path(Path::new("/dev"), &dev(bad)).is_err(), "{bad}");
        }
        assert_eq!(fstype(&dev("/dev/vdb")).unwrap(), "erofs");
        let nfs = RootfsDevice {
            device: "/dev/vdb".into(),
            fstype: Some("nfs".into()),
        };
        assert!(fstype(&nfs).is_err());
    }

    #[test]
    fn joining_rewrites_only_the_named_namespaces() {
        let mut spec = Spec::default();
        spec.set_hostname(Some("app".into()));
        join_namespaces(&mut spec, 42, &[Namespace::Network, Namespace::Uts]).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let path = |t: LinuxNamespaceType| {
            ns.iter()
                .find(|n| n.typ() == t)
                .map(|n| n.path().clone().map(|p| p.display().to_string()))
        };
        assert_eq!(
            path(LinuxNamespaceType::Network),
            Some(Some("/proc/42/ns/net".into()))
        );
        assert_eq!(
            path(LinuxNamespaceType::Uts),
            Some(Some("/proc/42/ns/uts".into()))
        );
        // The others stay new namespaces of the container's own.
        assert_eq!(path(LinuxNamespaceType::Pid), Some(None));
        assert_eq!(path(LinuxNamespaceType::Mount), Some(None));
        assert_eq!(
            ns.iter()
                .filter(|n| n.typ() == LinuxNamespaceType::Network)
                .count(),
            1
        );
        assert_eq!(spec.hostname(), &None);
    }
}
