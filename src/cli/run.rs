//! `mvrun run`: start a fresh microVM for a workload, the way `docker run` starts a container.

use anyhow::Context;
use clap::Args;
use mvrun::sandbox::options::{self, Network, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `mvrun run`.
#[derive(Debug, Args)]
#[command(
    after_help = "Every sandbox is its own KVM microVM with the workload inside as a hardened container \
    (namespaces, Docker's default capabilities and seccomp profile, no_new_privs, masked /proc paths).\n\
    Exit status: the workload's own; 125 when mvrun itself fails; 126 when the command cannot be run; \
    127 when it does not exist; 128+N when a signal N ended it."
)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: RunFlags,
    /// Image to run (e.g. busybox, registry.example/app:1.0).
    pub image: String,
    /// Command and arguments (replaces the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The flags of `mvrun run`, shared with `mvrun check`, which audits a run configuration.
#[derive(Debug, Args)]
pub struct RunFlags {
    /// Keep stdin open and forward it to the workload.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal for the workload.
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the sandbox's record when it ends.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the sandbox id.
    #[arg(short, long)]
    pub detach: bool,
    /// Name the sandbox.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the host's value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: name, uid or uid:gid (names come from the image's /etc/passwd and /etc/group).
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Memory limit of the container (e.g. 256m, 1g); the microVM gets this plus 64 MiB for its kernel and init.
    /// Without it the microVM has 256 MiB.
    #[arg(short, long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit of the container (e.g. 1.5); also the microVM's vCPU count, rounded up.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Limit on processes inside the container (-1: unlimited).
    #[arg(long, value_name = "N", default_value_t = options::DEFAULT_PIDS_LIMIT, allow_negative_numbers = true)]
    pub pids_limit: i64,
    /// Network: `none` (the default, loopback only: untrusted code gets no network unless you ask) or
    /// `tap:NAME[,netns=PATH]` for a tap device, optionally in a network namespace.
    #[arg(
        long,
        value_name = "none|tap:NAME[,netns=PATH]",
        default_value = "none"
    )]
    pub network: String,
    /// Guest address on the tap network, in CIDR form (e.g. 10.0.0.2/24).
    #[arg(long, value_name = "CIDR")]
    pub ip: Option<String>,
    /// Guest default gateway on the tap network.
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<String>,
    /// DNS server for the container's /etc/resolv.conf.
    #[arg(long, value_name = "ADDR")]
    pub dns: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Give the container's writable layer its own disk: `size=SIZE` (e.g. size=1g; a sparse file in the sandbox's
    /// runtime directory, removed with the sandbox). Without it the writable layer is a tmpfs in the microVM's RAM.
    #[arg(long, value_name = "size=SIZE")]
    pub storage_opt: Vec<String>,
    /// Add a Linux capability (or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Security options: seccomp=unconfined|PROFILE.json, no-new-privileges[=false].
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Mount a tmpfs (PATH[:OPTIONS]).
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Guest kernel to boot instead of the one chosen for this host.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Print how long each phase took.
    #[arg(long)]
    pub timings: bool,
    /// The VMM's own seccomp filters: 2 (the default) allowlists of system calls and their arguments, 1 system
    /// calls only, 0 none (to debug the VMM only: a guest that breaks out of a device reaches every system call).
    #[arg(long, value_name = "0|1|2", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub seccomp_level: u8,

    /// Not supported (Docker's --publish).
    #[arg(short = 'p', long = "publish", hide = true)]
    pub publish: Vec<String>,
    /// Not supported (Docker's --volume).
    #[arg(short = 'v', long = "volume", hide = true)]
    pub volume: Vec<String>,
    /// Not supported (Docker's --mount).
    #[arg(long = "mount", hide = true)]
    pub mount: Vec<String>,
    /// Not supported (Docker's --privileged).
    #[arg(long, hide = true)]
    pub privileged: bool,
    /// Not supported (Docker's --device).
    #[arg(long = "device", hide = true)]
    pub device: Vec<String>,
    /// Not supported (Docker's --pid / --ipc / --userns / --uts / --cgroupns sharing).
    #[arg(long = "pid", hide = true)]
    pub pid_mode: Option<String>,
    /// Not supported.
    #[arg(long = "ipc", hide = true)]
    pub ipc_mode: Option<String>,
    /// Not supported.
    #[arg(long = "userns", hide = true)]
    pub userns: Option<String>,
    /// Not supported.
    #[arg(long = "gpus", hide = true)]
    pub gpus: Option<String>,
}

