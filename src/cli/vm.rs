//! `mvrun vm ...`: boot a kernel directly in mvrun's VMM, with the guest's serial console on stdout.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmm::{Payload, VmConfig, VmExit};

/// Low-level VM commands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a kernel in a microVM; the guest's serial console goes to stdout.
    ///
    /// Exits 0 when the guest resets (`reboot` with reboot=k) or shuts down; non-zero with a message on a timeout,
    /// a KVM internal error (with the guest RIP), or when /dev/kvm is missing or unusable.
    Boot(BootArgs),
}

/// Arguments of `mvrun vm boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Kernel image: an uncompressed ELF vmlinux (booted through PVH) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs to hand the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Replace the whole kernel command line (default: "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1").
    #[arg(long, value_name = "CMDLINE")]
    pub cmdline: Option<String>,
    /// Add words to the kernel command line.
    #[arg(long, value_name = "WORDS")]
    pub append: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Stop the VM after this many seconds (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// Print the VMM's own timings and memory to stderr when the VM ends.
    #[arg(long)]
    pub timings: bool,
    /// The VMM's seccomp filters: 2 system calls and arguments (the default), 1 system calls, 0 none (debugging).
    #[arg(long, value_name = "0|1|2", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub seccomp_level: u8,
    /// Check the configuration and build the whole VM (KVM, memory, kernel, devices, vCPUs), then exit without
    /// running it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs a `vm` subcommand.
pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Boot(args) => boot(args),
    }
}

fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let base = args.cmdline.as_deref().unwrap_or(vmm::DEFAULT_CMDLINE);
    let extra: Vec<&str> = args.append.iter().map(String::as_str).collect();
    let config = VmConfig {
        payload: Payload::Kernel {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: vmm::config::cmdline_with(base, &extra),
        },
        mem_mib: args.mem,
        vcpus: args.vcpus,
        seccomp: vmm::seccomp::SeccompLevel::try_from(args.seccomp_level)?,
        emulated_kvm: mvrun::kernel::Variant::for_this_host() == mvrun::kernel::Variant::Emulated,
        ..Default::default()
    };
    let vmm = vmm::build_vm(&config, Box::new(std::io::stdout()), start)
        .with_context(|| format!("cannot boot {}", args.kernel.display()))?;
    if args.dry_run {
        if args.timings {
            eprintln!(
                "mvrun: VMM setup (launch -> VM built): {:.3} ms",
                start.elapsed().as_secs_f64() * 1000.0
            );
            if let Some(kib) = vmm::rss_kib() {
                eprintln!("mvrun: VMM RSS before the guest ran: {kib} KiB");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    let vmm = if args.timings {
        vmm.measure_memory()
    } else {
        vmm
    };
    let outcome = vmm.run(timeout);
    if args.timings {
        print_timings(&outcome.timings, start.elapsed());
    }
    match outcome.exit {
        exit if exit.is_clean() => Ok(ExitCode::SUCCESS),
        _ if outcome.timed_out => {
            let rips: Vec<String> = outcome.stopped_rips.iter().map(|r| format!("{r:#x}")).collect();
            anyhow::bail!(
                "the guest did not end within {} s (stopped by --timeout; vCPU RIPs then: {}); on an emulated-KVM \
                 host a kernel boot takes tens of seconds",
                args.timeout,
                rips.join(", ")
            )
        }
        exit @ VmExit::InternalError { suberror: 1, .. } => anyhow::bail!(
            "{exit}.\nThis host's /dev/kvm cannot emulate an instruction the guest executed. On a nested paravirtual \
             KVM (kvm_pvm) use the `emulated` kernel variant: mvrun kernel path --variant emulated"
        ),
        exit => anyhow::bail!("{exit}"),
    }
}

fn print_timings(t: &vmm::Timings, total: Duration) {
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
    eprintln!("mvrun: VMM setup (launch -> VM built): {}", ms(t.setup));
    if let Some(d) = t.first_kvm_run {
        eprintln!("mvrun: launch -> first KVM_RUN: {}", ms(d));
    }
    if let Some(d) = t.boot_timer {
        eprintln!("mvrun: launch -> guest boot timer: {}", ms(d));
    }
    for (name, took) in &t.phases {
        eprintln!("mvrun: setup phase: {name}: {}", ms(*took));
    }
    if let (Some(insns), Some(exits)) = (t.emulated_instructions, t.exits) {
        eprintln!("mvrun: guest instructions emulated by KVM (to the VM's end): {insns}");
        eprintln!("mvrun: VM exits (to the VM's end): {exits}");
    }
    if let Some(kib) = t.rss_before_run_kib {
        eprintln!("mvrun: VMM RSS before the guest ran: {kib} KiB");
    }
    if let Some(guest) = t.guest_resident_kib {
        eprintln!("mvrun: guest memory resident then (with mapped payload pages): {guest} KiB");
    }
    if let Some(m) = t.vmm_memory {
        eprintln!("mvrun: VMM RSS excluding guest memory: {} KiB", m.rss_kib);
        eprintln!("mvrun: VMM PSS excluding guest memory: {} KiB", m.pss_kib);
        eprintln!(
            "mvrun: VMM private dirty memory excluding guest memory: {} KiB",
            m.private_dirty_kib
        );
    }
    eprintln!("mvrun: total: {}", ms(total));
}
