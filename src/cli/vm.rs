//! `mvrun vm ...`: boot a kernel directly in mvrun's VMM.

use clap::Subcommand;
use std::process::ExitCode;

/// Low-level VM commands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {}

/// Runs a `vm` subcommand.
pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
