//! `mvrun ps`: list sandboxes.

use clap::Args;
use mvrun::sandbox::state::{short_id, StateDir, Status};
use std::process::ExitCode;

/// Arguments of `mvrun ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show exited sandboxes too.
    #[arg(short, long)]
    pub all: bool,
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs `mvrun ps`.
pub fn run(args: PsArgs) -> anyhow::Result<ExitCode> {
    let states = StateDir::open(mvrun::paths::run_root())?;
    let list = states.list()?;
    if !args.quiet {
        println!(
            "{:<12}  {:<20}  {:<24}  {:<28}  STATUS",
            "SANDBOX ID", "IMAGE", "COMMAND", "NAME"
        );
    }
    for (_, r) in list
        .iter()
        .filter(|(_, r)| args.all || r.status != Status::Exited)
    {
        if args.quiet {
            println!("{}", short_id(&r.id));
            continue;
        }
        let status = match (r.status, r.exit_code) {
            (Status::Exited, Some(code)) => format!("Exited ({code})"),
            (Status::Exited, None) => "Exited".into(),
            (Status::Running, _) => "Up".into(),
            (Status::Created, _) => "Created".into(),
        };
        let mut command = r.command.join(" ");
        if command.len() > 24 {
            command.truncate(21);
            command.push_str("...");
        }
        println!(
            "{:<12}  {:<20}  {:<24}  {:<28}  {status}",
            short_id(&r.id),
            r.image,
            command,
            r.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
