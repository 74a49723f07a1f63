//! `mvrun image inspect|rm|prune|import|rootfs`: manage the local image store.

use anyhow::Context;
use clap::{Args, Subcommand};
use images::{ImageStore, RootfsFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// `mvrun image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Print an image's manifest and config as JSON.
    Inspect(InspectArgs),
    /// Remove image names (blobs stay until `prune`).
    Rm(RmArgs),
    /// Delete blobs and rootfs images no image name references.
    Prune,
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import(ImportArgs),
    /// Build (once) the image's rootfs block image and print its path.
    Rootfs(RootfsArgs),
}

/// Arguments of `mvrun image inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image name.
    pub name: String,
}

/// Arguments of `mvrun image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Image names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `mvrun image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// OCI layout directory, OCI layout tar, or `docker save` tar (optionally gzip/zstd compressed).
    pub path: PathBuf,
    /// Name to store it under (e.g. myapp:1.0).
    #[arg(long)]
    pub name: String,
}

/// Arguments of `mvrun image rootfs`.
#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// Image name.
    pub name: String,
    /// Block image format.
    #[arg(long, default_value = "erofs")]
    pub format: RootfsFormat,
}

/// Runs `mvrun image ...`.
pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let store =
        ImageStore::open(mvrun::paths::data_root()).context("failed to open the image store")?;
    match cmd {
        ImageCommand::Inspect(a) => {
            let image = store
                .lookup(&a.name)?
                .ok_or_else(|| images::Error::NotFound(a.name.clone()))?;
            let out = serde_json::json!({
                "name": image.name(),
                "digest": image.digest().as_str(),
                "origin": image.origin(),
                "manifest": image.manifest(),
                "config": image.config(),
                "rootfs": store.rootfs_if_built(&image),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm(a) => {
            for name in &a.names {
                let image = store.remove(name)?;
                println!("untagged {name} ({})", image.digest());
            }
        }
        ImageCommand::Prune => {
            let r = store.prune()?;
            println!(
                "removed {} blobs and {} rootfs images, {} freed",
                r.blobs,
                r.rootfs_images,
                super::images::human(r.bytes)
            );
        }
        ImageCommand::Import(a) => {
            let image = store.import(&a.path, &a.name)?;
            println!("{} {}", image.name().unwrap_or(&a.name), image.digest());
        }
        ImageCommand::Rootfs(a) => {
            let store = store.with_rootfs_format(a.format);
            let image = store.resolve_or_pull(&a.name, &images::PullOptions::new())?;
            println!("{}", store.rootfs_image(&image)?.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
