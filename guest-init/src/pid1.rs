//! PID 1 of the guest: leave the initramfs for a tmpfs root (pivot_root, which libcontainer uses, refuses to run
//! from the initramfs), mount the pseudo filesystems and the image rootfs (read-only lower + tmpfs or scratch-disk
//! upper in an overlay), serve the agent on vsock, write the boot-timer byte, and end the VM with
//! `reboot(RB_AUTOBOOT)` when the host asks or the workload is over.

use std::fs::{self, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol::{StreamKind, CONTROL_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT};
use nix::mount::{mount, MsFlags};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

use crate::agent::{Agent, Config};
use crate::cmdline;
use crate::container::{Reaper, Runtime};

/// Guest-physical address of the boot timer (the MMIO region's first page; see the VMM).
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// The byte that tells the VMM guest-init is ready.
pub const BOOT_TIMER_READY: u8 = 123;
/// Environment variable that replaces /proc/cmdline and disables the boot timer (tests on a host only).
pub const TEST_CMDLINE_ENV: &str = "GUEST_INIT_TEST_CMDLINE";
/// Environment variable naming a directory where PID 1 listens on unix sockets `<port>.sock` instead of vsock
/// (tests on a host only).
pub const TEST_SOCKETS_ENV: &str = "GUEST_INIT_TEST_SOCKETS";
/// Where everything of guest-init's lives in the guest.
const RUN: &str = "/run/mvrun";
/// Most agent connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// After the workload's exit reached the host, how long to wait for its `Shutdown` before rebooting anyway.
const LINGER: Duration = Duration::from_secs(2);
/// After the workload ended with nobody waiting for it, how long before the VM ends anyway.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors while bringing the guest up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mount failed.
    #[error("failed to mount {what} on {target}")]
    Mount {
        /// What.
        what: String,
        /// Where.
        target: String,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// Some other system call failed.
    #[error("failed to {0}")]
    Sys(String, #[source] std::io::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Sys(what, e)
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    fs::create_dir_all(target).map_err(io(format!("create {target}")))?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|source| Error::Mount {
        what: format!("{fstype} {src}"),
        target: target.into(),
        source,
    })
}

/// Moves to a fresh tmpfs root, as switch_root does, so pivot_root works for the container.
fn leave_initramfs() -> Result<(), Error> {
    mnt(
        "root",
        "/newroot",
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    std::env::set_current_dir("/newroot").map_err(io("enter the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        Error::Mount {
            what: "the new root".into(),
            target: "/".into(),
            source,
        }
    })?;
    nix::unistd::chroot(".")
        .map_err(|e| Error::Sys("chroot into the new root".into(), e.into()))?;
    std::env::set_current_dir("/").map_err(io("enter /"))
}

fn mount_basics() -> Result<(), Error> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid_nodev_noexec, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620"),
    )?;
    mnt(
        "shm",
        "/dev/shm",
        "tmpfs",
        nosuid_nodev_noexec,
        Some("mode=1777"),
    )?;
    mnt(
        "run",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mnt(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev_noexec,
        None,
    )?;
    Ok(())
}

/// Mounts the image read-only with a writable overlay on top; returns the merged root.
fn mount_rootfs(c: &cmdline::Config) -> Result<String, Error> {
    let lower = format!("{RUN}/lower");
    let scratch = format!("{RUN}/scratch");
    let root = format!("{RUN}/rootfs");
    mnt(&c.rootfs, &lower, &c.rootfstype, MsFlags::MS_RDONLY, None)?;
    match &c.scratch {
        Some(dev) => mnt(
            dev,
            &scratch,
            &c.scratchtype,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None,
        )?,
        None => mnt(
            "upper",
            &scratch,
            "tmpfs",
            MsFlags::MS_NODEV,
            Some(&format!("size={},mode=0755", c.tmpfs_size)),
        )?,
    }
    for d in ["upper", "work"] {
        fs::create_dir_all(format!("{scratch}/{d}"))
            .map_err(io(format!("create {scratch}/{d}")))?;
    }
    let opts = format!("lowerdir={lower},upperdir={scratch}/upper,workdir={scratch}/work");
    mnt("overlay", &root, "overlay", MsFlags::empty(), Some(&opts))?;
    Ok(root)
}

/// Lets the workload's cgroup use the controllers its limits need.
fn enable_controllers() {
    let path = "/sys/fs/cgroup/cgroup.subtree_control";
    for c in ["+cpu", "+memory", "+pids", "+io"] {
        if let Err(e) = fs::write(path, c) {
            tracing::warn!("failed to enable cgroup controller {c}: {e}");
        }
    }
}

/// Tells the VMM we are ready: byte 123 at the boot timer's MMIO address. Through mmap, as Firecracker's init
/// does: read()/write() on /dev/mem only reach RAM below high_memory, not MMIO.
fn boot_timer() {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("failed to open /dev/mem for the boot timer: {e}");
            return;
        }
    };
    let page = 4096;
    // SAFETY: a fresh shared mapping of one page of /dev/mem at the boot timer's page-aligned address; nothing
    // else refers to it, and it is unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            BOOT_TIMER_ADDR as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        tracing::warn!(
            "failed to map the boot timer: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: ptr maps a whole page we own; a volatile one-byte store is the MMIO write the VMM traps.
    unsafe {
        std::ptr::write_volatile(ptr.cast::<u8>(), BOOT_TIMER_READY);
        libc::munmap(ptr, page);
    }
}

