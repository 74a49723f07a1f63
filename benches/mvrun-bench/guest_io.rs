//! Benchmarks of work inside the guest: the rootfs filesystem's mount and first-exec cost (erofs vs ext4), and
//! I/O (a sequential read from the rootfs device, stdout streamed through vsock) inside the guest vs the same work
//! on the host. Every guest figure here is dominated by this host's emulated guest when /dev/kvm is emulated.

use crate::benches::{busybox_rootfs, run_phases, series};
use crate::{Ctx, Series};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one detached guest may take here (emulated boots take minutes under load).
const GUEST_LIMIT: Duration = Duration::from_secs(1200);

/// What a finished detached sandbox left: its console and supervisor logs.
struct Finished {
    console: String,
    supervisor: String,
}

/// Runs `mvrun run -d --timings ARGS...` with `env`, waits for the sandbox to exit, reads its logs, removes it.
fn run_detached(ctx: &Ctx, env: &[(&str, &str)], args: &[&str]) -> Result<Finished, String> {
    let out = Command::new(&ctx.mvrun)
        .args(["run", "-d", "--timings"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mvrun run -d: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mvrun run -d failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = run_dir().join(&id);
    let start = Instant::now();
    let exited = loop {
        let state: serde_json::Value = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if state["status"] == "exited" {
            break Ok(state);
        }
        if start.elapsed() > GUEST_LIMIT {
            break Err(format!("sandbox {id} still running after {GUEST_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The record says "exited" before the supervisor prints its timings and leaves: wait for the process.
    if let Some(pid) = exited.as_ref().ok().and_then(|s| s["pid"].as_i64()) {
        let gone = Instant::now();
        // SAFETY: signal 0 only asks whether the pid exists.
        while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
            && gone.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let finished = Finished {
        console: read("console.log"),
        supervisor: read("supervisor.log"),
    };
    let _ = Command::new(&ctx.mvrun)
        .args(["rm", "-f", &id])
        .stdout(Stdio::null())
        .status();
    let state = exited?;
    if state["exit_code"] != 0 {
        return Err(format!(
            "the workload failed ({}): {}",
            state["exit_code"],
            finished.supervisor.trim()
        ));
    }
    Ok(finished)
}

fn run_dir() -> PathBuf {
    std::env::var_os("MVRUN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/mvrun"))
}

/// `elapsed_us=N` of guest-init's "rootfs mounted" line on the console, in ms.
fn guest_mount_ms(console: &str) -> Option<f64> {
    strip_ansi(console.lines().find(|l| l.contains("rootfs mounted"))?)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_us="))?
        .parse::<f64>()
        .ok()
        .map(|us| us / 1000.0)
}

/// `line` without terminal colour sequences (ESC [ ... letter), which older guest-inits wrote to the console.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// erofs vs ext4 for the rootfs block image: the guest's mount time, and the first exec from the fresh rootfs
/// (container create + running `true`, from `--timings`).
pub fn rootfs_format(ctx: &Ctx) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    for format in ["erofs", "ext4"] {
        let (mut mount, mut create, mut run) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ctx.iterations(3) {
            let f = run_detached(
                ctx,
                &[("MVRUN_ROOTFS_FORMAT", format), ("MVRUN_GUEST_LOG", "info")],
                &["busybox", "true"],
            )?;
            mount.push(guest_mount_ms(&f.console).ok_or_else(|| {
                format!("no \"rootfs mounted\" line in the {format} guest's console")
            })?);
            // `--timings` prints the supervisor's phases as `mvrun: NAME   X ms` to its log.
            let phases = run_phases(&f.supervisor);
            for (name, into) in [
                ("container create", &mut create),
                ("workload run", &mut run),
            ] {
                let (_, ms) = phases.iter().find(|(n, _)| n == name).ok_or_else(|| {
                    format!("no \"{name}\" phase in the {format} sandbox's supervisor.log")
                })?;
                into.push(*ms);
            }
        }
        let name = format!("{format} rootfs");
        out.push(series(
            "rootfs-format",
            &name,
            "guest mount",
            "ms",
            false,
            mount,
        ));
        out.push(series(
            "rootfs-format",
            &name,
            "container create",
            "ms",
            false,
            create,
        ));
        out.push(series(
            "rootfs-format",
            &name,
            "first exec (true)",
            "ms",
            false,
            run,
        ));
    }
    Ok(out)
}

/// An image `mvrun-bench/io:1` with a `size`-byte random file at /data/blob, imported from a `docker save`
/// archive the bench writes (so the blob is read through the guest's rootfs device). Returns the blob's host copy.
fn io_image(ctx: &Ctx, size: usize) -> Result<PathBuf, String> {
    let root = ctx.scratch.join("io-root");
    busybox_rootfs(&root)?;
    std::fs::create_dir_all(root.join("data")).map_err(|e| e.to_string())?;
    let blob = root.join("data/blob");
    let mut bytes = vec![0u8; size];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for chunk in bytes.chunks_mut(8) {
        // xorshift: incompressible filler without a dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&blob, &bytes).map_err(|e| e.to_string())?;
    let archive = ctx.scratch.join("io-archive");
    std::fs::create_dir_all(&archive).map_err(|e| e.to_string())?;
    sh(&format!(
        "tar -C {root} -cf {a}/layer.tar . && sha256sum {a}/layer.tar | cut -d' ' -f1",
        root = root.display(),
        a = archive.display()
    ))
    .and_then(|diff_id| {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", diff_id.trim())]},
        });
        std::fs::write(archive.join("config.json"), config.to_string())
            .map_err(|e| e.to_string())?;
        let manifest = serde_json::json!([{
            "Config": "config.json", "RepoTags": ["mvrun-bench/io:1"], "Layers": ["layer.tar"],
        }]);
        std::fs::write(archive.join("manifest.json"), manifest.to_string())
            .map_err(|e| e.to_string())?;
        sh(&format!(
            "tar -C {a} -cf {a}.tar manifest.json config.json layer.tar",
            a = archive.display()
        ))
    })?;
    let ok = Command::new(&ctx.mvrun)
        .args(["image", "import", "--name", "mvrun-bench/io:1"])
        .arg(archive.with_extension("tar"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(blob)
        .ok_or_else(|| "mvrun image import of the I/O image failed".into())
}

fn sh(script: &str) -> Result<String, String> {
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// MB/s from coreutils dd's summary line ("N bytes (...) copied, S seconds, ...").
fn dd_rate(stderr: &str) -> Option<f64> {
    let line = stderr.lines().find(|l| l.contains("copied"))?;
    let bytes: f64 = line.split_whitespace().next()?.parse().ok()?;
    let secs: f64 = line
        .split("copied, ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    (secs > 0.0).then(|| bytes / secs / 1e6)
}

/// Seconds between the two /proc/uptime readings of a `read A B` line.
fn uptime_span(stderr: &str) -> Option<f64> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("read "))?;
    let mut it = line.split_whitespace().map(|w| w.parse::<f64>());
    let (a, b) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(b - a)
}

/// Bytes of `child`'s stdout and the MB/s from its first byte to EOF.
fn stream_rate(mut child: std::process::Child) -> Result<(usize, f64), String> {
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut first) = (0usize, None);
    loop {
        let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("streaming command failed: {status}"));
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((
        total,
        if secs > 0.0 {
            total as f64 / secs / 1e6
        } else {
            0.0
        },
    ))
}

/// Sequential read from the rootfs device and stdout streaming through vsock, in the guest vs on the host.
pub fn io(ctx: &Ctx) -> Result<Vec<Series>, String> {
    // Where each guest instruction is emulated, every copy of a byte in the guest costs microseconds (the page
    // cache copy, the pipe, the vsock packet): 16 MiB ran for more than 20 minutes there, so a smaller file gives
    // the same rate in minutes.
    let emulated = mvrun::kernel::Variant::for_this_host() == mvrun::kernel::Variant::Emulated;
    let size = match (ctx.quick, emulated) {
        (_, true) => 1 << 20,
        (true, false) => 2 << 20,
        (false, false) => 16 << 20,
    };
    let blob = io_image(ctx, size)?;
    let (mut g_read, mut g_stream, mut h_read, mut h_stream) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.iterations(3) {
        // One boot: the first dd reads the cold file through virtio-blk (its summary on stderr), the second
        // streams it from the guest's page cache to stdout, so the vsock stream is what is measured.
        let mut child = Command::new(&ctx.mvrun)
            .args(["run", "--rm", "mvrun-bench/io:1", "sh", "-c"])
            // busybox dd prints no rate, so the guest's own clock times the read.
            .arg(
                "read a _ </proc/uptime; dd if=/data/blob of=/dev/null bs=1M 2>/dev/null; \
                 read b _ </proc/uptime; echo \"read $a $b\" >&2; dd if=/data/blob bs=64k 2>/dev/null",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (bytes, rate) = stream_rate(child)?;
        let err = err_reader.join().unwrap_or_default();
        if bytes != size {
            return Err(format!(
                "guest streamed {bytes} bytes, expected {size}: {}",
                err.trim()
            ));
        }
        g_stream.push(rate);
        let secs = uptime_span(&err)
            .ok_or_else(|| format!("no read timing from the guest: {}", err.trim()))?;
        g_read.push(size as f64 / secs.max(0.01) / 1e6);

        // The host, the same work: a cold read (page cache dropped), then a stream through a pipe.
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        let o = Command::new("dd")
            .arg(format!("if={}", blob.display()))
            .args(["of=/dev/null", "bs=1M"])
            .output()
            .map_err(|e| e.to_string())?;
        h_read.extend(dd_rate(&String::from_utf8_lossy(&o.stderr)));
        let child = Command::new("dd")
            .arg(format!("if={}", blob.display()))
            .args(["bs=64k", "status=none"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        h_stream.push(stream_rate(child)?.1);
    }
    Ok(vec![
        series("io", "host", "sequential read (cold)", "MB/s", true, h_read),
        series(
            "io",
            "guest",
            "sequential read (cold)",
            "MB/s",
            false,
            g_read,
        ),
        // One metric name for both, so the summary pairs them (ratio to the host's pipe).
        series("io", "host (pipe)", "stdout stream", "MB/s", true, h_stream),
        series(
            "io",
            "guest (vsock)",
            "stdout stream",
            "MB/s",
            false,
            g_stream,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dd_summaries_and_guest_mount_lines() {
        assert_eq!(uptime_span("x\nread 10.50 12.00\n"), Some(1.5));
        let coreutils = "16777216 bytes (17 MB, 16 MiB) copied, 0.5 s, 33.6 MB/s";
        assert_eq!(dd_rate(coreutils), Some(16777216.0 / 0.5 / 1e6));
        let line = "2026-11-25T12:00:00Z  INFO guest_init::pid1: rootfs mounted fstype=\"erofs\" elapsed_us=1500";
        assert_eq!(guest_mount_ms(line), Some(1.5));
        assert_eq!(guest_mount_ms("nothing"), None);
        let coloured =
            "\x1b[2m...\x1b[0m rootfs mounted \x1b[3melapsed_us\x1b[0m\x1b[2m=\x1b[0m2500";
        assert_eq!(guest_mount_ms(coloured), Some(2.5));
    }
}
