//! `mvrun rm`: remove sandboxes' records (stopping running ones with -f).

use clap::Args;
use mvrun::sandbox::{control, state::StateDir, state::Status};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `mvrun rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stop a running sandbox first (SIGKILL).
    #[arg(short, long)]
    pub force: bool,
    /// Sandbox names or ids.
    #[arg(required = true)]
    pub sandboxes: Vec<String>,
}

/// Runs `mvrun rm`.
pub fn run(args: RmArgs) -> anyhow::Result<ExitCode> {
    let states = StateDir::open(mvrun::paths::run_root())?;
    for key in &args.sandboxes {
        let (dir, record) = states.find(key)?;
        if record.status == Status::Running {
            if !args.force {
                anyhow::bail!("sandbox {key} is running: stop it first, or use mvrun rm -f");
            }
            control::stop(&dir, Duration::ZERO)?;
        }
        states.remove(&dir)?;
        println!("{key}");
    }
    Ok(ExitCode::SUCCESS)
}
