//! The containerd shim under a real containerd: Debian's containerd and runc, started by this harness with its own
//! root, state and socket under a temporary directory; an image imported with `ctr images import`; every mvrun
//! check next to the same command under runc, both printed side by side.
//!
//! This test needs no guest boot. The guest-booting tests (ctr run echo / exit code / stdin, exec + ps + kill in a
//! long-running task, two VMs at once, a killed VMM reported as an exit) follow on branch h/shim once they have run
//! on this tree under the shared guest-boot lock. A test that cannot run prints `SKIP: reason` and returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-mvrun-v2");
const MVRUN_RUNTIME: &str = "io.containerd.mvrun.v2";
const IMAGE: &str = "docker.io/mvrun/shim-test:latest";
const NAMESPACE: &str = "mvrun-test";

fn skip_reason() -> Option<String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Some("/dev/kvm is missing or not usable".into());
    }
    for (bin, pkg) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/bin/ctr", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/bin/mkfs.erofs", "erofs-utils"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} is missing (install Debian's {pkg})"));
        }
    }
    let installed = Path::new("/usr/local/lib/mvrun/guest-init").exists();
    if std::env::var_os("MVRUN_GUEST_INIT").is_none() && !installed {
        return Some("no static guest-init (set MVRUN_GUEST_INIT or run scripts/build.sh)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd needs root".into());
    }
    None
}

macro_rules! require {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// A containerd of our own, stopped by pid (with every shim it started) when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// containerd with extra environment, which its shims (and their VMMs) inherit.
    fn start_with_env(env: &[(&str, &Path)]) -> Containerd {
        // A short path: shim and containerd sockets live under it.
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
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
        // The shim is found on PATH by its runtime name; mvrun-vmm sits next to it.
        let bin_dir = Path::new(SHIM).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(self.sock())
            .args(["-n", NAMESPACE])
            .args(args);
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr run --rm` under `runtime`, with `input` on stdin when given (ctr 1.6's `run` always forwards its stdin
    /// through a fifo; it has no `-i`); prints what happened.
    fn run(&self, runtime: &str, id: &str, input: Option<&[u8]>, cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        args.extend([IMAGE, id]);
        args.extend(cmd);
        let start = Instant::now();
        let mut child = self
            .ctr_cmd(&args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(data) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(data).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        report(
            runtime,
            &format!("ctr run {id} {cmd:?}"),
            &out,
            start.elapsed(),
        );
        out
    }

    /// The tasks `ctr task ls` shows: (id, pid, status).
    fn tasks(&self) -> Vec<(String, u32, String)> {
        let o = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.to_string(),
                ))
            })
            .collect()
    }

    fn import_image(&self) {
        let tar = build_image_tar(self.dir.path());
        let o = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for (id, _, _) in self.tasks() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            std::thread::sleep(Duration::from_millis(500));
            let _ = self.ctr(&["task", "delete", "-f", &id]);
        }
        for c in String::from_utf8_lossy(&self.ctr(&["containers", "ls", "-q"]).stdout).lines() {
            let _ = self.ctr(&["containers", "rm", c]);
        }
        // SAFETY: kill(2) on the containerd this harness started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims are daemons: end any this containerd started (their command line names its socket).
        let sock = self.sock().display().to_string();
        for pid in processes_mentioning(&sock) {
            // SAFETY: kill(2) on a shim of this harness's containerd, found by its command line.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        for m in std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
        {
            if let Some(p) = m
                .split_whitespace()
                .nth(1)
                .filter(|p| p.starts_with(&*self.dir.path().to_string_lossy()))
            {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn processes_mentioning(needle: &str) -> Vec<i32> {
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

/// The VMM processes now running whose sandbox is under the shim's runtime directory. Only this build's
/// `mvrun-vmm` counts: other sessions' shim tests on the same machine run their own.
fn vmm_pids() -> Vec<i32> {
    let ours = Path::new(SHIM).with_file_name("mvrun-vmm");
    let mut out = Vec::new();
    for pid in processes_mentioning("--sandbox") {
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            if exe == ours {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains("/containerd/") {
                    out.push(pid);
                }
            }
        }
    }
    out
}

fn report(runtime: &str, what: &str, o: &Output, took: Duration) {
    eprintln!(
        "[{runtime:<22}] {what}: exit {:?} in {:.1}s\n    stdout: {:?}\n    stderr: {:?}",
        o.status.code(),
        took.as_secs_f64(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An OCI image layout tar of a busybox rootfs, named `IMAGE` for `ctr images import`.
fn build_image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("image-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "false", "ls", "id", "ps", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
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
        let d = sha256(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        d
    };
    let layer_digest = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
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
                       "annotations": {"io.containerd.image.name": IMAGE,
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

fn assert_clean_in(run_root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !vmm_pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(vmm_pids().is_empty(), "VMMs left: {:?}", vmm_pids());
    let runtime = run_root.join("containerd");
    let left: Vec<_> = std::fs::read_dir(&runtime)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime directories left: {left:?}");
}

/// No boot: a VM that cannot start (a kernel that does not exist) fails `ctr run` at create with the VMM's reason,
/// and leaves no VMM, shim, runtime directory or private image behind. This runs the shim's start, its ttrpc
/// service as containerd 1.6 calls it, the rootfs packing and the failure cleanup on any host.
#[test]
fn ctr_run_with_a_broken_vm_fails_cleanly() {
    require!();
    let scratch = tempfile::tempdir().unwrap();
    let run_root = scratch.path().join("run");
    let data_root = scratch.path().join("data");
    let kernel = scratch.path().join("no-such-vmlinux");
    let c = Containerd::start_with_env(&[
        ("MVRUN_RUN_DIR", &run_root),
        ("MVRUN_ROOT", &data_root),
        ("MVRUN_KERNEL", &kernel),
    ]);
    c.import_image();
    let o = c.run(MVRUN_RUNTIME, "broken", None, &["echo", "hi"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("failed to create shim task") && err.contains("no-such-vmlinux"),
        "the reason reaches ctr: {err}"
    );
    assert!(c.tasks().is_empty());
    assert_clean_in(&run_root);
    let cached: Vec<_> = std::fs::read_dir(data_root.join("shim-rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "one cached image, no temporaries: {cached:?}"
    );
    // The cached image is reused: a second create packs nothing new.
    let o = c.run(MVRUN_RUNTIME, "broken2", None, &["echo", "hi"]);
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_dir(data_root.join("shim-rootfs"))
            .unwrap()
            .count(),
        1
    );
    let sock = c.sock().display().to_string();
    drop(c);
    assert!(processes_mentioning(&sock).is_empty(), "a shim is left");
}
