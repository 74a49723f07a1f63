//! The sandbox: image -> rootfs image -> `VmConfig` -> VMM process -> agent -> exit code. Both front ends (the CLI
//! and the containerd shim) call this module; neither holds a second copy of the logic.
//!
//! One `mvrun run` makes a sandbox directory under the runtime root, writes a [`launch_spec::LaunchSpec`] there,
//! and starts one small process for the sandbox: `mvrun-vmm`, the sandbox's supervisor ([`supervisor`]), which
//! runs the VMM as its jailed child ([`vmm_process`], [`jail`], [`cgroup`]). A foreground run waits for it and
//! exits with its code; a detached one leaves it running.

pub mod cgroup;
pub mod control;
pub mod initramfs;
pub mod jail;
pub mod launch_spec;
pub mod options;
pub mod scratch;
pub mod state;
pub mod supervisor;
pub mod terminal;
pub mod vmm_process;
pub mod workload;

use crate::kernel::{self, Variant};
use crate::paths;
use launch_spec::{LaunchSpec, StdioMode};
use options::{Network, RunOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use workload::ImageDefaults;

/// Exit code for mvrun's own failures, as docker and podman use it.
pub const EXIT_MVRUN_FAILED: u8 = 125;
/// The per-sandbox VMM binary.
pub const VMM_BINARY: &str = "mvrun-vmm";

/// Errors preparing or starting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be resolved or its rootfs built.
    #[error(transparent)]
    Image(#[from] images::Error),
    /// The guest kernel could not be found or built.
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    /// guest-init or the initramfs is missing.
    #[error(transparent)]
    Initramfs(#[from] initramfs::Error),
    /// The workload spec could not be made.
    #[error(transparent)]
    Workload(#[from] workload::Error),
    /// Sandbox records failed.
    #[error(transparent)]
    State(#[from] state::Error),
    /// The scratch disk could not be made.
    #[error(transparent)]
    Scratch(#[from] scratch::Error),
    /// The VMM process could not be started.
    #[error("failed to start {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM binary is missing.
    #[error("{VMM_BINARY} not found next to {0}: run scripts/build.sh")]
    NoVmmBinary(PathBuf),
    /// An environment variable mvrun reads has a value it cannot use.
    #[error("{0}: {1}")]
    Env(&'static str, String),
}

/// Runs a sandbox to completion (or starts it detached) and returns the exit code for the caller.
pub fn run(options: RunOptions) -> Result<u8, Error> {
    let mut phases: Vec<(String, Duration)> = Vec::new();
    let t = Instant::now();
    let store = images::ImageStore::open(paths::data_root())?.with_rootfs_format(rootfs_format()?);
    let pull = images::PullOptions::new()
        .with_progress(std::sync::Arc::new(images::ConsoleProgress::auto()));
    let image = store.resolve_or_pull(&options.image, &pull)?;
    phases.push(("image resolve".into(), t.elapsed()));
    let t = Instant::now();
    let rootfs = store.rootfs_image(&image)?;
    phases.push(("rootfs ready".into(), t.elapsed()));

    let (kernel, initrd) = boot_files(options.kernel.clone())?;
    let workload = workload::workload_spec(&options, &image_defaults(&image))?;

    let states = state::StateDir::open(paths::run_root())?;
    let (dir, record) = states.create(
        options.name.as_deref(),
        &options.image,
        &workload.process.args,
        options.remove,
    )?;
    let result = write_spec(
        &dir,
        &options,
        record.id.clone(),
        rootfs,
        kernel,
        initrd,
        workload,
        phases,
    )
    .and_then(|()| start_vmm(&dir, &record.id, &options));
    if result.is_err() {
        let _ = states.remove(&dir);
    }
    result
}

/// Makes the sandbox's scratch disk (if asked for) and writes its launch spec.
#[allow(clippy::too_many_arguments)]
fn write_spec(
    dir: &state::SandboxDir,
    options: &RunOptions,
    id: String,
    rootfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    workload: agent_protocol::WorkloadSpec,
    cli_phases: Vec<(String, Duration)>,
) -> Result<(), Error> {
    let scratch = match options.scratch_mib {
        Some(mib) => {
            let path = dir.path().join(scratch::FILE_NAME);
            scratch::create(&path, mib)?;
            Some(path)
        }
        None => None,
    };
    let spec = LaunchSpec {
        id,
        kernel,
        cmdline: launch_spec::guest_cmdline(rootfs_fstype(&rootfs), scratch.is_some()),
        initrd,
        mem_mib: options.guest_mem_mib(),
        vcpus: options.vcpus(),
        cpus: options.cpus,
        rootfs,
        scratch,
        tap: match &options.network {
            Network::None => None,
            Network::Tap { name, netns } => Some((name.clone(), netns.clone())),
        },
        guest_mac: None,
        workload,
        stdio: if options.detach {
            StdioMode::Log
        } else {
            StdioMode::Inherit
        },
        tty: options.tty,
        boot_timeout_secs: boot_timeout()?,
        timings: options.timings,
        cli_phases,
        block_slots: 0,
        vmm_seccomp_level: options.vmm_seccomp.as_u8(),
        emulated_kvm: crate::kernel::Variant::for_this_host() == crate::kernel::Variant::Emulated,
    };
    let json = serde_json::to_vec_pretty(&spec).expect("launch specs always serialize");
    Ok(state::write_atomic(&dir.spec_path(), &json)?)
}

/// The guest kernel and initramfs: `kernel` (`--kernel`), else `MVRUN_KERNEL`, else the store's build of the
/// variant this host needs; the initramfs is made (once) from the guest-init binary found.
pub fn boot_files(kernel: Option<PathBuf>) -> Result<(PathBuf, PathBuf), Error> {
    let kernel = match kernel.or_else(|| std::env::var_os("MVRUN_KERNEL").map(PathBuf::from)) {
        Some(k) => k,
        None => kernel::ensure_built(Variant::for_this_host(), true)?.vmlinux,
    };
    let initrd = initramfs::ensure(&initramfs::find_guest_init()?)?;
    Ok((kernel, initrd))
}

/// Environment variable: seconds allowed for the guest to bring its agent up (overrides the host's default).
pub const BOOT_TIMEOUT_ENV: &str = "MVRUN_BOOT_TIMEOUT";

/// Time allowed for the guest to bring its agent up, in seconds: `MVRUN_BOOT_TIMEOUT`, else the host's default
/// (emulated hosts run the guest instruction by instruction, and several guests booting at once share the CPUs).
pub fn boot_timeout() -> Result<u64, Error> {
    boot_timeout_from(
        std::env::var(BOOT_TIMEOUT_ENV).ok().as_deref(),
        Variant::for_this_host(),
    )
}

fn boot_timeout_from(env: Option<&str>, variant: Variant) -> Result<u64, Error> {
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .ok_or_else(|| {
                Error::Env(
                    BOOT_TIMEOUT_ENV,
                    format!("{v:?} is not a number of seconds from 1 to 86400"),
                )
            }),
        None => Ok(match variant {
            Variant::Emulated => 600,
            Variant::Normal => 30,
        }),
    }
}

/// Environment variable: the rootfs block image's filesystem, `erofs` (the default) or `ext4`.
pub const ROOTFS_FORMAT_ENV: &str = "MVRUN_ROOTFS_FORMAT";

fn rootfs_format() -> Result<images::RootfsFormat, Error> {
    match std::env::var(ROOTFS_FORMAT_ENV) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| Error::Env(ROOTFS_FORMAT_ENV, e)),
        _ => Ok(images::RootfsFormat::default()),
    }
}

/// The filesystem type of a rootfs block image, from its extension (`.ext4`, else erofs).
pub fn rootfs_fstype(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("ext4") => "ext4",
        _ => "erofs",
    }
}

fn image_defaults(image: &images::Image) -> ImageDefaults {
    let Some(c) = image.config().config() else {
        return ImageDefaults::default();
    };
    ImageDefaults {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
    }
}

/// The `mvrun-vmm` binary next to the running executable.
pub fn vmm_binary() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Spawn {
        path: VMM_BINARY.into(),
        source,
    })?;
    let bin = exe.with_file_name(VMM_BINARY);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::NoVmmBinary(exe))
    }
}

