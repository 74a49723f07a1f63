//! `mvrun images`: list the images in the local store.

use anyhow::Context;
use clap::Args;
use images::ImageStore;
use std::process::ExitCode;

/// Arguments of `mvrun images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only names.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mvrun images`.
pub fn run(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store =
        ImageStore::open(mvrun::paths::data_root()).context("failed to open the image store")?;
    let list = store.list()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if args.quiet {
        list.iter().for_each(|i| println!("{}", i.name));
    } else {
        println!(
            "{:<50} {:<14} {:>10} {:<22} ROOTFS",
            "NAME", "DIGEST", "SIZE", "CREATED"
        );
        for i in &list {
            let digest = i.digest.strip_prefix("sha256:").unwrap_or(&i.digest);
            let created = i
                .created
                .as_deref()
                .map(|c| c.chars().take(19).collect::<String>())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<50} {:<14} {:>10} {:<22} {}",
                i.name,
                &digest[..digest.len().min(12)],
                human(i.size),
                created,
                if i.rootfs.is_some() { "built" } else { "-" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// 1.2MB-style sizes, as docker prints them.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
