//! `mvrun logs`: the output of a detached sandbox.

use clap::Args;
use mvrun::sandbox::state::{StateDir, Status};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `mvrun logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the output until the sandbox ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Sandbox name or id.
    pub sandbox: String,
}

/// Copies what was appended to `file` since `pos`.
fn copy_new(file: &mut Option<File>, path: &std::path::Path, pos: &mut u64, out: &mut dyn Write) {
    if file.is_none() {
        *file = File::open(path).ok();
    }
    if let Some(f) = file {
        if f.seek(SeekFrom::Start(*pos)).is_ok() {
            let mut buf = Vec::new();
            if let Ok(n) = f.read_to_end(&mut buf) {
                *pos += n as u64;
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
        }
    }
}

/// Runs `mvrun logs`. stdout and stderr of the workload come back on stdout and stderr.
pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let states = StateDir::open(mvrun::paths::run_root())?;
    let (dir, _) = states.find(&args.sandbox)?;
    let (out_path, err_path) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
    let (mut out_f, mut err_f) = (None, None);
    let (mut out_pos, mut err_pos) = (0u64, 0u64);
    loop {
        copy_new(&mut out_f, &out_path, &mut out_pos, &mut std::io::stdout());
        copy_new(&mut err_f, &err_path, &mut err_pos, &mut std::io::stderr());
        if !args.follow
            || dir
                .read()
                .map(|r| r.status == Status::Exited)
                .unwrap_or(true)
        {
            // One last pass so nothing written just before the end is missed.
            copy_new(&mut out_f, &out_path, &mut out_pos, &mut std::io::stdout());
            copy_new(&mut err_f, &err_path, &mut err_pos, &mut std::io::stderr());
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