fn vsock_listener(port: u32) -> Result<OwnedFd, Error> {
    let sys = |what: String| move |e: nix::Error| Error::Sys(what, e.into());
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("open a vsock socket".into()))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(libc::VMADDR_CID_ANY, port),
    )
    .map_err(sys(format!("bind vsock port {port}")))?;
    listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))
        .map_err(sys(format!("listen on vsock port {port}")))?;
    Ok(fd)
}

/// Accepts connections on `port` forever, one thread each (at most [`MAX_CONNECTIONS`] at once).
fn serve(
    agent: Arc<Agent>,
    port: u32,
    kind: Option<StreamKind>,
    active: Arc<AtomicUsize>,
) -> Result<(), Error> {
    let mut accept: Box<dyn FnMut() -> std::io::Result<File> + Send> =
        match std::env::var(TEST_SOCKETS_ENV) {
            // Tests on a host, where vsock has no loopback transport: unix sockets named after the ports.
            Ok(dir) => {
                fs::create_dir_all(&dir).map_err(io(format!("create {dir}")))?;
                let path = format!("{dir}/{port}.sock");
                let l = std::os::unix::net::UnixListener::bind(&path)
                    .map_err(io(format!("listen on {path}")))?;
                Box::new(move || l.accept().map(|(s, _)| File::from(OwnedFd::from(s))))
            }
            Err(_) => {
                let listener = vsock_listener(port)?;
                Box::new(move || {
                    let fd = accept4(
                        std::os::fd::AsRawFd::as_raw_fd(&listener),
                        SockFlag::SOCK_CLOEXEC,
                    )
                    .map_err(std::io::Error::from)?;
                    // SAFETY: accept4 returned a fresh descriptor nothing else owns.
                    Ok(File::from(unsafe {
                        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                    }))
                })
            }
        };
    std::thread::spawn(move || loop {
        let conn = match accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept on port {port} failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closes the connection
        }
        let (agent, active) = (agent.clone(), active.clone());
        std::thread::spawn(move || {
            match kind {
                None => agent.serve_control(conn),
                Some(k) => agent.serve_stream(conn, k),
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    });
    Ok(())
}

fn bring_up() -> Result<Arc<Agent>, Error> {
    let started = Instant::now();
    leave_initramfs()?;
    mount_basics()?;
    // Tests run PID 1 mode on a host inside `unshare --pid --mount --root`: they pass the command line here, and
    // the boot timer (a write to guest-physical memory) must not touch the host's.
    let test_cmdline = std::env::var(TEST_CMDLINE_ENV).ok();
    let cmdline = match &test_cmdline {
        Some(c) => c.clone(),
        None => fs::read_to_string("/proc/cmdline").map_err(io("read /proc/cmdline"))?,
    };
    let c = cmdline::Config::parse(&cmdline);
    let filter = c
        .log
        .clone()
        .unwrap_or_else(|| "warn,libcgroups=error".into());
    // The console is a serial line logged to a file on the host: plain text, no colour codes.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(e) = nix::unistd::sethostname("mvrun") {
        tracing::warn!("failed to set the hostname: {e}");
    }
    let mount_started = Instant::now();
    let rootfs = mount_rootfs(&c)?;
    // Read by `mvrun-bench rootfs-format` (erofs vs ext4) from the console with `MVRUN_GUEST_LOG=info`.
    tracing::info!(
        fstype = c.rootfstype,
        elapsed_us = mount_started.elapsed().as_micros() as u64,
        "rootfs mounted"
    );
    enable_controllers();
    let reaper = Reaper::start();
    reaper.reap_orphans();
    let runtime = Runtime {
        state_root: Path::new(RUN).join("state"),
        bundle_root: Path::new(RUN).join("bundles"),
        reaper,
    };
    let config = Config {
        rootfs: rootfs.into(),
        work_dir: Path::new(RUN).join("etc"),
        container_id: "workload".into(),
        cgroups_path: "/mvrun/workload".into(),
        pods_dir: Path::new(RUN).join("pod"),
        device_dir: "/dev".into(),
        tmpfs_size: c.tmpfs_size.clone(),
    };
    let agent = Arc::new(Agent::new(runtime, config));
    let active = Arc::new(AtomicUsize::new(0));
    // The control port last: the host takes its answer as "the agent is up" and attaches the stdio streams right
    // after, so they must already listen (on a loaded emulated host, binding one port can take many seconds).
    for (port, kind) in [
        (STDIN_PORT, Some(StreamKind::Stdin)),
        (STDOUT_PORT, Some(StreamKind::Stdout)),
        (STDERR_PORT, Some(StreamKind::Stderr)),
        (CONTROL_PORT, None),
    ] {
        serve(agent.clone(), port, kind, active.clone())?;
    }
    if test_cmdline.is_none() {
        boot_timer();
    }
    tracing::info!(elapsed = ?started.elapsed(), "guest-init ready");
    Ok(agent)
}

/// Syncs and resets the VM (with `reboot=k` the guest resets through the i8042 and the VMM stops).
fn end_vm() -> ! {
    nix::unistd::sync();
    let e = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("guest-init: reboot failed: {e:?}");
    // PID 1 must never exit (the kernel would panic); with panic=-1 even that resets, but stay put.
    loop {
        nix::unistd::pause();
    }
}

/// PID 1 entry point: never returns.
pub fn main() -> ! {
    match bring_up() {
        Ok(agent) => {
            agent.wait_for_end(LINGER, ORPHAN_TIMEOUT);
            agent.stop();
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(&format!(": {c}"));
                cur = c.source();
            }
            eprintln!("guest-init: {msg}");
        }
    }
    end_vm()
}