/// Turns the flags into [`RunOptions`] for `image` and `command`, refusing what mvrun does not support.
pub fn to_options(a: RunFlags, image: String, command: Vec<String>) -> anyhow::Result<RunOptions> {
    let unsupported: [(&str, bool); 9] = [
        (
            "-p/--publish (use --network tap:NAME and route to the guest)",
            !a.publish.is_empty(),
        ),
        (
            "-v/--volume (there is no host filesystem sharing with the guest)",
            !a.volume.is_empty(),
        ),
        ("--mount", !a.mount.is_empty()),
        ("--privileged", a.privileged),
        ("--device", !a.device.is_empty()),
        ("--pid", a.pid_mode.is_some()),
        ("--ipc", a.ipc_mode.is_some()),
        ("--userns", a.userns.is_some()),
        ("--gpus", a.gpus.is_some()),
    ];
    if let Some((flag, _)) = unsupported.iter().find(|(_, used)| *used) {
        return Err(options::Error::Unsupported(flag.to_string()).into());
    }
    let mut o = RunOptions::new(image);
    o.command = command;
    o.entrypoint = a
        .entrypoint
        .map(|e| e.split_whitespace().map(str::to_string).collect());
    o.interactive = a.interactive;
    o.tty = a.tty;
    o.remove = a.rm;
    o.detach = a.detach;
    o.name = a.name;
    for file in &a.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --env-file {}", file.display()))?;
        o.env.extend(options::parse_env_file(&text)?);
    }
    o.env.extend(options::resolve_env(&a.env)?);
    o.workdir = a.workdir;
    o.user = a.user;
    if let Some(m) = &a.memory {
        let mib = options::parse_size_mib(m)?;
        if mib < 4 {
            return Err(options::Error::MemoryTooSmall(mib).into());
        }
        o.memory_mib = Some(mib);
    }
    o.cpus = a.cpus.as_deref().map(options::parse_cpus).transpose()?;
    o.pids_limit = a.pids_limit;
    o.network = options::parse_network(&a.network)?;
    if o.network == Network::None && (a.ip.is_some() || a.gateway.is_some()) {
        anyhow::bail!("--ip and --gateway need a network: add --network tap:NAME");
    }
    o.ip = a.ip;
    o.gateway = a.gateway;
    o.dns = a.dns;
    o.read_only = a.read_only;
    for s in &a.storage_opt {
        options::apply_storage_opt(&mut o, s)?;
    }
    o.cap_add = a.cap_add;
    o.cap_drop = a.cap_drop;
    for s in &a.security_opt {
        options::apply_security_opt(&mut o, s)?;
    }
    o.tmpfs = a.tmpfs;
    o.hostname = a.hostname;
    o.kernel = a.kernel;
    o.timings = a.timings;
    o.vmm_seccomp = vmm::seccomp::SeccompLevel::try_from(a.seccomp_level)?;
    if o.detach && o.interactive {
        anyhow::bail!("-i cannot be combined with -d: a detached sandbox has no stdin to forward");
    }
    Ok(o)
}

/// Runs `mvrun run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let options = to_options(args.flags, args.image, args.command)?;
    if options.vmm_seccomp == vmm::seccomp::SeccompLevel::Off {
        eprintln!(
            "mvrun: warning: --seccomp-level 0: the VMM runs without its seccomp filters; use this only to debug \
             the VMM"
        );
    }
    if !options.detach {
        mvrun::sandbox::terminal::check_input(
            options.interactive,
            options.tty,
            mvrun::sandbox::terminal::is_terminal(libc::STDIN_FILENO),
        )
        .map_err(anyhow::Error::msg)?;
    }
    let code = mvrun::sandbox::run(options)?;
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<RunOptions> {
        let t = T::try_parse_from(std::iter::once("run").chain(args.iter().copied()))?;
        to_options(t.run.flags, t.run.image, t.run.command)
    }

    #[test]
    fn docker_style_flags() {
        let o = parse(&[
            "-i",
            "--rm",
            "--name",
            "n1",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "65534",
            "-m",
            "128m",
            "--cpus",
            "1.5",
            "--read-only",
            "--cap-drop",
            "NET_RAW",
            "--security-opt",
            "seccomp=unconfined",
            "--storage-opt",
            "size=1g",
            "busybox",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        assert!(o.interactive && o.remove && o.read_only);
        assert_eq!(o.name.as_deref(), Some("n1"));
        assert_eq!(o.env, vec!["A=1"]);
        assert_eq!(o.memory_mib, Some(128));
        assert_eq!(o.vcpus(), 2);
        assert_eq!(o.image, "busybox");
        assert_eq!(o.command, vec!["sh", "-c", "exit 3"]);
        assert_eq!(o.cap_drop, vec!["NET_RAW"]);
        assert_eq!(o.scratch_mib, Some(1024));
    }

    #[test]
    fn unsupported_docker_flags_are_refused_not_ignored() {
        for flags in [
            &["-p", "80:80"][..],
            &["-v", "/:/host"],
            &["--privileged"],
            &["--device", "/dev/kvm"],
            &["--pid", "host"],
        ] {
            let mut args = flags.to_vec();
            args.extend(["busybox", "true"]);
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains("not supported"), "{flags:?}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_problem() {
        assert!(parse(&["-m", "lots", "busybox"])
            .unwrap_err()
            .to_string()
            .contains("invalid size"));
        assert!(parse(&["--network", "host", "busybox"])
            .unwrap_err()
            .to_string()
            .contains("--network"));
        assert!(parse(&["--ip", "10.0.0.2/24", "busybox"])
            .unwrap_err()
            .to_string()
            .contains("tap"));
        assert!(parse(&["-d", "-i", "busybox"]).is_err());
        assert!(parse(&["--storage-opt", "size=1", "busybox"])
            .unwrap_err()
            .to_string()
            .contains("--storage-opt"));
    }

    #[test]
    fn vmm_seccomp_is_on_unless_turned_off() {
        use vmm::seccomp::SeccompLevel;
        assert_eq!(
            parse(&["busybox"]).unwrap().vmm_seccomp,
            SeccompLevel::Arguments
        );
        let o = parse(&["--seccomp-level", "0", "busybox"]).unwrap();
        assert_eq!(o.vmm_seccomp, SeccompLevel::Off);
        let o = parse(&["--seccomp-level", "1", "busybox"]).unwrap();
        assert_eq!(o.vmm_seccomp, SeccompLevel::Syscalls);
        assert!(parse(&["--seccomp-level", "3", "busybox"]).is_err());
    }

    #[test]
    fn arguments_after_the_image_belong_to_the_workload() {
        let o = parse(&["busybox", "ls", "-l", "--rm"]).unwrap();
        assert!(!o.remove);
        assert_eq!(o.command, vec!["ls", "-l", "--rm"]);
    }
}
