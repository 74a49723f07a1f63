//! `mvrun-vmm`: one sandbox's VMM and supervisor, started by `mvrun run` (not meant to be run by hand).
//! Usage: `mvrun-vmm --sandbox DIR --id ID`; the id on the command line lets mvrun tell this process from a
//! reused pid when it checks for stale sandboxes.

use mvrun::sandbox::{state::SandboxDir, supervisor};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let dir = match args.as_slice() {
        [_, flag, dir, id_flag, _id] if flag == "--sandbox" && id_flag == "--id" => dir.clone(),
        _ => {
            eprintln!("usage: mvrun-vmm --sandbox DIR --id ID (started by mvrun run)");
            return ExitCode::from(125);
        }
    };
    let filter = std::env::var("MVRUN_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_default())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    ExitCode::from(supervisor::supervise(&SandboxDir::at(dir.into())))
}
