//! `mvrun exec`: run another process in a running sandbox's container.

use clap::Args;
use mvrun::sandbox::{control, state::StateDir};
use std::process::ExitCode;

/// Arguments of `mvrun exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal (not supported yet: refused).
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (uid[:gid] or name).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Sandbox name or id.
    pub sandbox: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs `mvrun exec`.
pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    if args.tty {
        anyhow::bail!("mvrun exec -t is not supported yet");
    }
    let states = StateDir::open(mvrun::paths::run_root())?;
    let (dir, _) = states.find(&args.sandbox)?;
    let process = agent_protocol::ProcessSpec {
        args: args.command,
        env: mvrun::sandbox::options::resolve_env(&args.env)?,
        cwd: args.workdir,
        user: args.user,
        stdin: args.interactive,
    };
    let code = control::exec(&dir, process)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(125)))
}
