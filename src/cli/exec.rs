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
    /// Allocate a terminal for the process.
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
    use mvrun::sandbox::terminal;
    terminal::check_input(
        args.interactive,
        args.tty,
        terminal::is_terminal(libc::STDIN_FILENO),
    )
    .map_err(anyhow::Error::msg)?;
    let states = StateDir::open(mvrun::paths::run_root())?;
    let (dir, _) = states.find(&args.sandbox)?;
    let process = agent_protocol::ProcessSpec {
        args: args.command,
        env: mvrun::sandbox::options::resolve_env(&args.env)?,
        cwd: args.workdir,
        user: args.user,
        stdin: args.interactive,
        tty: args.tty,
        window: None,
    };
    // Raw mode (restored when this returns, on every path) only when our keys go to the process's terminal.
    let _raw = if args.tty && args.interactive {
        terminal::RawMode::enter()
    } else {
        None
    };
    let code = control::exec(&dir, process)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(125)))
}
