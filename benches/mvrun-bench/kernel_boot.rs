//! `kernel-boot`: the guest kernel's own boot, issue 6's figures. `mvrun vm boot` of the kernel this host gets
//! (`mvrun kernel path`: the `emulated` variant on emulated-KVM hosts) with a busybox initramfs whose /init
//! prints the guest's uptime, writes the boot-timer byte and resets: launch to the boot timer (wall clock), the
//! kernel's clock at "Run /init" and at init's first line, and, load-independent, the guest instructions KVM
//! emulated and the VMM's CPU time. These are the guest's figures: none carries to a hardware-KVM host, where the
//! same boot takes milliseconds. The one VMM-side figure, which does: the VMM's user-space instructions over the
//! whole boot, under callgrind.

use crate::benches::{busybox_initramfs, callgrind_instructions, have, kernel, series, timing};
use crate::{Ctx, Series};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What init prints first, with the guest's uptime after it.
const MARKER: &str = "MVRUN-KERNEL-BOOT up";
/// Guest memory: Firecracker's default; the kernel's early memory set-up grows with it.
const MEM_MIB: &str = "128";

/// An initramfs whose /init prints [`MARKER`] and the uptime, writes the boot timer and resets the machine.
fn timer_initramfs(ctx: &Ctx) -> Result<PathBuf, String> {
    // 0xd0000000 is the boot timer's MMIO page (vmm::arch::layout); 123 its magic byte.
    busybox_initramfs(
        ctx,
        "kernel-boot",
        &format!(
            "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\nread up idle </proc/uptime\necho \"{MARKER} $up\"\n\
             /bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox devmem 0xd0000000 8 123\n/bin/busybox reboot -f\n"
        ),
    )
}

/// CPU time (user + system) of this process's reaped children so far, in seconds.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage writes one struct rusage into the zeroed value we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// The kernel's timestamp on the console line containing `what` (`printk.time=1`: "[   24.369451] ...").
fn kernel_clock_at(console: &str, what: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(what))?;
    let inner = line.trim_start().strip_prefix('[')?.split(']').next()?;
    inner.trim().parse().ok()
}

pub(crate) fn kernel_boot(ctx: &Ctx) -> Result<Vec<Series>, String> {
    let kernel = kernel(ctx)?;
    let initrd = timer_initramfs(ctx)?;
    let (mut timer, mut run_init, mut first_line, mut insns, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut exits = Vec::new();
    for _ in 0..ctx.iterations(3) {
        let before = children_cpu_s();
        let out = Command::new(&ctx.mvrun)
            .args([
                "vm",
                "boot",
                "--mem",
                MEM_MIB,
                "--timeout",
                "900",
                "--timings",
            ])
            .args(["--append", "printk.time=1", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mvrun vm boot: {e}"))?;
        cpu.push(children_cpu_s() - before);
        let console = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            return Err(format!("mvrun vm boot failed: {}", tail.join(" / ")));
        }
        timer.push(timing(&stderr, "launch -> guest boot timer").ok_or("no boot-timer figure")?);
        run_init.push(kernel_clock_at(&console, "Run /init").ok_or("no 'Run /init' line")?);
        let up = console
            .lines()
            .find_map(|l| l.split(MARKER).nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or("init's marker line is missing")?;
        first_line.push(up);
        if let Some(n) = timing(
            &stderr,
            "guest instructions emulated by KVM (to the VM's end)",
        ) {
            insns.push(n / 1e6);
        }
        exits.extend(timing(&stderr, "VM exits (to the VM's end)").map(|n| n / 1e3));
    }
    let subject = format!("vm boot, {MEM_MIB} MiB, {}", kernel.display());
    let mut out = vec![
        series(
            "kernel-boot",
            &subject,
            "launch to init (boot timer)",
            "ms",
            false,
            timer,
        ),
        series(
            "kernel-boot",
            &subject,
            "kernel clock at Run /init",
            "s",
            false,
            run_init,
        ),
        series(
            "kernel-boot",
            &subject,
            "guest uptime at init's first line",
            "s",
            false,
            first_line,
        ),
        series(
            "kernel-boot",
            &subject,
            "VMM CPU time, launch to reset",
            "s",
            false,
            cpu,
        ),
    ];
    if !insns.is_empty() {
        out.push(series(
            "kernel-boot",
            &subject,
            "guest instructions emulated by KVM, launch to reset",
            "M",
            false,
            insns,
        ));
    }
    if !exits.is_empty() {
        // What the VMM's instructions below are spent on: each exit is handled in the VMM (or in KVM, for the
        // in-kernel irqchip and timers).
        out.push(series(
            "kernel-boot",
            &subject,
            "VM exits, launch to reset",
            "thousand",
            false,
            exits,
        ));
    }
    // The VMM's own work over the whole boot (the exits it handles in user space: console, boot timer, devices),
    // counted by callgrind. The same guest makes the same exits on a hardware-KVM host, so this one carries. One
    // run: the count barely moves between runs, and each is a boot under callgrind.
    if have("valgrind") && !ctx.quick {
        let args = [
            "vm",
            "boot",
            // Valgrind does not implement seccomp(2); the filters run in the host kernel, not in these counts.
            "--seccomp-level",
            "0",
            "--mem",
            MEM_MIB,
            "--timeout",
            "900",
            "--append",
            "printk.time=1",
            "--kernel",
        ];
        let n = callgrind_instructions(
            ctx,
            &args,
            &[kernel.as_os_str(), "--initrd".as_ref(), initrd.as_os_str()],
        )?;
        out.push(series(
            "kernel-boot",
            &subject,
            "VMM user-space instructions, launch to reset (callgrind)",
            "M",
            true,
            n.into_iter().collect(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_clock_of_a_console_line() {
        let console =
            "[    0.000000] Linux version 6.12\n[   24.369451] Run /init as init process\n";
        assert_eq!(kernel_clock_at(console, "Run /init"), Some(24.369451));
        assert_eq!(kernel_clock_at(console, "missing"), None);
        assert_eq!(
            kernel_clock_at("Run /init without a clock", "Run /init"),
            None
        );
    }
}
