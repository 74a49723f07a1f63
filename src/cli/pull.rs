//! `mvrun pull NAME[:TAG|@DIGEST]`: fetch an image from its registry into the local store.

use anyhow::{bail, Context};
use clap::Args;
use images::{ConsoleProgress, ImageStore, PullOptions};
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `mvrun pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference (busybox, registry.example:5000/app:1.0, name@sha256:...).
    pub image: String,
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Print only the digest, no progress.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Registry access flags, shared with other subcommands that may pull.
#[derive(Debug, Args)]
pub struct RegistryFlags {
    /// Talk plain HTTP to the registry (always done for localhost and 127.0.0.1).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name (over ~/.docker/config.json).
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the registry password from stdin (with --username).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

impl RegistryFlags {
    /// The pull options these flags ask for; progress on stderr unless `quiet`.
    pub fn options(&self, quiet: bool) -> anyhow::Result<PullOptions> {
        let mut opts = PullOptions::new().with_insecure(self.insecure);
        if !quiet {
            opts = opts.with_progress(Arc::new(ConsoleProgress::auto()));
        }
        if let Some(user) = &self.username {
            if !self.password_stdin {
                bail!("--username needs --password-stdin (passwords are not taken on the command line)");
            }
            let mut password = String::new();
            std::io::stdin()
                .take(64 << 10)
                .read_to_string(&mut password)
                .context("failed to read the password from stdin")?;
            opts = opts.with_credentials(
                user.clone(),
                password.trim_end_matches(['\r', '\n']).to_string(),
            );
        }
        Ok(opts)
    }
}

/// Runs `mvrun pull`.
pub fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    let store =
        ImageStore::open(mvrun::paths::data_root()).context("failed to open the image store")?;
    let opts = args.registry.options(args.quiet)?;
    let image = store.pull(&args.image, &opts)?;
    println!("{}", image.digest());
    Ok(ExitCode::SUCCESS)
}