fn start_vmm(dir: &state::SandboxDir, id: &str, options: &RunOptions) -> Result<u8, Error> {
    let bin = vmm_binary()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--sandbox").arg(dir.path()).arg("--id").arg(id);
    let spawn_err = |source| Error::Spawn {
        path: bin.clone(),
        source,
    };
    if options.detach {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(
            std::fs::File::create(dir.supervisor_log())
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().map_err(spawn_err)?;
        println!("{id}");
        return Ok(0);
    }
    // SAFETY: prctl is async-signal-safe. The VMM dies with this process: a killed CLI leaves no VM behind.
    // PR_SET_PDEATHSIG fires when the *thread* that forked exits, and this is the main thread, which lives
    // until the CLI exits.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // Raw mode only when our keys go to the workload's terminal (-i -t), as Docker: with -t alone the host
    // terminal keeps its own line discipline and Ctrl-C stays a signal to us, which we forward.
    let _raw = if options.tty && options.interactive {
        terminal::RawMode::enter()
    } else {
        None
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    terminal::forward_signals(child.id());
    let status = child.wait().map_err(spawn_err)?;
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        // The supervisor could not record its own end or clean up: do it here.
        let msg = vmm_killed_message(sig);
        eprintln!("mvrun: error: {msg}");
        state::cleanup_runtime_files(dir);
        let record = dir.update(|r| {
            r.status = state::Status::Exited;
            r.pid = None;
            r.exit_code = Some(i32::from(EXIT_MVRUN_FAILED));
            r.exit_reason = Some(msg);
        });
        if record.is_ok_and(|r| r.auto_remove) {
            let _ = std::fs::remove_dir_all(dir.path());
        }
        return Ok(EXIT_MVRUN_FAILED);
    }
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(EXIT_MVRUN_FAILED))
}

/// Why the sandbox's VMM process ended on signal `sig`, for the user.
pub fn vmm_killed_message(sig: i32) -> String {
    if sig == libc::SIGSYS {
        "the sandbox's VMM was killed by its seccomp filter (SIGSYS, bad system call): it made a system call \
         outside its allowlist, a VMM bug or a guest attacking it; `dmesg | grep syscall=` names the call, \
         docs/vmm-seccomp.md tells how to proceed"
            .to_string()
    } else {
        format!("the sandbox's VMM was killed by signal {sig}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timeout_defaults_per_host_and_env_overrides() {
        assert_eq!(boot_timeout_from(None, Variant::Emulated).unwrap(), 600);
        assert_eq!(boot_timeout_from(None, Variant::Normal).unwrap(), 30);
        assert_eq!(boot_timeout_from(Some(""), Variant::Normal).unwrap(), 30);
        assert_eq!(
            boot_timeout_from(Some(" 1500 "), Variant::Emulated).unwrap(),
            1500
        );
        for bad in ["0", "-5", "10m", "86401", "x"] {
            let e = boot_timeout_from(Some(bad), Variant::Normal).unwrap_err();
            assert!(e.to_string().starts_with(BOOT_TIMEOUT_ENV), "{e}");
        }
    }
}
