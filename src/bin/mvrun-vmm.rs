//! `mvrun-vmm`: one sandbox's supervisor, started by `mvrun run` (not meant to be run by hand), and, re-executed
//! by it with `--vmm`, the sandbox's jailed VMM.
//! Usage: `mvrun-vmm --sandbox DIR --id ID [--vmm LAUNCHED_NS KEEPER_PID]`; the id on the command line lets mvrun
//! tell this process from a reused pid when it checks for stale sandboxes.

use mvrun::sandbox::{state::SandboxDir, supervisor, vmm_process};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (dir, vmm_mode) = match args.as_slice() {
        [_, flag, dir, id_flag, _id] if flag == "--sandbox" && id_flag == "--id" => {
            (dir.clone(), None)
        }
        [_, flag, dir, id_flag, _id, mode, launched, keeper]
            if flag == "--sandbox" && id_flag == "--id" && mode == vmm_process::VMM_MODE_ARG =>
        {
            match (launched.parse::<u64>(), keeper.parse::<u32>()) {
                (Ok(l), Ok(k)) => (dir.clone(), Some((l, k))),
                _ => return ExitCode::from(125),
            }
        }
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
    let dir = SandboxDir::at(dir.into());
    ExitCode::from(match vmm_mode {
        Some((launched, keeper)) => vmm_process::child_main(&dir, launched, keeper),
        None => supervisor::supervise(&dir),
    })
}
