//! guest-init: PID 1 of an mvrun guest (no arguments, pid 1), or `guest-init run --rootfs DIR [OPTIONS] -- CMD`
//! on a host as root. Exit codes as Docker: the workload's own, 128+N on signal N, 126/127 when the command cannot
//! be executed / is not found, 125 when guest-init itself fails.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_protocol::{NetworkConfig, ProcessSpec, SeccompPolicy, WorkloadSpec};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "guest-init",
    version,
    about = "PID 1 of an mvrun guest; `run` runs the same container setup on a host"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD in a hardened container on the rootfs directory DIR (as root), like `docker run`.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// Root filesystem directory.
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Run CMD on a pseudo-terminal (as the guest does for `mvrun run -t`), copied to and from ours.
    #[arg(long, short = 't')]
    tty: bool,
    /// Add a capability (NET_ADMIN, CAP_NET_ADMIN, ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (NET_RAW, ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// seccomp=unconfined|PROFILE.json, no-new-privileges[=true|false].
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// uid[:gid] or name[:group] from the rootfs's /etc/passwd and /etc/group.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Environment entry KEY=VALUE.
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// tmpfs mount PATH[:OPTIONS].
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Memory limit (bytes, or with a unit b, k, m, g).
    #[arg(long, short = 'm')]
    memory: Option<String>,
    /// CPU limit (e.g. 1.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Pids limit.
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    /// Network device to move into the container (host mode: e.g. a dummy or veth link).
    #[arg(long = "net-device", value_name = "IFNAME")]
    net_device: Option<String>,
    /// Address for the device, CIDR.
    #[arg(long, value_name = "CIDR")]
    ip: Option<String>,
    /// Default gateway.
    #[arg(long)]
    gateway: Option<String>,
    /// MTU of the device.
    #[arg(long)]
    mtu: Option<u32>,
    /// DNS server for /etc/resolv.conf.
    #[arg(long)]
    dns: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Parses Docker's size syntax (512m, 1g, 1048576).
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'b')) => (&t[..i], 1u64),
        Some((i, 'k')) => (&t[..i], 1 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .with_context(|| {
            format!("invalid size {s:?}: use a number with an optional unit b, k, m or g")
        })
}

fn workload(a: RunArgs) -> Result<(PathBuf, WorkloadSpec)> {
    let mut w = WorkloadSpec {
        process: ProcessSpec {
            args: a.command,
            env: a.env,
            cwd: a.workdir,
            user: a.user,
            stdin: true,
            tty: a.tty,
            window: a.tty.then(guest_init::tty::window_of_stdio).flatten(),
        },
        hostname: a.hostname,
        cap_add: a.cap_add,
        cap_drop: a.cap_drop,
        read_only: a.read_only,
        tmpfs: a.tmpfs,
        memory_bytes: a.memory.as_deref().map(parse_size).transpose()?,
        cpus: a.cpus,
        pids_limit: a.pids_limit,
        ..Default::default()
    };
    if a.net_device.is_some() || a.ip.is_some() {
        w.network = Some(NetworkConfig {
            interface: a.net_device,
            address: a.ip,
            gateway: a.gateway,
            mtu: a.mtu,
            dns: a.dns,
        });
    }
    for opt in &a.security_opt {
        match opt.split_once(['=', ':']) {
            Some(("seccomp", "unconfined")) => w.seccomp = SeccompPolicy::Unconfined,
            Some(("seccomp", file)) => {
                let text = std::fs::read_to_string(file).with_context(|| format!("failed to read seccomp profile {file}"))?;
                w.seccomp = SeccompPolicy::Profile(text);
            }
            Some(("no-new-privileges", v)) => {
                w.no_new_privileges = v.parse().with_context(|| format!("invalid --security-opt {opt:?}"))?
            }
            None if opt == "no-new-privileges" => w.no_new_privileges = true,
            _ => bail!("invalid --security-opt {opt:?}: supported are seccomp=unconfined|PROFILE.json and no-new-privileges[=true|false]"),
        }
    }
    Ok((a.rootfs, w))
}

fn main() -> ExitCode {
    if std::process::id() == 1 {
        guest_init::pid1::main();
    }
    let filter = std::env::var("GUEST_INIT_LOG").unwrap_or_else(|_| "warn,libcgroups=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    let Some(Command::Run(args)) = cli.command else {
        eprintln!("guest-init: not PID 1; use `guest-init run --rootfs DIR -- CMD` on a host");
        return ExitCode::from(125);
    };
    let result = workload(args).and_then(|(rootfs, w)| Ok(guest_init::host::run(&rootfs, &w)?));
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("guest-init: {e:#}");
            ExitCode::from(125)
        }
    }
}
