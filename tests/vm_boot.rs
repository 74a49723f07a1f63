//! Our guest kernel booted by our VMM on /dev/kvm, through the real `mvrun` binary.
//!
//! On a host with hardware virtualization every test here finishes in about a second. On a nested-PVM host
//! (/sys/module/kvm_pvm) the guest is emulated instruction by instruction: the normal kernel prints its banner and
//! then stops at the emulator's first gap (a KVM internal error the VMM reports), and the `emulated` variant boots
//! on to user space in tens of seconds.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

fn kvm_usable() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        true
    } else {
        eprintln!("SKIP: /dev/kvm is missing or not usable by this user");
        false
    }
}

fn emulated_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn kernel(variant: &str) -> PathBuf {
    let out = Command::new(MVRUN)
        .args(["kernel", "path", "--variant", variant])
        .stderr(Stdio::inherit())
        .output()
        .expect("run mvrun kernel path");
    assert!(
        out.status.success(),
        "mvrun kernel path --variant {variant} failed"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn marker() -> String {
    format!("mvrun.marker={:016x}", rand::random::<u64>())
}

/// What a `mvrun vm boot` run printed and how it ended.
struct Boot {
    console: String,
    stderr: String,
    success: bool,
    elapsed: Duration,
}

/// Runs `mvrun vm boot` with `args`, collecting the console; stops early once `stop_at` has been printed.
fn boot(args: &[&str], stop_at: Option<&str>, limit: Duration) -> Boot {
    let start = Instant::now();
    let mut child = Command::new(MVRUN)
        .arg("vm")
        .arg("boot")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mvrun vm boot");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut console = String::new();
    let mut stopped_early = false;
    while start.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if stop_at.is_some_and(|s| line.contains(s)) {
                    stopped_early = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait().unwrap().is_some() {
                    // Drain what is left.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        console.push_str(&line);
                        console.push('\n');
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if stopped_early || start.elapsed() >= limit {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    Boot {
        console,
        stderr: err_thread.join().unwrap(),
        success: status.success() && !stopped_early,
        elapsed: start.elapsed(),
    }
}

#[test]
fn guest_kernel_prints_banner_and_command_line_marker() {
    if !kvm_usable() {
        return;
    }
    let k = kernel("normal");
    let m = marker();
    let r = boot(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--append",
            &m,
            "--mem",
            "128",
            "--timeout",
            "240",
        ],
        None,
        Duration::from_secs(300),
    );
    assert!(
        r.console.contains("Linux version 6.12"),
        "no banner:\n{}\n{}",
        r.console,
        r.stderr
    );
    let cmdline = r
        .console
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_default();
    assert!(cmdline.contains(&m), "marker missing from {cmdline:?}");
    if emulated_host() && !r.success {
        // The normal kernel stops at the emulator's first gap: the VMM must say so, not hang.
        assert!(
            r.stderr.contains("KVM internal error") && r.stderr.contains("guest RIP"),
            "expected a clear KVM internal error, got:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("--variant emulated"),
            "the error should point at the fix: {}",
            r.stderr
        );
    } else {
        // No root filesystem: the kernel panics, panic=-1 reboots at once, and reboot=k ends the VM.
        assert!(r.success, "expected a clean reset, got:\n{}", r.stderr);
        assert!(r.console.contains("Kernel panic"), "{}", r.console);
    }
    eprintln!("normal kernel: {:?} wall clock", r.elapsed);
}

/// A busybox initramfs whose /init prints `marker` and reboots. (The boot timer is written by guest-init, through
/// an mmap of /dev/mem; the full-path tests check it.)
fn busybox_initramfs(dir: &Path, marker: &str) -> Option<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        eprintln!("SKIP: /bin/busybox (Debian's busybox-static) is not installed");
        return None;
    }
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let init = format!(
        "#!/bin/sh\n/bin/busybox mount -t devtmpfs dev /dev\necho {marker}\n/bin/busybox reboot -f\n"
    );
    let init_path = root.join("init");
    std::fs::write(&init_path, init).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&init_path)
        .status()
        .unwrap();
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    Some(out)
}

#[test]
fn guest_emulated_kernel_reaches_user_space_and_resets() {
    if !kvm_usable() {
        return;
    }
    let k = kernel(if emulated_host() {
        "emulated"
    } else {
        "normal"
    });
    let tmp = tempfile::tempdir().unwrap();
    let m = format!("userspace-marker-{:08x}", rand::random::<u32>());
    let Some(initrd) = busybox_initramfs(tmp.path(), &m) else {
        return;
    };
    let r = boot(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "128",
            "--timeout",
            "400",
            "--timings",
        ],
        None,
        Duration::from_secs(450),
    );
    assert!(
        r.console.contains(&m),
        "user space never printed the marker:\n{}\n{}",
        r.console,
        r.stderr
    );
    assert!(
        r.success,
        "the guest's reboot should end the VM cleanly:\n{}",
        r.stderr
    );
    eprintln!("{}", r.stderr);
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let junk = junk.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--kernel", junk], "neither an ELF vmlinux nor a bzImage"),
        (
            &["--kernel", "/nonexistent/vmlinux"],
            "kernel /nonexistent/vmlinux does not exist",
        ),
        (&["--kernel", junk, "--vcpus", "0"], "invalid vCPU count 0"),
        (&["--kernel", junk, "--mem", "4"], "too small"),
        (
            &["--kernel", junk, "--mem", "100000000"],
            "more than this host's",
        ),
        (
            &["--kernel", junk, "--initrd", "/nonexistent/initrd"],
            "initrd /nonexistent/initrd does not exist",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(MVRUN)
            .args(["vm", "boot"])
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
