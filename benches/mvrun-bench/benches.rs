//! The benchmarks. Each returns its series, or a one-line reason it could not run here.

use crate::{Ctx, Series};
use mvrun::kernel::Variant;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Bench = fn(&Ctx) -> Result<Vec<Series>, String>;

/// Every benchmark, in the order they run.
pub const ALL: &[(&str, Bench)] = &[
    ("vmm-overhead", vmm_overhead),
    ("vmm-peer", vmm_peer),
    ("kernel-boot", crate::kernel_boot::kernel_boot),
    ("cold-start", cold_start),
    ("density", density),
    ("rootfs-format", crate::guest_io::rootfs_format),
    ("io", crate::guest_io::io),
];

pub(crate) fn series(
    bench: &str,
    subject: &str,
    metric: &str,
    unit: &str,
    hw: bool,
    values: Vec<f64>,
) -> Series {
    Series {
        bench: bench.into(),
        subject: subject.into(),
        metric: metric.into(),
        unit: unit.into(),
        carries_to_hardware: hw,
        values,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The instructions `mvrun ARGS EXTRA` executed in user space, in millions, counted by callgrind (`perf` cannot
/// count instructions on these machines): a figure the host's load does not move. `None` when callgrind printed no
/// total.
pub(crate) fn callgrind_instructions(
    ctx: &Ctx,
    args: &[&str],
    extra: &[&std::ffi::OsStr],
) -> Result<Option<f64>, String> {
    let cg = ctx.scratch.join("callgrind.out");
    let o = Command::new("valgrind")
        .args(["--tool=callgrind", "--trace-children=no"])
        .arg(format!("--callgrind-out-file={}", cg.display()))
        .arg(&ctx.mvrun)
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let _ = std::fs::remove_file(&cg);
    Ok(String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.contains("Collected :"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map(|n| n / 1e6))
}

pub(crate) fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn kernel(ctx: &Ctx) -> Result<PathBuf, String> {
    let out = Command::new(&ctx.mvrun)
        .args(["kernel", "path"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("mvrun kernel path: {e}"))?;
    if !out.status.success() {
        return Err("mvrun kernel path failed".into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A busybox root filesystem, like mvrun's built-in image.
pub(crate) fn busybox_rootfs(dir: &Path) -> Result<(), String> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| format!("/bin/busybox: {e}"))?;
    for applet in [
        "sh", "true", "echo", "cat", "sleep", "reboot", "mount", "dd", "printf",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    Ok(())
}

/// An initramfs whose /init prints `marker` and resets the machine.
fn marker_initramfs(ctx: &Ctx, marker: &str) -> Result<PathBuf, String> {
    busybox_initramfs(
        ctx,
        "marker-initramfs",
        &format!("#!/bin/sh\necho {marker}\n/bin/busybox reboot -f\n"),
    )
}

/// A busybox initramfs, `<scratch>/<name>.cpio`, whose /init is the shell script `init`.
pub(crate) fn busybox_initramfs(ctx: &Ctx, name: &str, init: &str) -> Result<PathBuf, String> {
    let root = ctx.scratch.join(format!("{name}-root"));
    busybox_rootfs(&root)?;
    let init_path = root.join("init");
    std::fs::write(&init_path, init).map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let out = ctx.scratch.join(format!("{name}.cpio"));
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            out.display()
        ))
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(out).ok_or_else(|| "cpio failed".into())
}

/// Runs `cmd` until a stdout line contains `marker`; returns the time to it and the process's PSS then (KiB),
/// then kills the command.
fn time_to_marker(
    mut cmd: Command,
    marker: &str,
    limit: Duration,
) -> Result<(Duration, Option<f64>), String> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let result = loop {
        match rx.recv_timeout(limit.saturating_sub(start.elapsed())) {
            Ok(line) if line.contains(marker) => {
                break Ok((start.elapsed(), rollup_kib(child.id(), "Pss:")))
            }
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("no marker within {limit:?}"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                break Err(format!(
                    "{:?} ended before the marker ({status})",
                    cmd.get_program()
                ));
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn vmm_peer(ctx: &Ctx) -> Result<Vec<Series>, String> {
    if !have("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 is not installed (Debian's qemu-system-x86)".into());
    }
    let kernel = kernel(ctx)?;
    let marker = "MVRUN-BENCH-INIT-MARKER";
    let initrd = marker_initramfs(ctx, marker)?;
    let limit = Duration::from_secs(600);
    let (mut qemu, mut ours) = (Vec::new(), Vec::new());
    let (mut qemu_pss, mut ours_pss) = (Vec::new(), Vec::new());
    for _ in 0..ctx.iterations(5) {
        let mut q = Command::new("qemu-system-x86_64");
        q.args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,isa-serial=on",
            "-enable-kvm",
            // Without arch-capabilities: the nested paravirtual KVM of emulated hosts refuses QEMU's write of
            // MSR 0x10a, and QEMU aborts ("failed to set MSR 0x10a"). Without ERMS/FSRM: the CPUID mvrun's VMM
            // gives an emulated-KVM guest (vmm::arch::cpuid::hide_from_emulator), so both boot the same guest.
            "-cpu",
            if Variant::for_this_host() == Variant::Emulated {
                "host,-arch-capabilities,-erms,-fsrm"
            } else {
                "host,-arch-capabilities"
            },
        ])
        .args([
            "-m",
            "128",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1"]);
        let (t, pss) = time_to_marker(q, marker, limit)?;
        qemu.push(ms(t));
        qemu_pss.extend(pss.map(|kib| kib / 1024.0));
        let mut m = Command::new(&ctx.mvrun);
        m.args(["vm", "boot", "--mem", "128", "--timeout", "600", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd);
        let (t, pss) = time_to_marker(m, marker, limit)?;
        ours.push(ms(t));
        ours_pss.extend(pss.map(|kib| kib / 1024.0));
    }
    Ok(vec![
        series(
            "vmm-peer",
            "QEMU microvm",
            "launch to init marker",
            "ms",
            false,
            qemu,
        ),
        series(
            "vmm-peer",
            "mvrun vm boot",
            "launch to init marker",
            "ms",
            false,
            ours,
        ),
        // The same guest at the same point in both: the difference is the VMMs' own memory.
        series(
            "vmm-peer",
            "QEMU microvm",
            "process PSS at init's marker, guest memory included",
            "MiB",
            true,
            qemu_pss,
        ),
        series(
            "vmm-peer",
            "mvrun vm boot",
            "process PSS at init's marker, guest memory included",
            "MiB",
            true,
            ours_pss,
        ),
    ])
}

/// Parses a `mvrun: <label>: <value> <unit>` line of `--timings` output.
pub(crate) fn timing(stderr: &str, label: &str) -> Option<f64> {
    stderr
        .lines()
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Setup phases from `--timings` output (`mvrun: setup phase: NAME: X ms`), in order.
fn setup_phases(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("mvrun: setup phase: "))
        .filter_map(|rest| {
            let (name, value) = rest.rsplit_once(": ")?;
            Some((
                name.to_string(),
                value.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn vmm_overhead(ctx: &Ctx) -> Result<Vec<Series>, String> {
    let kernel = kernel(ctx)?;
    let (mut setup, mut first_run) = (Vec::new(), Vec::new());
    let (mut rss, mut pss, mut private) = (Vec::new(), Vec::new(), Vec::new());
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..ctx.iterations(20) {
        let out = Command::new(&ctx.mvrun)
            .args([
                "vm",
                "boot",
                "--mem",
                "128",
                "--timeout",
                "1",
                "--timings",
                "--kernel",
            ])
            .arg(&kernel)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        setup.extend(timing(&err, "VMM setup"));
        first_run.extend(timing(&err, "first KVM_RUN"));
        let mib = |label| timing(&err, label).map(|kib| kib / 1024.0);
        rss.extend(mib("VMM RSS excluding guest memory"));
        pss.extend(mib("VMM PSS excluding guest memory"));
        private.extend(mib("VMM private dirty memory excluding guest memory"));
        for (name, ms) in setup_phases(&err) {
            match phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => phases.push((name, vec![ms])),
            }
        }
    }
    let mut out = vec![
        series(
            "vmm-overhead",
            "mvrun",
            "launch to VM built",
            "ms",
            true,
            setup,
        ),
        series(
            "vmm-overhead",
            "mvrun",
            "launch to first KVM_RUN",
            "ms",
            true,
            first_run,
        ),
        series(
            "vmm-overhead",
            "RSS",
            "VMM memory before the guest runs, guest memory excluded",
            "MiB",
            true,
            rss,
        ),
        series(
            "vmm-overhead",
            "PSS",
            "VMM memory before the guest runs, guest memory excluded",
            "MiB",
            true,
            pss,
        ),
        series(
            "vmm-overhead",
            "private dirty (this VMM alone)",
            "VMM memory before the guest runs, guest memory excluded",
            "MiB",
            true,
            private,
        ),
    ];
    out.extend(phases.into_iter().map(|(name, v)| {
        series(
            "vmm-overhead",
            &name,
            "VMM setup phases (launch to first KVM_RUN)",
            "ms",
            true,
            v,
        )
    }));
    if have("valgrind") {
        let mut instr = Vec::new();
        for _ in 0..ctx.iterations(3) {
            let args = ["vm", "boot", "--dry-run", "--mem", "128", "--kernel"];
            instr.extend(callgrind_instructions(ctx, &args, &[kernel.as_os_str()])?);
        }
        out.push(series(
            "vmm-overhead",
            "mvrun",
            "instructions to build the VM",
            "million",
            true,
            instr,
        ));
    }
    Ok(out)
}

fn cold_start(ctx: &Ctx) -> Result<Vec<Series>, String> {
    let n = ctx.iterations(5);
    let mut ours = Vec::new();
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    let mut vmm_mem: [Vec<f64>; 3] = Default::default();
    for _ in 0..n {
        let mut stderr = String::new();
        ours.push(timed_success("mvrun run", || {
            let o = Command::new(&ctx.mvrun)
                .args(["run", "--rm", "--timings", "busybox", "/bin/true"])
                .stdin(Stdio::null())
                .output();
            if let Ok(o) = &o {
                stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            }
            o
        })?);
        for (i, label) in [
            "VMM RSS excluding guest memory",
            "VMM PSS excluding guest memory",
            "VMM private dirty memory excluding guest memory",
        ]
        .iter()
        .enumerate()
        {
            vmm_mem[i].extend(timing(&stderr, label).map(|kib| kib / 1024.0));
        }
        for (name, ms) in run_phases(&stderr) {
            match phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => phases.push((name, vec![ms])),
            }
        }
    }
    let mut out = vec![series(
        "cold-start",
        "mvrun run",
        "wall time",
        "ms",
        false,
        ours,
    )];
    // The jailed VMM process of the product path (mvrun-vmm), as its guest starts.
    for (subject, values) in ["RSS", "PSS", "private dirty (this VMM alone)"]
        .into_iter()
        .zip(vmm_mem)
    {
        out.push(series(
            "cold-start",
            subject,
            "mvrun-vmm memory as the guest starts, guest memory excluded",
            "MiB",
            true,
            values,
        ));
    }
    out.extend(phases.into_iter().map(|(name, v)| {
        // The host's and the VMM's phases carry to a hardware-KVM host; the guest's do not.
        let guest_side = [
            "kernel boot",
            "guest boot",
            "container create",
            "workload run",
            "teardown",
        ];
        let hw = !guest_side.iter().any(|g| name.starts_with(g));
        series(
            "cold-start",
            &name,
            "mvrun run phases (--timings)",
            "ms",
            hw,
            v,
        )
    }));
    if have("runc") {
        let bundle = ctx.scratch.join("runc-bundle");
        busybox_rootfs(&bundle.join("rootfs"))?;
        let ok = Command::new("runc")
            .arg("spec")
            .current_dir(&bundle)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("runc spec failed".into());
        }
        let cfg_path = bundle.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
        cfg["process"]["terminal"] = serde_json::json!(false);
        std::fs::write(&cfg_path, cfg.to_string()).map_err(|e| e.to_string())?;
        let mut runc = Vec::new();
        for i in 0..n {
            let t = Instant::now();
            let s = Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("mvrun-bench-{}-{i}", std::process::id()))
                .stdin(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if s.success() {
                runc.push(ms(t.elapsed()));
            }
        }
        out.push(series(
            "cold-start",
            "runc run",
            "wall time",
            "ms",
            true,
            runc,
        ));
        if have("containerd") && have("ctr") {
            out.extend(ctr_peers(ctx, &bundle.join("rootfs"), n)?);
        }
    }
    Ok(out)
}

/// The phases `mvrun run --timings` prints (`mvrun: NAME   12.3 ms`), in order.
pub(crate) fn run_phases(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("mvrun: ")?.strip_suffix(" ms"))
        .filter_map(|rest| {
            let (name, value) = rest.trim_end().rsplit_once(' ')?;
            Some((name.trim().to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Milliseconds `run` took, or its stderr when it failed.
fn timed_success(
    what: &str,
    run: impl FnOnce() -> std::io::Result<std::process::Output>,
) -> Result<f64, String> {
    let t = Instant::now();
    let o = run().map_err(|e| format!("{what}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(ms(t.elapsed()))
}

/// `ctr run --rm --rootfs` of the same rootfs with runc, and with mvrun's shim when it is built next to mvrun.
fn ctr_peers(ctx: &Ctx, rootfs: &Path, n: usize) -> Result<Vec<Series>, String> {
    let bin_dir = ctx.mvrun.parent().unwrap_or(Path::new("/"));
    let containerd =
        crate::containerd::Containerd::start(&ctx.scratch.join("containerd"), bin_dir)?;
    let rootfs = rootfs.display().to_string();
    let mut runtimes = vec![("ctr run (runc)", "io.containerd.runc.v2")];
    if bin_dir.join("containerd-shim-mvrun-v2").is_file() {
        runtimes.push(("ctr run (mvrun shim)", crate::containerd::MVRUN_RUNTIME));
    } else {
        eprintln!("   containerd-shim-mvrun-v2 is not built next to mvrun: no ctr peer for mvrun");
    }
    let mut out = Vec::new();
    for (subject, runtime) in runtimes {
        let mut times = Vec::new();
        for i in 0..n {
            let id = format!("mvrun-bench-{}-{i}", std::process::id());
            times.push(timed_success(
                &format!("ctr run --runtime {runtime}"),
                || {
                    containerd.ctr(&[
                        "run",
                        "--rm",
                        "--runtime",
                        runtime,
                        "--rootfs",
                        &rootfs,
                        &id,
                        "/bin/true",
                    ])
                },
            )?);
        }
        out.push(series(
            "cold-start",
            subject,
            "wall time",
            "ms",
            runtime != crate::containerd::MVRUN_RUNTIME,
            times,
        ));
    }
    Ok(out)
}

/// A field (`Pss:`, `Rss:`) of a process's smaps_rollup, in KiB.
fn rollup_kib(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The processes of each sandbox named in `names`: its supervisor (`mvrun-vmm --sandbox DIR --id ID`) and its
/// VMM (the same, with `--vmm`), found by the ids `mvrun ps` lists for those names. Other sessions' sandboxes on
/// the same host are left out.
fn sandbox_pids(ctx: &Ctx, names: &[String]) -> Vec<(String, Vec<u32>)> {
    let ps = Command::new(&ctx.mvrun)
        .arg("ps")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ids: Vec<(String, String)> = ps
        .lines()
        .skip(1)
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let name = names.iter().find(|n| words.contains(&n.as_str()))?;
            Some((words.first()?.to_string(), name.clone()))
        })
        .collect();
    let procs: Vec<(u32, Vec<String>)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| {
                    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    let args: Vec<String> = raw
                        .split(|b| *b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    args.first()?.ends_with("mvrun-vmm").then_some((pid, args))
                })
                .collect()
        })
        .unwrap_or_default();
    ids.into_iter()
        .map(|(short, name)| {
            let pids = procs
                .iter()
                .filter(|(_, args)| {
                    args.windows(2)
                        .any(|w| w[0] == "--id" && w[1].starts_with(&short))
                })
                .map(|(pid, _)| *pid)
                .collect();
            (name, pids)
        })
        .collect()
}

/// What the host charges to the VMM cgroup (under mvrun's `/mvrun-vmm`) that `pid` is in, in KiB, kernel memory
/// (KVM's page tables, vCPU state) and page cache included: cgroup v2's memory.current, or the v1 memory
/// controller's memory.usage_in_bytes on hosts (like hybrid ones) where memory is a v1 controller. `None` for a
/// process elsewhere (the supervisor stays in its caller's cgroup).
fn cgroup_memory_kib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let bytes: f64 = cgroup_memory_files(&text)
        .into_iter()
        .filter_map(|file| std::fs::read_to_string(file).ok()?.trim().parse().ok())
        .next()?;
    Some(bytes / 1024.0)
}

/// The memory-charge files of the `/mvrun-vmm/...` cgroups named in a /proc/PID/cgroup text, v1 or v2.
fn cgroup_memory_files(proc_cgroup: &str) -> Vec<String> {
    proc_cgroup
        .lines()
        .filter_map(|line| {
            // `hierarchy-id:controllers:path`; v2's line has no controllers.
            let (_, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            if !path.starts_with("/mvrun-vmm/") {
                None
            } else if controllers.is_empty() {
                Some(format!("/sys/fs/cgroup{path}/memory.current"))
            } else if controllers.split(',').any(|c| c == "memory") {
                Some(format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"))
            } else {
                None
            }
        })
        .collect()
}

fn density(ctx: &Ctx) -> Result<Vec<Series>, String> {
    // N = 1, 2, 4, ... up to --max-n (and --max-n itself).
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|n| *n <= ctx.max_n)
        .collect();
    if sizes.last() != Some(&ctx.max_n) {
        sizes.push(ctx.max_n);
    }
    if ctx.quick {
        sizes.truncate(1);
    }
    let mut out: Vec<Series> = Vec::new();
    // Each N once, where a run of 8 emulated guests takes 20 minutes; `--runs` repeats each.
    for n in sizes {
        for _ in 0..ctx.iterations(1) {
            // A run that fails is noted and ends the benchmark; the runs measured before it are kept.
            match density_at(ctx, n) {
                Ok(runs) => {
                    for s in runs {
                        match out
                            .iter_mut()
                            .find(|o| o.subject == s.subject && o.metric == s.metric)
                        {
                            Some(o) => o.values.extend(s.values),
                            None => out.push(s),
                        }
                    }
                }
                Err(e) if !out.is_empty() => {
                    ctx.note(format!("`density` N = {n}: {e}"));
                    return Ok(out);
                }
                Err(e) => return Err(format!("N = {n}: {e}")),
            }
        }
    }
    Ok(out)
}

/// Sandboxes among `names` that have exited, with their exit reasons (`mvrun ps -a`).
fn exited(ctx: &Ctx, names: &[String]) -> Vec<String> {
    let ps = Command::new(&ctx.mvrun)
        .args(["ps", "-a"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ps.lines()
        .filter(|l| l.contains("Exited"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            names.iter().find(|n| words.contains(&n.as_str())).cloned()
        })
        .collect()
}

fn density_at(ctx: &Ctx, n: usize) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    let cores = num_cpus() as f64;
    {
        let tag = format!("bench-{}-{n}", std::process::id());
        let names: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        let remove = || {
            let _ = Command::new(&ctx.mvrun)
                .arg("rm")
                .arg("-f")
                .args(&names)
                .output();
        };
        let t = Instant::now();
        for name in &names {
            let o = Command::new(&ctx.mvrun)
                .args([
                    "run",
                    "-d",
                    "--name",
                    name,
                    "busybox",
                    "sh",
                    "-c",
                    "echo up; sleep 3600",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            if !o.status.success() {
                remove();
                return Err(format!(
                    "mvrun run -d failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(300 + 120 * n as u64);
        let all_up = |names: &[String]| {
            names.iter().all(|name| {
                Command::new(&ctx.mvrun)
                    .args(["logs", name])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("up"))
            })
        };
        while !all_up(&names) {
            let gone = exited(ctx, &names);
            if !gone.is_empty() {
                let why: Vec<String> = gone
                    .iter()
                    .map(|name| {
                        let log = Command::new(&ctx.mvrun)
                            .args(["logs", name])
                            .output()
                            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                            .unwrap_or_default();
                        format!("{name} exited before its workload was up ({log})")
                    })
                    .collect();
                remove();
                return Err(why.join("; "));
            }
            if Instant::now() > deadline {
                remove();
                return Err(format!("{n} sandboxes did not all start in time"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let elapsed = t.elapsed().as_secs_f64();
        // Idle: let the guests settle after their workload started.
        std::thread::sleep(Duration::from_secs(if ctx.quick { 1 } else { 5 }));
        let (mut pss, mut rss, mut cgroup) = (Vec::new(), Vec::new(), Vec::new());
        for (name, pids) in sandbox_pids(ctx, &names) {
            if pids.len() < 2 {
                remove();
                return Err(format!(
                    "sandbox {name}: expected its supervisor and VMM processes, found {pids:?}"
                ));
            }
            let sum = |field| {
                pids.iter()
                    .filter_map(|p| rollup_kib(*p, field))
                    .sum::<f64>()
            };
            pss.push(sum("Pss:") / 1024.0);
            rss.push(sum("Rss:") / 1024.0);
            // The VMM's own cgroup (the supervisor stays in the caller's).
            cgroup.extend(
                pids.iter()
                    .find_map(|p| cgroup_memory_kib(*p))
                    .map(|kib| kib / 1024.0),
            );
        }
        remove();
        if pss.len() != n {
            return Err(format!(
                "found the processes of {} of {n} sandboxes",
                pss.len()
            ));
        }
        let subject = format!("N = {n}");
        let mem = |metric: &str, values| series("density", &subject, metric, "MiB", false, values);
        out.push(mem(
            "host memory per idle sandbox: PSS of supervisor + VMM, guest memory included",
            pss,
        ));
        out.push(mem(
            "host memory per idle sandbox: RSS of supervisor + VMM, guest memory included",
            rss,
        ));
        if !cgroup.is_empty() {
            out.push(mem(
                "host memory per idle sandbox: the VMM cgroup's charge (memory.current, or v1 usage_in_bytes)",
                cgroup,
            ));
        }
        out.push(series(
            "density",
            &subject,
            "start throughput (launch to all workloads up)",
            "sandboxes/s/core",
            false,
            vec![n as f64 / elapsed / cores],
        ));
    }
    Ok(out)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_timing_formats() {
        // `mvrun run --timings` (padded name, value, unit) and `mvrun vm boot --timings` (`NAME: value unit`).
        let run = "mvrun: guest boot to agent                  46812.0 ms\n\
                   mvrun:   VMM: KVM memory slot                    6.9 ms\n\
                   mvrun: container create                     17500.5 ms\n\
                   mvrun: VMM RSS excluding guest memory: 5836 KiB\n";
        let phases = run_phases(run);
        assert_eq!(phases[0], ("guest boot to agent".to_string(), 46812.0));
        assert_eq!(phases[1], ("VMM: KVM memory slot".to_string(), 6.9));
        assert_eq!(phases[2], ("container create".to_string(), 17500.5));
        assert_eq!(phases.len(), 3);
        assert_eq!(timing(run, "VMM RSS excluding guest memory"), Some(5836.0));
        assert_eq!(
            setup_phases("mvrun: setup phase: vCPU creation: 0.54 ms\n"),
            vec![("vCPU creation".to_string(), 0.54)]
        );
    }

    #[test]
    fn finds_the_vmm_cgroup_on_v1_and_v2_hosts() {
        let hybrid = "4:memory:/mvrun-vmm/abc\n3:cpu,cpuacct:/mvrun-vmm/abc\n0::/\n";
        assert_eq!(
            cgroup_memory_files(hybrid),
            ["/sys/fs/cgroup/memory/mvrun-vmm/abc/memory.usage_in_bytes"]
        );
        assert_eq!(
            cgroup_memory_files("0::/mvrun-vmm/abc\n"),
            ["/sys/fs/cgroup/mvrun-vmm/abc/memory.current"]
        );
        assert!(cgroup_memory_files("4:memory:/user.slice\n0::/user.slice\n").is_empty());
    }
}
