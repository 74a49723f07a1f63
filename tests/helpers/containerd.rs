//! A containerd of a test's own for tests/shim.rs and tests/cri.rs: Debian's containerd with its root, state,
//! socket, config and log under a temporary directory, the shim found on its PATH, stopped by pid (with every shim
//! it started and every mount under the directory) when dropped; and the busybox image those tests import.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-mvrun-v2");

/// A short temporary directory for a daemon: shim and containerd sockets live under it.
pub fn daemon_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

pub struct Daemon {
    dir: tempfile::TempDir,
    /// `None` once stopped.
    child: Option<Child>,
    namespace: String,
    env: Vec<(String, PathBuf)>,
}

impl Daemon {
    /// containerd on a config in `dir` with `extra_config` (top-level keys, then tables) added, and extra
    /// environment, which its shims (and their VMMs) inherit; `ctr` talks to it in `namespace`. Returns once it
    /// answers.
    pub fn start(
        dir: tempfile::TempDir,
        namespace: &str,
        extra_config: &str,
        env: &[(&str, &Path)],
    ) -> Daemon {
        let d = dir.path();
        // TOML: top-level keys in `extra_config` must come before the first table.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{extra_config}
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        let child = Self::spawn(d, &env);
        let c = Daemon {
            dir,
            child: Some(child),
            namespace: namespace.to_string(),
            env,
        };
        c.wait_up();
        c
    }

    /// containerd on the config in `d`, its output appended to `d/containerd.log`.
    fn spawn(d: &Path, env: &[(String, PathBuf)]) -> Child {
        // The shim is found on PATH by its runtime name; mvrun-vmm sits next to it.
        let bin_dir = Path::new(SHIM).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd")
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills containerd with SIGKILL (its shims and tasks go on) and starts it again on the same root and state,
    /// as a crash and a restart by the init system would.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = Some(Self::spawn(self.dir.path(), &self.env));
        self.wait_up();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// Everything containerd (and the shims, which log through it) wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let t = self.log();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(self.sock())
            .args(["-n", &self.namespace])
            .args(args);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Stops containerd (SIGTERM, SIGKILL after 20 s), kills the shims it started and unmounts what is left
    /// under its directory. A second call finds nothing more to do.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the containerd this harness started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims are daemons: end any this containerd started (their command line names its socket).
        let sock = self.sock().display().to_string();
        for pid in processes_mentioning(&sock) {
            // SAFETY: kill(2) on a shim of this harness's containerd, found by its command line.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Last mounted first: a mount on top of another goes before it.
        let prefix = self.dir.path().to_string_lossy().into_owned();
        for m in std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .rev()
        {
            if let Some(p) = m
                .split_whitespace()
                .nth(1)
                .filter(|p| p.starts_with(&prefix))
            {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pids of the processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// An OCI image layout tar (for `ctr images import`) of a busybox rootfs named `name`, built under `dir`: busybox
/// with `applets` linked in /bin, the usual top-level directories, root in /etc/passwd and /etc/group, `files`
/// (path in the rootfs, content; parent directories made as needed) and `cmd` as its default command.
pub fn busybox_image_tar(
    dir: &Path,
    name: &str,
    cmd: &[&str],
    applets: &[&str],
    files: &[(&str, &str)],
) -> PathBuf {
    use sha2::Digest;
    let root = dir.join("image-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let layout = dir.join("image-layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer_path = dir.join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&layer_path)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let layer = std::fs::read(&layer_path).unwrap();
    let put = |data: &[u8]| -> String {
        let d = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(blobs.join(&d), data).unwrap();
        d
    };
    let layer_digest = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}]
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": "latest"}}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .unwrap();
    assert!(st.success());
    tar
}
