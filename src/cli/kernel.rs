//! `mvrun kernel ...`: build the guest kernel and find it.

use clap::{Args, Subcommand, ValueEnum};
use mvrun::kernel::{self, BuildOptions, Variant};
use std::process::ExitCode;

/// Guest kernel commands.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel from Debian's linux-source-6.12 (several minutes; cached).
    ///
    /// The result is kept under $MVRUN_ROOT/kernels/<variant>-<hash>/ (vmlinux, bzImage, config, System.map,
    /// build.log), keyed by the hash of the source package version, the config fragments, the patches and the
    /// build script, so it is rebuilt only when one of those changes. Prints the vmlinux path of each variant.
    Build(BuildArgs),
    /// Print the path of the guest kernel (vmlinux, booted through PVH), building it first if it is missing.
    ///
    /// Without --variant, the variant this host needs: `emulated` on a nested paravirtual KVM host
    /// (/sys/module/kvm_pvm exists), `normal` everywhere else.
    Path(PathArgs),
}

/// Which variants `kernel build` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuildVariant {
    /// For hosts with hardware virtualization.
    Normal,
    /// For emulated-KVM hosts (kvm_pvm): with mvrun's emulator workarounds.
    Emulated,
    /// Both, in one build (the second reuses the first one's objects).
    All,
}

/// One variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VariantArg {
    /// For hosts with hardware virtualization.
    Normal,
    /// For emulated-KVM hosts (kvm_pvm): with mvrun's emulator workarounds.
    Emulated,
}

impl From<VariantArg> for Variant {
    fn from(v: VariantArg) -> Self {
        match v {
            VariantArg::Normal => Variant::Normal,
            VariantArg::Emulated => Variant::Emulated,
        }
    }
}

/// Arguments of `mvrun kernel build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Variant(s) to build [default: the one this host needs].
    #[arg(long, value_enum)]
    pub variant: Option<BuildVariant>,
    /// Rebuild even if the cache already holds the kernel.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `mvrun kernel path`.
#[derive(Debug, Args)]
pub struct PathArgs {
    /// Variant to print [default: the one this host needs].
    #[arg(long, value_enum)]
    pub variant: Option<VariantArg>,
    /// Print the bzImage's path instead of the vmlinux's.
    #[arg(long)]
    pub bzimage: bool,
}

/// Runs a `kernel` subcommand.
pub fn run(cmd: KernelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KernelCommand::Build(args) => build(args),
        KernelCommand::Path(args) => path(args),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let variants = match args.variant {
        None => vec![Variant::for_this_host()],
        Some(BuildVariant::Normal) => vec![Variant::Normal],
        Some(BuildVariant::Emulated) => vec![Variant::Emulated],
        Some(BuildVariant::All) => Variant::ALL.to_vec(),
    };
    let cached: Vec<bool> = variants
        .iter()
        .map(|v| !args.force && kernel::path_if_built(*v).is_some())
        .collect();
    let built = kernel::build(
        &variants,
        &BuildOptions {
            force: args.force,
            progress: true,
        },
    )?;
    for ((v, a), was_cached) in variants.iter().zip(&built).zip(cached) {
        let note = if was_cached { " (cached)" } else { "" };
        println!("{v}: {}{note}", a.vmlinux.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn path(args: PathArgs) -> anyhow::Result<ExitCode> {
    let variant = args
        .variant
        .map(Variant::from)
        .unwrap_or_else(Variant::for_this_host);
    let artifacts = kernel::ensure_built(variant, true)?;
    let path = if args.bzimage {
        artifacts.bzimage
    } else {
        artifacts.vmlinux
    };
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
