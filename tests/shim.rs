//! The containerd shim under a real containerd: Debian's containerd and runc, started by this harness with its own
//! root, state and socket under a temporary directory; an image imported with `ctr images import`; every mvrun
//! check next to the same command under runc, both printed side by side.
//!
//! `ctr_run_with_a_broken_vm_fails_cleanly` needs no guest boot. The `guest_` tests boot real microVMs (1-3 minutes
//! each on an emulated-KVM host), so they keep to few boots with several honest checks per task: `ctr run` of echo,
//! of a command reading stdin with an exit code, and on a terminal (`-t`); two long-running tasks at once carrying
//! exec (plain, detached, on a terminal), ps, metrics, an OOM kill (TaskOOM in `ctr events`), kill, and a VMM
//! killed from outside. After each, nothing of the task is left: no VMM, runtime directory, private rootfs image or
//! mount. A test that cannot run prints `SKIP: reason` and returns.

#[path = "helpers/containerd.rs"]
mod containerd;
#[path = "helpers/pty.rs"]
mod pty;
#[path = "helpers/requirements.rs"]
mod requirements;

use containerd::{busybox_image_tar, daemon_dir, processes_mentioning, Daemon};
use pty::Pty;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-mvrun-v2");
const MVRUN_RUNTIME: &str = "io.containerd.mvrun.v2";
const IMAGE: &str = "docker.io/mvrun/shim-test:latest";
const NAMESPACE: &str = "mvrun-test";
/// The busybox applets in the test images.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "ls", "id", "ps", "hostname", "tty", "stty",
    "dd",
];

fn skip_reason() -> Option<String> {
    requirements::kvm()
        .or_else(|| {
            requirements::programs(&[
                ("/usr/bin/containerd", "containerd"),
                ("/usr/bin/ctr", "containerd"),
                ("/usr/sbin/runc", "runc"),
                ("/bin/busybox", "busybox-static"),
                ("/usr/bin/mkfs.erofs", "erofs-utils"),
            ])
        })
        .or_else(requirements::guest_init)
        .or_else(|| requirements::root("containerd"))
}

macro_rules! require {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// The harness's containerd (tests/helpers/containerd.rs) with this test's namespace; its tasks and containers
/// are removed when dropped, before containerd and its shims are stopped.
struct Containerd {
    d: Daemon,
}

impl Containerd {
    /// containerd with extra environment, which its shims (and their VMMs) inherit.
    fn start_with_env(env: &[(&str, &Path)]) -> Containerd {
        let d = Daemon::start(
            daemon_dir("ctrd"),
            NAMESPACE,
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#,
            env,
        );
        Containerd { d }
    }

    /// The pid of the shim process serving container `id` (the shim's `-id` is its group: the container itself
    /// for a plain `ctr run`).
    fn shim_pid(&self, id: &str) -> Option<i32> {
        let sock = self.sock().display().to_string();
        processes_mentioning(&sock).into_iter().find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
        })
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
        self.import_image_as(IMAGE, &[]);
    }

    /// The busybox image under `name`, with `files` (path in the rootfs, content) added.
    fn import_image_as(&self, name: &str, files: &[(&str, &str)]) {
        let dir = self.dir().join(name.replace(['/', ':'], "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let tar = busybox_image_tar(&dir, name, &["sh"], APPLETS, files);
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
        self.d.stop();
    }
}

// The harness's daemon methods (ctr, sock, log_tail, kill_and_restart, ...) on the test's containerd.
impl std::ops::Deref for Containerd {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl std::ops::DerefMut for Containerd {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.d
    }
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

/// The sandbox directories of the VMM processes now running under the shim's runtime directory: one per VM (a
/// VM's supervisor and its jailed VMM name the same one).
fn vm_dirs() -> std::collections::BTreeSet<String> {
    vmm_pids()
        .into_iter()
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let i = args.iter().position(|a| a == "--sandbox")?;
            args.get(i + 1).cloned()
        })
        .collect()
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

/// What the guest tests share: a containerd whose shims boot real VMs with a runtime and data directory of the
/// test's own, the image imported.
struct GuestEnv {
    scratch: tempfile::TempDir,
    c: Containerd,
}

impl GuestEnv {
    /// `None` (after printing why) when no guest can boot here.
    fn start() -> Option<GuestEnv> {
        if let Some(reason) = skip_reason() {
            eprintln!("SKIP: {reason}");
            return None;
        }
        let variant = mvrun::kernel::Variant::for_this_host();
        let Some(kernel) = mvrun::kernel::path_if_built(variant) else {
            eprintln!("SKIP: the {variant} guest kernel is not built (scripts/test.sh builds it)");
            return None;
        };
        let scratch = tempfile::tempdir().unwrap();
        let run_root = scratch.path().join("run");
        let data_root = scratch.path().join("data");
        let c = Containerd::start_with_env(&[
            ("MVRUN_RUN_DIR", &run_root),
            ("MVRUN_ROOT", &data_root),
            ("MVRUN_KERNEL", &kernel.vmlinux),
        ]);
        c.import_image();
        Some(GuestEnv { scratch, c })
    }

    /// Nothing of any task is left: no VMM, runtime directory, private rootfs image (only the shared cached
    /// one) or mount under containerd's directories.
    fn assert_clean(&self) {
        self.assert_clean_with_images(1);
    }

    /// [`GuestEnv::assert_clean`] for a test that ran `images` different images (one cached image each).
    fn assert_clean_with_images(&self, images: usize) {
        assert_clean_in(&self.scratch.path().join("run"));
        let cached: Vec<_> = std::fs::read_dir(self.scratch.path().join("data/shim-rootfs"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            cached.len() <= images,
            "private rootfs images left: {cached:?}"
        );
        let dir = self.c.dir().to_string_lossy().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|m| {
                m.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p.starts_with(&dir))
            })
            .map(str::to_string)
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }

    /// The shim's and containerd's log lines about `id`'s phases (the shim logs through containerd's log).
    fn phases(&self, id: &str) -> Vec<String> {
        self.c
            .log()
            .lines()
            .filter(|l| l.contains(&format!("task {id}")))
            .map(str::to_string)
            .collect()
    }
}

