//! A private containerd for the `ctr run` peers: its own root, state and socket under the bench's scratch
//! directory, started here and stopped by PID when dropped, so the host's containerd (if any) is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// mvrun's runtime type, served by `containerd-shim-mvrun-v2` found on PATH.
pub const MVRUN_RUNTIME: &str = "io.containerd.mvrun.v2";

pub struct Containerd {
    child: Child,
    address: PathBuf,
    path_env: String,
}

impl Containerd {
    /// Starts containerd under `dir` with `extra_path` (where a shim binary lives) ahead of PATH.
    pub fn start(dir: &Path, extra_path: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let address = dir.join("c.sock");
        let config = dir.join("config.toml");
        // The CRI plugin is not needed for `ctr` and would want CNI and a sandbox image.
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = address.display(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let path_env = format!(
            "{}:{}",
            extra_path.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", &path_env)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("containerd.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .map_err(|e| format!("containerd: {e}"))?;
        let c = Containerd {
            child,
            address,
            path_env,
        };
        let start = Instant::now();
        while !c.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "containerd did not answer within 20 s (log: {})",
                    dir.join("containerd.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// Runs `ctr --address <ours> ARGS...`.
    pub fn ctr(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .env("PATH", &self.path_env)
            .stdin(Stdio::null())
            .output()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM lets containerd stop its shims' bookkeeping; then reap it.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
