//! `mvrun check`: audit this host, an image and a run configuration against the container-hardening checklist.

use super::run::{to_options, RunFlags};
use clap::{Args, ValueEnum};
use mvrun::check::{self, Report};
use std::process::ExitCode;

/// Output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// One line per check.
    Text,
    /// A JSON document (schema_version 1).
    Json,
}

/// Arguments of `mvrun check`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when nothing FAILs (with --strict, nothing WARNs either), 1 otherwise, \
    125 when the audit itself cannot run. Each check is documented in docs/checks.md."
)]
pub struct CheckArgs {
    /// Also audit this image (pulled or built if missing).
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Treat warnings as failures.
    #[arg(long)]
    pub strict: bool,
    /// The run configuration to audit: the same flags as `mvrun run`.
    #[command(flatten)]
    pub run: RunFlags,
}

/// Runs `mvrun check`.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let image = args.image.clone().unwrap_or_else(|| "busybox".into());
    let options = to_options(args.run, image, Vec::new())?;
    let mut findings = check::host::check(&check::host::HostEnv::real());
    if let Some(name) = &args.image {
        let scratch = tempfile::tempdir()?;
        let facts = mvrun::check::image_facts(name, scratch.path())?;
        findings.extend(check::image::check(&facts));
    }
    findings.extend(check::run_config::check(&options));
    let report = Report::new(findings);
    match args.format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.failed(args.strict) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
