//! `mvrun stop`: SIGTERM the workload, SIGKILL it after a grace period.

use clap::Args;
use mvrun::sandbox::{control, state::StateDir};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `mvrun stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Sandbox names or ids.
    #[arg(required = true)]
    pub sandboxes: Vec<String>,
}

/// Runs `mvrun stop`.
pub fn run(args: StopArgs) -> anyhow::Result<ExitCode> {
    let states = StateDir::open(mvrun::paths::run_root())?;
    for key in &args.sandboxes {
        let (dir, _) = states.find(key)?;
        control::stop(&dir, Duration::from_secs(args.time))?;
        println!("{key}");
    }
    Ok(ExitCode::SUCCESS)
}
