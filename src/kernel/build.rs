//! Runs the embedded `kernels/build.sh` and installs its results in the cache, atomically and under a lock.
//!
//! Layout under `$MVRUN_ROOT/kernels/`: `<variant>-<hash>/` (finished kernels), `.lock-<hash>` (held while one
//! process builds for these inputs), `.build-<hash>-<pid>/` (a build in progress: inputs, unpacked source, outputs),
//! `logs/build-<hash>.log` (the last build's full output; a copy stays next to each finished kernel), `ccache/`
//! (compiler cache shared by all builds, used when ccache is installed).

use super::progress::Progress;
use super::{cache_dir, config, inputs, kernels_dir, Error, KernelArtifacts, Result, Variant};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Rebuild even if the cache holds the kernel.
    pub force: bool,
    /// Show progress on stderr.
    pub progress: bool,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Builds `variants` (those not cached yet, or all of them with `force`) in one run of the build script, which
/// compiles the first and rebuilds only what differs for the next. Returns the artifacts in the order asked.
pub fn build(variants: &[Variant], options: &BuildOptions) -> Result<Vec<KernelArtifacts>> {
    let mut variants = variants.to_vec();
    variants.sort();
    variants.dedup();
    let tarball = inputs::source_tarball();
    let hash = inputs::inputs_hash()?;
    let root = kernels_dir();
    std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
    let artifacts = |v: Variant| KernelArtifacts::in_dir(&cache_dir(v, &hash));

    let todo = |force: bool| -> Vec<Variant> {
        variants
            .iter()
            .copied()
            .filter(|v| force || !artifacts(*v).complete())
            .collect()
    };
    if todo(options.force).is_empty() {
        return Ok(variants.iter().map(|v| artifacts(*v)).collect());
    }

    let mut progress = Progress::new(options.progress);
    let lock_path = root.join(format!(".lock-{hash}"));
    let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        progress.note("another mvrun is building this kernel; waiting for it");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                action: "lock",
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
    }
    // Under the lock: another process may have finished these meanwhile, and any leftover build directory for these
    // inputs belongs to a process that died.
    let todo = todo(options.force);
    if !todo.is_empty() {
        remove_stale_builds(&root, &hash);
        let result = run_build(&todo, &hash, &tarball, &mut progress);
        progress.finish();
        result?;
    }
    drop(lock);
    Ok(variants.iter().map(|v| artifacts(*v)).collect())
}

/// Removes build directories left by processes that died: those for `hash` (we hold its lock) and any whose
/// process is gone.
fn remove_stale_builds(root: &Path, hash: &str) {
    let prefix = format!(".build-{hash}-");
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".build-") else {
            continue;
        };
        let owner_gone = rest
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if name.starts_with(&prefix) || owner_gone {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale kernel build");
            }
        }
    }
}

fn run_build(
    variants: &[Variant],
    hash: &str,
    tarball: &Path,
    progress: &mut Progress,
) -> Result<()> {
    let root = kernels_dir();
    let names = variants
        .iter()
        .map(|v| v.name())
        .collect::<Vec<_>>()
        .join(" and ");
    if !tarball.is_file() {
        return Err(Error::SourceMissing {
            path: tarball.to_path_buf(),
        });
    }
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).map_err(io_err("create", &logs))?;
    let log_path = logs.join(format!("build-{hash}.log"));
    let build_dir = root.join(format!(".build-{hash}-{}", std::process::id()));
    let result =
        build_in(variants, &build_dir, &log_path, tarball, progress, &names).and_then(|built| {
            let outputs = built.map_err(|reason| Error::BuildFailed {
                variants: names.clone(),
                reason,
                log: log_path.clone(),
            })?;
            // Installed from inside the build directory, before it is removed below.
            for (variant, out) in variants.iter().zip(outputs) {
                install(&out, &cache_dir(*variant, hash), &log_path)?;
            }
            Ok(())
        });
    // The unpacked source is over a GiB: never leave it behind, whatever happened.
    if let Err(e) = std::fs::remove_dir_all(&build_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %build_dir.display(), error = %e, "cannot remove the kernel build directory");
        }
    }
    result
}

/// Runs the script; the outer error is mvrun's own, the inner one the build's (with the reason).
fn build_in(
    variants: &[Variant],
    build_dir: &Path,
    log_path: &Path,
    tarball: &Path,
    progress: &mut Progress,
    names: &str,
) -> Result<std::result::Result<Vec<PathBuf>, String>> {
    let inputs_dir = build_dir.join("inputs");
    let work = build_dir.join("work");
    inputs::write_to(&inputs_dir)?;
    std::fs::create_dir_all(&work).map_err(io_err("create", &work))?;
    let outputs: Vec<PathBuf> = variants
        .iter()
        .map(|v| build_dir.join(format!("out-{v}")))
        .collect();

    let mut log = File::create(log_path).map_err(io_err("create", log_path))?;
    let started = Instant::now();
    tracing::info!(variants = names, log = %log_path.display(), "building the guest kernel");
    progress.note(&format!(
        "building the {names} kernel (several minutes); log: {}",
        log_path.display()
    ));

    let mut cmd = Command::new("bash");
    cmd.arg(inputs_dir.join("build.sh"));
    for (v, out) in variants.iter().zip(&outputs) {
        cmd.arg(v.name()).arg(out);
    }
    let mut child = cmd
        .env("MVRUN_KERNEL_SOURCE", tarball)
        .env("MVRUN_KERNEL_WORKDIR", &work)
        // Shared by every build, so a change to one patch recompiles only what it touches.
        .env("MVRUN_KERNEL_CCACHE_DIR", kernels_dir().join("ccache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;

    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);

    // The script's own error and missing-option lines make the error message; the log keeps everything.
    let mut reasons = Vec::new();
    let mut log_ok = true;
    for line in rx {
        if log_ok && writeln!(log, "{line}").is_err() {
            log_ok = false;
        }
        if let Some(r) = line
            .strip_prefix("mvrun-kernel: error: ")
            .or_else(|| line.strip_prefix("mvrun-kernel: missing option: "))
        {
            if reasons.len() < 20 {
                reasons.push(r.to_string());
            }
        }
        progress.line(&line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(io_err("wait for", Path::new("build.sh")))?;
    if !status.success() {
        let reason = if reasons.is_empty() {
            format!("build.sh {status}")
        } else {
            reasons.join("; ")
        };
        return Ok(Err(reason));
    }
    for (v, out) in variants.iter().zip(&outputs) {
        let text = std::fs::read_to_string(out.join("config")).map_err(io_err("read", out))?;
        let unmet = config::unmet(*v, &text);
        if !unmet.is_empty() {
            let list: Vec<String> = unmet.iter().map(|r| r.to_string()).collect();
            return Ok(Err(format!(
                "options missing from .config: {}",
                list.join(", ")
            )));
        }
    }
    progress.note(&format!(
        "built the {names} kernel in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Ok(outputs))
}

/// Moves a finished build into place in one rename; a forced rebuild swaps the old directory out first.
fn install(out: &Path, dest: &Path, log: &Path) -> Result<()> {
    let _ = std::fs::copy(log, out.join("build.log"));
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".old-{}-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(dest, &old).map_err(io_err("move aside", dest))?;
        std::fs::rename(out, dest).map_err(io_err("install", dest))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(out, dest).map_err(io_err("install", dest))?;
    }
    Ok(())
}