/// ctr with a limit: killed (and reported as a hang) after `timeout`.
fn ctr_within(c: &Containerd, runtime: &str, args: &[&str], timeout: Duration) -> Output {
    let start = Instant::now();
    let mut child = c
        .ctr_cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "[{runtime}] ctr {args:?} hung for {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    report(
        runtime,
        &format!("ctr {}", args.join(" ")),
        &out,
        start.elapsed(),
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The runtimes side by side: mvrun first, then runc with the same command.
const RUNTIMES: [(&str, &str); 2] = [(MVRUN_RUNTIME, "mv"), ("io.containerd.runc.v2", "rc")];

/// Two boots: `ctr run --rm` of `echo hi` (prints it, exits 0) and of a command reading stdin that exits 7.
#[test]
fn guest_ctr_run_echo_stdin_and_exit_code() {
    let Some(env) = GuestEnv::start() else { return };
    let c = &env.c;
    for (runtime, tag) in RUNTIMES {
        let o = c.run(runtime, &format!("{tag}-echo"), None, &["echo", "hi"]);
        assert_eq!(o.status.code(), Some(0), "[{runtime}] {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "hi\n", "[{runtime}]");
        let o = c.run(
            runtime,
            &format!("{tag}-stdin"),
            Some(b"typed\n"),
            &["sh", "-c", "read l; echo got $l; exit 7"],
        );
        assert_eq!(o.status.code(), Some(7), "[{runtime}] {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "got typed\n", "[{runtime}]");
        if runtime == MVRUN_RUNTIME {
            env.assert_clean();
            for id in ["mv-echo", "mv-stdin"] {
                eprintln!("shim phases of {id}:\n  {}", env.phases(id).join("\n  "));
            }
        }
    }
    assert!(c.tasks().is_empty());
}

/// Runs `cmd` (a ctr invocation with `-t`) on a new 33x77 terminal: the process sees a pty sized like ours (ctr
/// sends ResizePty), what we type reaches it, and its exit code comes back. Returns the terminal's text.
fn ctr_on_terminal(runtime: &str, what: &str, cmd: Command, expect_code: i32) -> String {
    let start = Instant::now();
    let mut pty = Pty::open(33, 77);
    let mut child = pty.spawn(cmd);
    pty.expect("size 33 77", Duration::from_secs(600));
    pty.write(b"typed\r");
    pty.expect("got typed", Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("[{runtime}] {what} did not end: {:?}", pty.text());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let t = pty.text();
    eprintln!(
        "[{runtime:<22}] {what}: exit {code:?} in {:.1}s\n    terminal: {t:?}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(code, Some(expect_code), "[{runtime}] {what}: {t:?}");
    assert!(t.contains("/dev/pts/"), "[{runtime}] a pty: {t:?}");
    t
}

/// The script run on a terminal: which tty, its size once ctr has resized it, a line typed through it, an exit
/// code. The sleep lets ctr's ResizePty (sent right after Start, for runc too) land first.
const TTY_SCRIPT: &str = "sleep 1; tty; echo size $(stty size); read l; echo got $l; exit 3";

/// One boot: `ctr run -t --rm`.
#[test]
fn guest_ctr_run_terminal() {
    let Some(env) = GuestEnv::start() else { return };
    let c = &env.c;
    for (runtime, tag) in RUNTIMES {
        let id = format!("{tag}-tty");
        let cmd = c.ctr_cmd(&[
            "run",
            "-t",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            &id,
            "sh",
            "-c",
            TTY_SCRIPT,
        ]);
        ctr_on_terminal(runtime, "ctr run -t", cmd, 3);
        if runtime == MVRUN_RUNTIME {
            env.assert_clean();
        }
    }
    assert!(c.tasks().is_empty());
}

/// The exit status `ctr task delete` reports for a task ("exit with non-zero exit code N"), 0 when it says none.
fn deleted_status(o: &Output) -> u32 {
    let e = text(&o.stderr);
    e.split("exit code ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn wait_stopped(c: &Containerd, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if c.tasks().iter().any(|(t, _, s)| t == id && s == "STOPPED") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Two boots at once: two long-running tasks in separate VMs, created in parallel, each carrying checks: exec
/// (output, exit code), a detached exec seen by `ctr task ps`, an exec on a terminal, `ctr task metrics`, an exec
/// that allocates past the task's 32 MiB memory limit (OOM-killed: 137, and TaskOOM in `ctr events`), then
/// `ctr task kill` (SIGTERM, trapped: 143) of one and SIGKILL of the other's VMM from outside (reported as exit
/// 137, no hang); runc runs the same, with its task's process killed from outside instead of a VMM.
#[test]
fn guest_ctr_two_tasks_exec_metrics_oom_kill() {
    let Some(env) = GuestEnv::start() else { return };
    let c = &env.c;
    let events_log = env.scratch.path().join("events.log");
    let mut events = c
        .ctr_cmd(&["events"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&events_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(180);
    for (runtime, tag) in RUNTIMES {
        let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
        // Both creates at once: two VMs boot side by side.
        let t = Instant::now();
        std::thread::scope(|s| {
            for id in [&a, &b] {
                s.spawn(move || {
                    let o = ctr_within(
                        c,
                        runtime,
                        &[
                            "run",
                            "-d",
                            "--runtime",
                            runtime,
                            "--memory-limit",
                            "33554432",
                            IMAGE,
                            id,
                            "sh",
                            "-c",
                            "trap 'exit 143' TERM; while :; do sleep 1; done",
                        ],
                        long,
                    );
                    assert!(o.status.success(), "[{runtime}] {}", text(&o.stderr));
                });
            }
        });
        eprintln!(
            "[{runtime:<22}] two tasks running after {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let tasks = c.tasks();
        let pid_of = |id: &str| tasks.iter().find(|(t, _, _)| t == id).map(|(_, p, _)| *p);
        let (pa, pb) = (pid_of(&a).unwrap(), pid_of(&b).unwrap());
        assert_ne!(pa, pb);
        if runtime == MVRUN_RUNTIME {
            let vmms = vmm_pids();
            assert!(
                vmms.contains(&(pa as i32)) && vmms.contains(&(pb as i32)),
                "each task is its own VMM: tasks {pa} {pb}, VMMs {vmms:?}"
            );
        }
        // exec: output and exit code.
        let o = ctr_within(
            c,
            runtime,
            &[
                "task",
                "exec",
                "--exec-id",
                "e1",
                &a,
                "sh",
                "-c",
                "echo exec-ok; exit 5",
            ],
            short,
        );
        assert_eq!(o.status.code(), Some(5), "[{runtime}] {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "exec-ok\n");
        // A detached exec shows in ps next to the task's own pid.
        let o = ctr_within(
            c,
            runtime,
            &["task", "exec", "-d", "--exec-id", "e2", &a, "sleep", "300"],
            short,
        );
        assert!(o.status.success(), "[{runtime}] {}", text(&o.stderr));
        let o = ctr_within(c, runtime, &["task", "ps", &a], short);
        let ps = text(&o.stdout);
        assert!(
            ps.lines().count() >= 3,
            "[{runtime}] the task and its exec: {ps}"
        );
        assert!(ps.contains(&pa.to_string()), "[{runtime}] {ps}");
        let o = ctr_within(
            c,
            runtime,
            &["task", "kill", "-s", "SIGKILL", "--exec-id", "e2", &a],
            short,
        );
        assert!(o.status.success(), "[{runtime}] {}", text(&o.stderr));
        // exec on a terminal.
        let cmd = c.ctr_cmd(&[
            "task",
            "exec",
            "-t",
            "--exec-id",
            "e3",
            &b,
            "sh",
            "-c",
            TTY_SCRIPT,
        ]);
        ctr_on_terminal(runtime, "ctr task exec -t", cmd, 3);
        // metrics.
        let o = ctr_within(c, runtime, &["task", "metrics", &a], short);
        let m = text(&o.stdout);
        assert!(o.status.success(), "[{runtime}] {}", text(&o.stderr));
        if runtime == MVRUN_RUNTIME {
            for needle in ["pids.current", "cpu.usage_usec", "memory.usage", "33554432"] {
                assert!(m.contains(needle), "metrics show {needle}: {m}");
            }
        }
        // OOM: an exec that allocates 64 MiB under a 32 MiB limit is killed; the task lives on.
        let o = ctr_within(
            c,
            runtime,
            &[
                "task",
                "exec",
                "--exec-id",
                "oom",
                &a,
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=64M",
                "count=1",
            ],
            long,
        );
        assert_eq!(
            o.status.code(),
            Some(137),
            "[{runtime}] {}",
            text(&o.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let oom_seen = || {
            std::fs::read_to_string(&events_log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("/tasks/oom") && l.contains(&a))
        };
        while !oom_seen() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(oom_seen(), "[{runtime}] TaskOOM for {a} in ctr events");
        eprintln!("[{runtime:<22}] ctr events shows /tasks/oom for {a}");
        let o = ctr_within(c, runtime, &["task", "metrics", &a], short);
        eprintln!(
            "[{runtime:<22}] metrics after the OOM kill:\n{}",
            text(&o.stdout)
        );
        // kill: SIGTERM, which the task traps and exits 143 on.
        let o = ctr_within(c, runtime, &["task", "kill", &a], short);
        assert!(o.status.success(), "[{runtime}] {}", text(&o.stderr));
        assert!(
            wait_stopped(c, &a, short),
            "[{runtime}] {a} stops after kill"
        );
        let o = ctr_within(c, runtime, &["task", "delete", &a], short);
        assert_eq!(deleted_status(&o), 143, "[{runtime}] {}", text(&o.stderr));
        // The other task's process killed from outside containerd: for mvrun its VMM.
        // SAFETY: kill(2) on the pid containerd reports for the task (the VMM under mvrun, the init under runc).
        unsafe {
            libc::kill(pb as i32, libc::SIGKILL);
        }
        assert!(
            wait_stopped(c, &b, Duration::from_secs(60)),
            "[{runtime}] a killed {b} is an exit, not a hang"
        );
        let o = ctr_within(c, runtime, &["task", "delete", &b], short);
        assert_eq!(deleted_status(&o), 137, "[{runtime}] {}", text(&o.stderr));
        for id in [&a, &b] {
            let o = ctr_within(c, runtime, &["containers", "rm", id], short);
            assert!(o.status.success());
        }
        if runtime == MVRUN_RUNTIME {
            env.assert_clean();
            for id in [&a, &b] {
                eprintln!("shim phases of {id}:\n  {}", env.phases(id).join("\n  "));
            }
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(c.tasks().is_empty());
}

/// The milliseconds in the shim's log line of `task {id}` that contains `what` ("... in N ms").
fn phase_ms(lines: &[String], what: &str) -> Option<f64> {
    let l = lines.iter().find(|l| l.contains(what))?;
    let rest = &l[l.find(what)?..];
    let at = rest.rfind(" in ")? + 4;
    rest[at..].split(" ms").next()?.trim().parse().ok()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Crashes around a running task: containerd killed with SIGKILL and started again finds the task still running
/// (it reconnects to the shim), then the task's shim killed with SIGKILL is noticed by containerd, whose `shim
/// delete` ends the VM; once containerd deletes the task nothing is left (no VMM, shim, runtime directory, private
/// image or mount). One guest boot; runc alongside.
#[test]
fn guest_ctr_killed_containerd_and_shim_leave_nothing() {
    let Some(mut env) = GuestEnv::start() else {
        return;
    };
    let running = |c: &Containerd, id: &str| {
        c.tasks()
            .into_iter()
            .find(|(t, _, status)| t == id && status == "RUNNING")
            .map(|(_, pid, _)| pid)
    };
    for (runtime, tag) in RUNTIMES {
        let id = format!("{tag}-crash");
        let o = ctr_within(
            &env.c,
            runtime,
            &[
                "run",
                "-d",
                "--runtime",
                runtime,
                IMAGE,
                &id,
                "sleep",
                "600",
            ],
            Duration::from_secs(600),
        );
        assert!(o.status.success(), "[{runtime}] {}", text(&o.stderr));
        let pid = running(&env.c, &id).unwrap_or_else(|| panic!("[{runtime}] {id} is not running"));

        env.c.kill_and_restart();
        assert_eq!(
            running(&env.c, &id),
            Some(pid),
            "[{runtime}] {id} did not survive containerd's restart: {}",
            env.c.log_tail()
        );
        eprintln!("[{runtime:<22}] containerd killed and restarted: {id} still running");

        let c = &env.c;
        let shim = c
            .shim_pid(&id)
            .unwrap_or_else(|| panic!("[{runtime}] no shim for {id}"));
        // SAFETY: kill(2) on the shim of this harness's task, found by its command line.
        unsafe {
            libc::kill(shim, libc::SIGKILL);
        }
        let t = Instant::now();
        while running(c, &id).is_some() || c.shim_pid(&id).is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "[{runtime}] {id}: task or shim still there 120 s after the shim was killed: {}",
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "[{runtime:<22}] shim of {id} killed: task gone in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let _ = c.ctr(&["task", "delete", "-f", &id]);
        let o = c.ctr(&["containers", "rm", &id]);
        assert!(
            o.status.success(),
            "[{runtime}] containers rm: {}",
            text(&o.stderr)
        );
        if runtime == MVRUN_RUNTIME {
            env.assert_clean();
        }
    }
    assert!(env.c.tasks().is_empty());
}

/// A measurement, not a check: `ctr run --rm IMAGE id /bin/true` under mvrun and under runc, alternately,
/// `MVRUN_SHIM_TIMING_RUNS` times each (each mvrun run boots a guest), with the shim's phases from containerd's
/// log: rootfs image, VM boot to the agent, container start in the guest, VM shutdown after the exit.
#[test]
fn guest_ctr_run_true_timing() {
    let Some(runs) = std::env::var("MVRUN_SHIM_TIMING_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    else {
        eprintln!("SKIP: a measurement; set MVRUN_SHIM_TIMING_RUNS=N to run it (N guest boots)");
        return;
    };
    let Some(env) = GuestEnv::start() else { return };
    let c = &env.c;
    let phases = [
        ("rootfs", "rootfs image"),
        ("boot", "VM booted"),
        ("start", "started in the guest"),
        ("shutdown", "VM shut down"),
    ];
    let mut wall: [Vec<f64>; 2] = Default::default();
    let mut phase: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    for i in 0..runs {
        for (k, (runtime, tag)) in RUNTIMES.iter().enumerate() {
            let id = format!("{tag}-true-{i}");
            let t = Instant::now();
            let o = c.run(runtime, &id, None, &["/bin/true"]);
            wall[k].push(t.elapsed().as_secs_f64());
            assert_eq!(o.status.code(), Some(0), "[{runtime}] {}", text(&o.stderr));
            if *runtime == MVRUN_RUNTIME {
                let lines = env.phases(&id);
                for (j, (_, what)) in phases.iter().enumerate() {
                    if let Some(ms) = phase_ms(&lines, what) {
                        phase[j].push(ms / 1e3);
                    }
                }
            }
        }
    }
    env.assert_clean();
    eprintln!("ctr run --rm IMAGE id /bin/true, {runs} runs each, median seconds:");
    for (k, (runtime, _)) in RUNTIMES.iter().enumerate() {
        eprintln!(
            "  {runtime:<22} wall {:.2}  (all: {:?})",
            median(&mut wall[k]),
            wall[k]
        );
    }
    for (j, (name, _)) in phases.iter().enumerate() {
        eprintln!(
            "  mvrun phase {name:<9} {:.2}  (all: {:?})",
            median(&mut phase[j]),
            phase[j]
        );
    }
}

/// One boot: a pod in one VM, driven as CRI would through the annotations it sets (ctr passes them with
/// `--annotation`) and the host namespace paths of the sandbox it writes (`--with-ns`, the VMM's /proc/PID/ns/*):
/// the sandbox container boots the VM, an app container from another image is created in it; both run, share
/// the network and UTS namespaces, each has its own rootfs and its own hardening; exec works in the app; deleting
/// the app keeps the VM (and its slot takes the next container's image); deleting the sandbox ends it, and
/// nothing is left.
#[test]
fn guest_pod_containers_share_one_vm() {
    let Some(env) = GuestEnv::start() else { return };
    let c = &env.c;
    const SB_IMAGE: &str = "docker.io/mvrun/pod-sandbox:latest";
    const APP_IMAGE: &str = "docker.io/mvrun/pod-app:latest";
    c.import_image_as(SB_IMAGE, &[("which", "sandbox\n")]);
    c.import_image_as(APP_IMAGE, &[("which", "app\n")]);
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(240);
    let r = MVRUN_RUNTIME;
    let pod = "pod-sb";
    let annotations = |kind: &str| {
        [
            "--annotation".to_string(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".to_string(),
            format!("io.kubernetes.cri.sandbox-id={pod}"),
        ]
    };
    let run = |id: &str, image: &str, kind: &str, extra: &[String]| {
        let mut args: Vec<String> = ["run", "-d", "--runtime", r].map(String::from).to_vec();
        args.extend(annotations(kind));
        args.extend(extra.iter().cloned());
        args.extend([image, id, "sleep", "100000"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        let o = ctr_within(c, r, &args, long);
        assert!(o.status.success(), "{id}: {}", text(&o.stderr));
        t.elapsed()
    };
    let exec = |id: &str, exec_id: &str, script: &str| {
        let o = ctr_within(
            c,
            r,
            &["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script],
            short,
        );
        assert_eq!(o.status.code(), Some(0), "{id}: {}", text(&o.stderr));
        text(&o.stdout)
    };

    let boot = run(pod, SB_IMAGE, "sandbox", &[]);
    let vms = vm_dirs();
    assert_eq!(vms.len(), 1, "the sandbox boots one VM: {vms:?}");
    let vmm = c
        .tasks()
        .iter()
        .find(|(t, _, _)| t == pod)
        .map(|(_, p, _)| *p)
        .unwrap();
    // What CRI writes for the pod's other containers: the sandbox's namespaces by their host paths.
    let with_ns: Vec<String> = ["network:net", "ipc:ipc", "uts:uts"]
        .iter()
        .flat_map(|k| {
            let (t, f) = k.split_once(':').unwrap();
            ["--with-ns".to_string(), format!("{t}:/proc/{vmm}/ns/{f}")]
        })
        .collect();
    let mut app_args = with_ns.clone();
    app_args.extend(["--cap-add".to_string(), "CAP_NET_ADMIN".to_string()]);
    let create_app = run("pod-app", APP_IMAGE, "container", &app_args);
    eprintln!(
        "pod: sandbox up (VM boot) in {:.1}s, app container created in it in {:.1}s",
        boot.as_secs_f64(),
        create_app.as_secs_f64()
    );
    assert_eq!(
        vm_dirs(),
        vms,
        "the app runs in the sandbox's VM, no second VM"
    );
    let tasks = c.tasks();
    for id in [pod, "pod-app"] {
        assert!(
            tasks.iter().any(|(t, _, s)| t == id && s == "RUNNING"),
            "{id} runs: {tasks:?}"
        );
    }

    let probe =
        "cat /which; hostname; for n in net uts ipc pid mnt; do readlink /proc/self/ns/$n; done; \
                 grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/1/status; \
                 grep Seccomp: /proc/self/status | sed s/^/exec-/";
    let sb = exec(pod, "p1", probe);
    let app = exec("pod-app", "p2", probe);
    eprintln!("sandbox:\n{sb}app:\n{app}");
    let (sb, app): (Vec<&str>, Vec<&str>) = (sb.lines().collect(), app.lines().collect());
    assert_eq!(
        (sb[0], app[0]),
        ("sandbox", "app"),
        "each has its own rootfs"
    );
    assert_eq!(sb[1], app[1], "one hostname");
    assert_eq!(sb[2], app[2], "one network namespace");
    assert_eq!(sb[3], app[3], "one UTS namespace");
    assert_eq!(sb[4], app[4], "one IPC namespace");
    assert_ne!(
        sb[5], app[5],
        "PID namespaces of their own (the pod does not share PIDs)"
    );
    assert_ne!(sb[6], app[6], "mount namespaces of their own");
    assert!(sb.contains(&"CapEff:\t00000000a80425fb"), "{sb:?}");
    assert!(
        app.contains(&"CapEff:\t00000000a80435fb"),
        "the app's own capabilities (+NET_ADMIN): {app:?}"
    );
    for side in [&sb, &app] {
        assert!(
            side.contains(&"Seccomp:\t2")
                && side.contains(&"NoNewPrivs:\t1")
                && side.contains(&"exec-Seccomp:\t2"),
            "{side:?}"
        );
    }
    // Writes stay in the app's own upper layer.
    assert_eq!(
        exec("pod-app", "p3", "echo w > /which && cat /which"),
        "w\n"
    );
    assert_eq!(exec(pod, "p4", "cat /which"), "sandbox\n");

    // Deleting the app keeps the VM; its slot takes the next container's image (not the old one's cached blocks).
    let o = ctr_within(c, r, &["task", "kill", "-s", "SIGKILL", "pod-app"], short);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let deadline = Instant::now() + short;
    while c
        .tasks()
        .iter()
        .any(|(t, _, s)| t == "pod-app" && s != "STOPPED")
    {
        assert!(
            Instant::now() < deadline,
            "the app did not stop: {:?}",
            c.tasks()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        ["task", "delete", "pod-app"],
        ["containers", "rm", "pod-app"],
    ] {
        let o = ctr_within(c, r, &args, short);
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    }
    assert_eq!(vm_dirs(), vms, "the VM outlives the app");
    run("pod-app2", SB_IMAGE, "container", &with_ns);
    assert_eq!(exec("pod-app2", "p5", "cat /which"), "sandbox\n");
    assert_eq!(vm_dirs(), vms);

    // Deleting the sandbox ends the VM and everything in it.
    for id in ["pod-app2", pod] {
        let o = ctr_within(c, r, &["task", "kill", "-s", "SIGKILL", id], short);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let deadline = Instant::now() + short;
        while c.tasks().iter().any(|(t, _, s)| t == id && s != "STOPPED") {
            assert!(
                Instant::now() < deadline,
                "{id} did not stop: {:?}",
                c.tasks()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for args in [["task", "delete", id], ["containers", "rm", id]] {
            let o = ctr_within(c, r, &args, short);
            assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        }
    }
    for line in env.phases("pod-app") {
        eprintln!("shim: {line}");
    }
    env.assert_clean_with_images(2);
}
