//! `guest-init run`: the guest's container setup on a host directory, as root, for tests and for debugging a
//! rootfs without a VM. Same spec builder, same runtime, same reaper as PID 1 mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_protocol::WorkloadSpec;

use crate::container::{self, exit_code, Reaper, Runtime, Stdio};
use crate::{net, spec};

/// Where host-mode runs keep libcontainer state and bundles.
pub const HOST_RUN_DIR: &str = "/run/mvrun-guest-init";

/// Errors of a host run (before the workload's own exit code exists).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rootfs is not a directory.
    #[error("failed to use rootfs {0}: not a directory")]
    Rootfs(PathBuf),
    /// The spec could not be built.
    #[error(transparent)]
    Spec(#[from] spec::Error),
    /// The network files could not be written.
    #[error(transparent)]
    Net(#[from] net::Error),
    /// The container could not be created or started.
    #[error(transparent)]
    Container(#[from] container::Error),
}

/// A unique container id for this process.
pub fn container_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Makes this process the reaper of orphaned descendants, so the container's init (which libcontainer's
/// intermediate process leaves behind) is our child to wait for.
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "failed to become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `workload` on `rootfs` with inherited stdio; returns the Docker-style exit code.
pub fn run(rootfs: &Path, workload: &WorkloadSpec) -> Result<i32, Error> {
    if !rootfs.is_dir() {
        return Err(Error::Rootfs(rootfs.to_path_buf()));
    }
    let rootfs = std::fs::canonicalize(rootfs).map_err(|_| Error::Rootfs(rootfs.to_path_buf()))?;
    become_subreaper();
    let runtime = Runtime {
        state_root: Path::new(HOST_RUN_DIR).join("state"),
        bundle_root: Path::new(HOST_RUN_DIR).join("bundles"),
        reaper: Reaper::start(),
    };
    let id = container_id("gi");
    let etc_dir = Path::new(HOST_RUN_DIR).join("etc").join(&id);
    let result = run_in(&runtime, &id, rootfs, &etc_dir, workload);
    let _ = std::fs::remove_dir_all(&etc_dir);
    result
}

fn run_in(
    runtime: &Runtime,
    id: &str,
    rootfs: PathBuf,
    etc_dir: &Path,
    workload: &WorkloadSpec,
) -> Result<i32, Error> {
    let hostname = workload
        .hostname
        .clone()
        .unwrap_or_else(|| spec::DEFAULT_HOSTNAME.into());
    let binds = net::etc_files(etc_dir, &hostname, workload.network.as_ref())?;
    let ctx = spec::Context {
        rootfs,
        cgroups_path: PathBuf::from(format!("/mvrun/{id}")),
        binds,
    };
    let oci = spec::build(workload, &ctx)?;
    let network = workload.network.as_ref();
    let mut running =
        runtime.create_and_start(id, &oci, Stdio::default(), |pid| net::setup(pid, network))?;
    // With -t our own stdio plays the host's streams; our terminal (if stdin is one) goes raw so that keys reach
    // the container's terminal untouched, and comes back however the run ends.
    let mut output = None;
    let mut raw = None;
    if let Some(master) = running.master.as_ref() {
        raw = RawStdin::enter();
        match crate::tty::pump(master, dup_std(0), dup_std(1)) {
            Ok(t) => output = Some(t),
            Err(e) => tracing::warn!("failed to copy the terminal: {e}"),
        }
    }
    let status = Arc::clone(&runtime.reaper).wait(running.pid);
    if let Some(t) = output {
        let _ = t.join();
    }
    drop(raw);
    runtime.remove(&mut running.container);
    Ok(exit_code(status).0)
}

/// A duplicate of our standard descriptor `fd`, or `None` if it is closed.
fn dup_std(fd: i32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: `fd` is 0 or 1, open for this process's life (or not at all: then the dup fails), borrowed only here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().ok()
}

/// Our stdin's terminal in raw mode until dropped (host mode with `-t`).
struct RawStdin(nix::sys::termios::Termios);

impl RawStdin {
    fn enter() -> Option<RawStdin> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawStdin(saved))
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
