//! The subcommands of `mvrun`, one file each.

pub mod check;
pub mod exec;
pub mod image;
pub mod images;
pub mod kernel;
pub mod logs;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod run;
pub mod stop;
pub mod vm;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

const ENVIRONMENT: &str = "\
Environment:
  MVRUN_ROOT            image store and kernel cache (default /var/lib/mvrun)
  MVRUN_RUN_DIR         live sandboxes' state (default /run/mvrun)
  MVRUN_KERNEL          guest kernel to boot (--kernel wins; default: this host's cached build)
  MVRUN_GUEST_INIT      guest-init binary (default /usr/local/lib/mvrun/guest-init)
  MVRUN_ROOTFS_FORMAT   rootfs block image filesystem: erofs (default) or ext4
  MVRUN_GUEST_LOG       guest-init's log filter (e.g. info), logged to console.log
  MVRUN_BOOT_TIMEOUT    seconds a guest may take to bring its agent up (default 600 on emulated KVM, else 30)
  MVRUN_LOG             mvrun's own log filter (same as --log-level)
  MVRUN_KERNEL_SOURCE   kernel source tarball (default: Debian's linux-source-6.12)";

/// Run untrusted OCI images, each in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "mvrun", version, about, long_about = None, after_long_help = ENVIRONMENT)]
pub struct Cli {
    /// Log level or filter for mvrun's own logs on stderr (error, warn, info, debug, trace; or a tracing filter).
    #[arg(long, global = true, env = "MVRUN_LOG")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Audit this host, an image and a run configuration against the container-hardening checklist.
    Check(Box<check::CheckArgs>),
    /// Run a command in a new microVM sandbox.
    Run(Box<run::RunArgs>),
    /// Run another command in a running sandbox.
    Exec(exec::ExecArgs),
    /// List sandboxes.
    Ps(ps::PsArgs),
    /// Show the output of a detached sandbox.
    Logs(logs::LogsArgs),
    /// Stop running sandboxes (SIGTERM, then SIGKILL).
    Stop(stop::StopArgs),
    /// Remove sandboxes.
    Rm(rm::RmArgs),
    /// Pull an image from a registry into the local store.
    Pull(pull::PullArgs),
    /// List images in the local store.
    Images(images::ImagesArgs),
    /// Manage images: inspect, rm, prune, import, rootfs.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Build and locate the guest kernel (variants: normal, emulated).
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
    /// Low-level VM commands (boot a kernel directly).
    #[command(subcommand)]
    Vm(vm::VmCommand),
}

/// Logs go to stderr; the default shows warnings and errors only.
pub fn init_logging(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(level.unwrap_or("warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in logs and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs one subcommand and returns the process exit code.
pub fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check(args) => check::run(*args),
        Command::Run(args) => run::run(*args),
        Command::Pull(args) => pull::run(args),
        Command::Images(args) => images::run(args),
        Command::Image(cmd) => image::run(cmd),
        Command::Exec(args) => exec::run(args),
        Command::Ps(args) => ps::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Rm(args) => rm::run(args),
        Command::Kernel(cmd) => kernel::run(cmd),
        Command::Vm(cmd) => vm::run(cmd),
    }
}
