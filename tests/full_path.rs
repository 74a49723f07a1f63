//! The whole product: `mvrun run` through the real VMM, guest kernel, guest-init, image store and container.
//!
//! Each test boots real microVMs. On a nested-PVM host every guest instruction is emulated (about a minute per
//! boot), so the suite keeps to a handful of boots, runs them serially (nextest group `guest-boot`), and makes
//! several honest checks per boot where one run shows several things (a command that prints its uid, its working
//! directory and an env variable proves `-u`, `-w` and `-e` at once). A test that cannot run here prints
//! `SKIP: reason` and returns.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

/// Why the full path cannot run on this machine, if it cannot.
fn skip_reason() -> Option<String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Some("/dev/kvm is missing or not usable".into());
    }
    let gi = std::env::var_os("MVRUN_GUEST_INIT");
    let installed = Path::new("/usr/local/lib/mvrun/guest-init").exists();
    if gi.is_none() && !installed {
        return Some("no static guest-init (set MVRUN_GUEST_INIT or run scripts/build.sh)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some(
            "Debian's busybox-static is not installed (the built-in image is made from it)".into(),
        );
    }
    None
}

macro_rules! require_full_path {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

fn mvrun(args: &[&str]) -> Command {
    let mut c = Command::new(MVRUN);
    c.args(args);
    c
}

fn run(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = mvrun(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn mvrun");
    eprintln!(
        "mvrun {args:?}: {:?} in {:?}\nstdout: {}\nstderr: {}",
        out.status,
        start.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One boot: echo, stdout and stderr kept apart, exit code 0.
#[test]
fn guest_echo_streams_and_exit_zero() {
    require_full_path!();
    let o = run(&[
        "run",
        "--rm",
        "--timings",
        "busybox",
        "sh",
        "-c",
        "echo hello; echo oops >&2",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "hello\n");
    assert!(
        stderr(&o).contains("oops\n"),
        "stderr kept apart: {}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("oops"));
    assert!(
        stderr(&o).contains("kernel boot to init"),
        "--timings shows the phases"
    );
}

/// One boot each: exit codes pass through, a missing command is 127.
#[test]
fn guest_exit_codes_pass_through() {
    require_full_path!();
    assert_eq!(
        run(&["run", "--rm", "busybox", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let o = run(&["run", "--rm", "busybox", "/no/such/command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
}

/// One boot: -e, -w, -u and --read-only together, each with its own observable effect.
#[test]
fn guest_env_workdir_user_and_read_only() {
    require_full_path!();
    let o = run(&[
        "run", "--rm", "-e", "FOO=bar", "-w", "/tmp", "-u", "65534", "--read-only", "busybox", "sh", "-c",
        "echo $FOO; pwd; id -u; if touch /etc/x 2>/dev/null; then echo writable; else echo read-only; fi",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "bar\n/tmp\n65534\nread-only\n");
}

/// One boot: stdin is forwarded, and its EOF too (cat ends).
#[test]
fn guest_stdin_is_piped_through_cat() {
    require_full_path!();
    let mut child = mvrun(&["run", "--rm", "-i", "busybox", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "line one\nline two\n");
}

/// One boot: the memory limit kills with 137.
#[test]
fn guest_memory_limit_kills_with_137() {
    require_full_path!();
    // Fill a tmpfs-backed variable past the limit: busybox has no memory hog, so make one with a shell string.
    let o = run(&[
        "run",
        "--rm",
        "-m",
        "32m",
        "busybox",
        "sh",
        "-c",
        "x=a; while true; do x=$x$x$x$x; done",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
}

/// One boot: a detached sandbox, its logs, an exec into it, and stop.
#[test]
fn guest_detached_logs_exec_and_stop() {
    require_full_path!();
    let name = format!("fp-{:06x}", rand::random::<u32>() & 0xffffff);
    let o = run(&[
        "run",
        "-d",
        "--name",
        &name,
        "busybox",
        "sh",
        "-c",
        "echo started; while true; do sleep 1; done",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let logs = run(&["logs", &name]);
        if stdout(&logs).contains("started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no output from the detached sandbox"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let ps = run(&["ps"]);
    assert!(stdout(&ps).contains(&name));
    let e = run(&["exec", &name, "sh", "-c", "echo from-exec; exit 5"]);
    assert_eq!(e.status.code(), Some(5));
    assert_eq!(stdout(&e), "from-exec\n");
    let s = run(&["stop", "-t", "2", &name]);
    assert_eq!(s.status.code(), Some(0));
    let ps = run(&["ps", "-a"]);
    let line = stdout(&ps)
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("Exited"), "{line}");
    assert_eq!(run(&["rm", &name]).status.code(), Some(0));
}

/// One boot: killing the CLI leaves no VMM process behind.
#[test]
fn guest_killing_the_cli_kills_the_vmm() {
    require_full_path!();
    let name = format!("kill-{:06x}", rand::random::<u32>() & 0xffffff);
    let mut child = mvrun(&["run", "--name", &name, "busybox", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the VMM process exists, then SIGKILL the CLI.
    let deadline = Instant::now() + Duration::from_secs(60);
    let vmm_pid = loop {
        if let Some(pid) = find_vmm_for(&name) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no VMM process appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{vmm_pid}")).exists() {
        assert!(Instant::now() < deadline, "VMM {vmm_pid} outlived its CLI");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next command notices the dead sandbox and marks it exited.
    let ps = run(&["ps", "-a"]);
    let line = stdout(&ps)
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("Exited"), "{line}");
    run(&["rm", &name]);
}

/// The pid of the `mvrun-vmm` whose sandbox has `name`.
fn find_vmm_for(name: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid: u32 = entry.file_name().to_str()?.parse().ok().unwrap_or(0);
        if pid == 0 {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains("mvrun-vmm") {
            let dir = text
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string();
            let state =
                std::fs::read_to_string(Path::new(&dir).join("state.json")).unwrap_or_default();
            if state.contains(&format!("\"name\": \"{name}\"")) {
                return Some(pid);
            }
        }
    }
    None
}

/// A terminal the test owns: the master end, and everything read from it so far (a thread keeps reading until
/// every slave descriptor is closed).
struct Pty {
    master: std::os::fd::OwnedFd,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
    slave: Option<std::os::fd::OwnedFd>,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Pty {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut reader = std::fs::File::from(pty.master.try_clone().unwrap());
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // Ends with EIO once the last slave descriptor is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pty {
            master: pty.master,
            seen,
            slave: Some(pty.slave),
        }
    }

    /// `mvrun ARGS` with this terminal as its controlling terminal and stdio, as a shell would start it.
    fn spawn(&mut self, args: &[&str]) -> KillOnDrop {
        use std::os::unix::process::CommandExt;
        let slave = self.slave.take().expect("one process per terminal");
        let mut cmd = mvrun(args);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the child makes stdin its controlling terminal, so the
        // kernel sends it SIGWINCH when the test resizes the terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // `cmd` (and its copies of the slave) is dropped here: only the child holds the terminal now.
        KillOnDrop(Some(cmd.spawn().expect("spawn mvrun")))
    }

    fn write(&self, bytes: &[u8]) {
        nix::unistd::write(&self.master, bytes).expect("write to the terminal");
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the valid struct we pass.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.master),
                libc::TIOCSWINSZ,
                &ws,
            )
        };
        assert_eq!(rc, 0, "resize the test's terminal");
    }

    fn text(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`; panics with the output after `timeout`.
    fn expect(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal within {timeout:?}; it shows {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A child that is killed if the test fails before it ends (the CLI's death takes its VMM with it).
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait(mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One boot: `run -it` and `exec -it` on terminals the test allocates. The workload sees a pty of its own, sized
/// like ours from the start, echoing our keys; a resize of our terminal reaches it; an exec gets another pty with
/// its own size; `-t` without a terminal still gives one, `-it` without one is refused as Docker does; exit
/// codes pass through.
#[test]
fn guest_terminal_run_and_exec() {
    require_full_path!();
    let name = format!("tty-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut term = Pty::open(31, 97);
    let run_cli = term.spawn(&[
        "run", "--rm", "--name", &name, "-it", "busybox", "sh", "-c",
        "tty; stty size; read x; echo got:$x; while read y; do [ \"$y\" = q ] && exit 7; stty size; done",
    ]);
    term.expect("31 97\r\n", Duration::from_secs(600));
    assert!(
        term.text().contains("/dev/pts/0\r\n31 97\r\n"),
        "a pty of the container's own devpts, sized before the workload ran: {:?}",
        term.text()
    );
    // Raw mode here, the guest's terminal echoes and turns Enter (CR) into a newline.
    term.write(b"hello\r");
    term.expect("got:hello\r\n", Duration::from_secs(120));
    assert!(
        term.text().contains("hello\r\ngot:hello\r\n"),
        "{:?}",
        term.text()
    );

    // exec -it into the running sandbox: its own terminal and size, input, exit code.
    let mut term2 = Pty::open(40, 120);
    let exec_cli = term2.spawn(&[
        "exec",
        "-it",
        &name,
        "sh",
        "-c",
        "tty; stty size; read z; echo exec:$z; exit 5",
    ]);
    term2.expect("40 120\r\n", Duration::from_secs(300));
    assert!(
        term2.text().contains("/dev/pts/1\r\n"),
        "{:?}",
        term2.text()
    );
    term2.write(b"abc\r");
    term2.expect("exec:abc\r\n", Duration::from_secs(120));
    assert_eq!(exec_cli.wait(Duration::from_secs(60)), Some(5));

    // -t without a terminal on our side: still a pty in the guest (size 0x0, which busybox's stty refuses to
    // print), stderr merged into stdout with the terminal's CRLFs.
    let o = run(&["exec", "-t", &name, "sh", "-c", "tty; echo err >&2; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\nerr\r\n") && out.lines().count() == 2,
        "{out:?}"
    );
    assert!(!stderr(&o).contains("err\r"), "{}", stderr(&o));
    // -it without one is refused before anything runs.
    let o = run(&["exec", "-it", &name, "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("the input device is not a TTY"),
        "{}",
        stderr(&o)
    );

    // A resize of our terminal (SIGWINCH to the CLI's process group) reaches the workload's terminal. It travels
    // on the control connection and our keys on the stdin stream, so ask again until the new size shows.
    term.resize(50, 150);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !term.text().contains("50 150\r\n") {
        assert!(
            Instant::now() < deadline,
            "resize never arrived: {:?}",
            term.text()
        );
        term.write(b"\r");
        std::thread::sleep(Duration::from_secs(2));
    }
    term.write(b"q\r");
    assert_eq!(
        run_cli.wait(Duration::from_secs(300)),
        Some(7),
        "{:?}",
        term.text()
    );
}
