//! The whole product: `mvrun run` through the real VMM, guest kernel, guest-init, image store and container.
//!
//! Each test boots real microVMs. On a nested-PVM host every guest instruction is emulated (about a minute per
//! boot), so the suite keeps to a handful of boots, runs them serially (nextest group `guest-boot`), and makes
//! several honest checks per boot where one run shows several things (a command that prints its uid, its working
//! directory and an env variable proves `-u`, `-w` and `-e` at once). A test that cannot run here prints
//! `SKIP: reason` and returns.

#[path = "helpers/pty.rs"]
mod pty;
#[path = "helpers/requirements.rs"]
mod requirements;

use pty::Pty;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

/// Why the full path cannot run on this machine, if it cannot.
fn skip_reason() -> Option<String> {
    // busybox-static: the built-in image is made from it.
    requirements::kvm()
        .or_else(requirements::guest_init)
        .or_else(|| requirements::programs(&[("/bin/busybox", "busybox-static")]))
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

/// The `mvrun ps -a` line of the sandbox `name` (empty when it is not listed).
fn ps_line(name: &str) -> String {
    stdout(&run(&["ps", "-a"]))
        .lines()
        .find(|l| l.contains(name))
        .unwrap_or_default()
        .to_string()
}

/// Waits (up to the 600 s an emulated boot may take) until the detached sandbox `name` has logged `text`.
fn wait_for_log(name: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !stdout(&run(&["logs", name])).contains(text) {
        assert!(
            Instant::now() < deadline,
            "the detached sandbox {name} never logged {text:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
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

/// No real boot: the VMM's event-loop thread makes a forbidden system call right after installing its seccomp
/// filter (a hook of debug builds), the kernel kills the VMM process with SIGSYS, and mvrun says so with 125.
#[test]
fn guest_vmm_forbidden_syscall_is_killed_and_reported() {
    require_full_path!();
    if !cfg!(debug_assertions) {
        eprintln!("SKIP: the forbidden-call hook exists only in debug builds");
        return;
    }
    let name = format!("fp-sys-{:06x}", rand::random::<u32>() & 0xffffff);
    let start = Instant::now();
    let o = mvrun(&["run", "--name", &name, "busybox", "true"])
        .env("MVRUN_VMM_TEST_FORBIDDEN_SYSCALL", "1")
        .stdin(Stdio::null())
        .output()
        .expect("spawn mvrun");
    let err = stderr(&o);
    eprintln!("{:?} in {:?}\nstderr: {err}", o.status, start.elapsed());
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("seccomp") && err.contains("bad system call"),
        "{err}"
    );
    let line = ps_line(&name);
    assert!(line.contains("Exited"), "{line}");
    assert_eq!(run(&["rm", &name]).status.code(), Some(0));
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
    wait_for_log(&name, "started");
    let ps = run(&["ps"]);
    assert!(stdout(&ps).contains(&name));
    let e = run(&["exec", &name, "sh", "-c", "echo from-exec; exit 5"]);
    assert_eq!(e.status.code(), Some(5));
    assert_eq!(stdout(&e), "from-exec\n");
    let s = run(&["stop", "-t", "2", &name]);
    assert_eq!(s.status.code(), Some(0));
    let line = ps_line(&name);
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
    // The jailed VMM, the supervisor's child, must go too.
    let dir = sandbox_dir_of(vmm_pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    let jailed = loop {
        if let Some(pid) = jailed_vmm_in(&dir) {
            break Some(pid);
        }
        if std::env::var("MVRUN_UNSAFE_NO_JAIL").is_ok_and(|v| v == "1")
            || Instant::now() > deadline
        {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in std::iter::once(vmm_pid).chain(jailed) {
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "VMM process {pid} outlived its CLI"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The next command notices the dead sandbox and marks it exited.
    let line = ps_line(&name);
    assert!(line.contains("Exited"), "{line}");
    run(&["rm", &name]);
}

/// The sandbox directory on the command line of `mvrun-vmm` process `pid`.
fn sandbox_dir_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .nth(2)
        .unwrap_or_default()
        .to_string()
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

/// Removes a sandbox by name when dropped (a no-op when the test already removed it).
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = mvrun(&["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
    let run_cli = KillOnDrop(Some(term.spawn(mvrun(&[
        "run", "--rm", "--name", &name, "-it", "busybox", "sh", "-c",
        "tty; stty size; read x; echo got:$x; while read y; do [ \"$y\" = q ] && exit 7; stty size; done",
    ]))));
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
    let exec_cli = KillOnDrop(Some(term2.spawn(mvrun(&[
        "exec",
        "-it",
        &name,
        "sh",
        "-c",
        "tty; stty size; read z; echo exec:$z; exit 5",
    ]))));
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

/// Why the network test cannot run here (it needs `ip`, network namespaces and taps), if it cannot.
fn net_skip_reason() -> Option<String> {
    let ip = Command::new("ip").arg("-V").output();
    if !ip.is_ok_and(|o| o.status.success()) {
        return Some("iproute2's ip is not installed".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("ip {args:?}: {}", stderr(&o).trim()));
    }
    Ok(stdout(&o))
}

/// Builds tests/helpers/vsock_probe.rs static into `dir` (busybox has no vsock client).
fn build_vsock_probe(dir: &Path) -> Result<std::path::PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/vsock_probe.rs");
    let out = dir.join("vsock_probe");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let o = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if !o.status.success() {
        return Err(format!("cannot build a static vsock probe: {}", stderr(&o)));
    }
    Ok(out)
}

/// A quiet `mvrun exec NAME true` until it succeeds: the sandbox's container runs.
fn wait_exec_ready(name: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let ok = mvrun(&["exec", name, "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "sandbox {name} did not take an exec within {timeout:?}: {}",
            console_tail_of(name)
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The sandbox's directory, through the library's own lookup (where its sockets live may move).
fn sandbox_dir(name: &str) -> mvrun::sandbox::state::SandboxDir {
    mvrun::sandbox::state::StateDir::open(mvrun::paths::run_root())
        .expect("open the run dir")
        .find(name)
        .expect("find the sandbox")
        .0
}

fn console_tail_of(name: &str) -> String {
    let Ok(states) = mvrun::sandbox::state::StateDir::open(mvrun::paths::run_root()) else {
        return String::new();
    };
    let Ok((dir, _)) = states.find(name) else {
        return String::new();
    };
    let text = std::fs::read_to_string(dir.console_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "console of {name}:\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// `key=value` from output lines such as `ping_rc=0`.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// Everything the network test sets up on the host, torn down on every path (by name and by pid): sandboxes,
/// listeners, sockets, then the namespaces with their taps.
#[derive(Default)]
struct NetFixture {
    netns: Vec<String>,
    sandboxes: Vec<String>,
    children: Vec<std::process::Child>,
    sockets: Vec<std::path::PathBuf>,
}

impl Drop for NetFixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in &self.sandboxes {
                eprintln!("{}", console_tail_of(s));
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in &self.sandboxes {
            let _ = mvrun(&["rm", "-f", s])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        for ns in &self.netns {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// One sandbox's side of the network test: its namespace, tap and subnet.
struct Net {
    ns: String,
    name: String,
    host: String,
    guest: String,
}

/// Two boots, at the same time: sandboxes A and B, each with a tap in a network namespace the test made, on
/// different subnets. In A: ping to its tap's address and a wget of a 256 KiB file from an httpd in A's namespace
/// (sha256 compared); A reaches nothing of B's. From the host: B's guest serves HTTP to B's namespace (an inbound
/// connection) and not to A's; the root namespace has neither tap. vsock guest to host: a static probe copied into A
/// connects to CID 2 and reaches the listener at A's socket, not B's. B runs on a 64 MiB scratch disk, which df
/// shows. Figures (ping RTT, wget and vsock throughput) are printed as `FIGURE:` lines.
#[test]
fn guest_two_sandboxes_tap_network_vsock_and_scratch() {
    use sha2::Digest;
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixListener;

    require_full_path!();
    if let Some(reason) = net_skip_reason() {
        eprintln!("SKIP: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let probe = match build_vsock_probe(tmp.path()) {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let pid = std::process::id();
    // One tap name in both namespaces (and none in the root one): isolation, not distinct names, keeps them apart.
    let tap = format!("mvt{}", pid % 10_000_000);
    let nets: Vec<Net> = ["a", "b"]
        .iter()
        .zip([1, 2])
        .map(|(x, n)| Net {
            ns: format!("mvt-{pid}-{x}"),
            name: format!("net-{x}-{pid:x}"),
            host: format!("10.77.{n}.1"),
            guest: format!("10.77.{n}.2"),
        })
        .collect();
    let (a, b) = (&nets[0], &nets[1]);
    let mut fx = NetFixture::default();

    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let blob: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let blob_sha = hex::encode(sha2::Sha256::digest(&blob));

    for n in &nets {
        if let Err(e) = ip(&["netns", "add", &n.ns]) {
            eprintln!("SKIP: cannot make a network namespace: {e}");
            return;
        }
        fx.netns.push(n.ns.clone());
        for args in [
            vec!["-n", &n.ns, "link", "set", "lo", "up"],
            vec!["-n", &n.ns, "tuntap", "add", "dev", &tap, "mode", "tap"],
            vec![
                "-n",
                &n.ns,
                "addr",
                "add",
                &format!("{}/24", n.host),
                "dev",
                &tap,
            ],
            vec!["-n", &n.ns, "link", "set", &tap, "up"],
        ] {
            if let Err(e) = ip(&args) {
                eprintln!("SKIP: cannot set up a tap in a network namespace: {e}");
                return;
            }
        }
        let httpd = Command::new("ip")
            .args(["netns", "exec", &n.ns, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{}:8080", n.host))
            .arg("-h")
            .arg(&www)
            .stdin(Stdio::null())
            .spawn()
            .expect("start busybox httpd in the namespace");
        fx.children.push(httpd);
    }
    let root_links = ip(&["-o", "link", "show"]).unwrap();
    assert!(
        !root_links.contains(&tap),
        "the root namespace sees no tap: {root_links}"
    );

    // Both sandboxes boot at once. Two emulated guests share the CPUs: give each more than one guest's default
    // time to bring its agent up (the mvrun processes inherit this process's environment).
    std::env::set_var("MVRUN_BOOT_TIMEOUT", "1500");
    let boot = Instant::now();
    for (i, n) in nets.iter().enumerate() {
        fx.sandboxes.push(n.name.clone());
        let network = format!("tap:{tap},netns=/var/run/netns/{}", n.ns);
        let cidr = format!("{}/24", n.guest);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &n.name,
            "--network",
            &network,
            "--ip",
            &cidr,
            "--gateway",
            &n.host,
        ];
        if i == 1 {
            args.extend(["--storage-opt", "size=64m"]);
        }
        args.extend(["busybox", "sleep", "7200"]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    for n in &nets {
        wait_exec_ready(&n.name, Duration::from_secs(1500));
        eprintln!(
            "FIGURE: {} took an exec {:.0?} after both were started (two emulated guests booting at once)",
            n.name,
            boot.elapsed()
        );
    }

    // A: ping its tap, fetch the blob over TCP, and fail to reach anything of B's.
    let script = format!(
        "ping -c 3 {gw}; echo ping_rc=$?; \
         read t0 x < /proc/uptime; wget -q -O /tmp/blob http://{gw}:8080/blob; echo wget_rc=$?; \
         read t1 x < /proc/uptime; echo t0=$t0; echo t1=$t1; sha256sum /tmp/blob; \
         ping -c 2 -w 8 {bg} >/dev/null 2>&1; echo cross_ping_rc=$?; \
         timeout 20 wget -q -O /dev/null http://{bh}:8080/blob 2>/dev/null; echo cross_wget_rc=$?",
        gw = a.host,
        bg = b.guest,
        bh = b.host
    );
    let o = run(&["exec", &a.name, "sh", "-c", &script]);
    let out = stdout(&o);
    assert_eq!(field(&out, "ping_rc"), Some("0"), "{out}");
    assert!(out.contains("3 packets received"), "{out}");
    assert_eq!(field(&out, "wget_rc"), Some("0"), "{out}");
    assert!(out.contains(&format!("{blob_sha}  /tmp/blob")), "{out}");
    assert_ne!(
        field(&out, "cross_ping_rc"),
        Some("0"),
        "A reached B's guest: {out}"
    );
    assert_ne!(
        field(&out, "cross_wget_rc"),
        Some("0"),
        "A reached B's host side: {out}"
    );
    if let Some(rtt) = out.lines().find(|l| l.contains("round-trip")) {
        eprintln!("FIGURE: guest A ping to its tap: {}", rtt.trim());
    }
    let secs = |k| field(&out, k).and_then(|v| v.parse::<f64>().ok());
    if let (Some(t0), Some(t1)) = (secs("t0"), secs("t1")) {
        let dt = (t1 - t0).max(0.01);
        eprintln!(
            "FIGURE: guest A wget of 256 KiB from its namespace: {dt:.2} s, {:.0} KiB/s",
            256.0 / dt
        );
    }

    // B: ping its tap, serve HTTP from the guest, and show the scratch disk under the container's root.
    let script = format!(
        "ping -c 3 {gw}; echo ping_rc=$?; df -k /; \
         mkdir -p /tmp/www && echo served-by-{name} > /tmp/www/index.html && httpd -p 8080 -h /tmp/www; \
         echo httpd_rc=$?",
        gw = b.host,
        name = b.name
    );
    let o = run(&["exec", &b.name, "sh", "-c", &script]);
    let out = stdout(&o);
    assert_eq!(field(&out, "ping_rc"), Some("0"), "{out}");
    assert_eq!(field(&out, "httpd_rc"), Some("0"), "{out}");
    // df -k: "overlay <1K-blocks> <used> <available> <use%> /"; ext4 keeps some of the 64 MiB for itself.
    let root_kib: u64 = out
        .lines()
        .find(|l| l.trim_end().ends_with(" /"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no df line for /: {out}"));
    assert!(
        (40 * 1024..=64 * 1024).contains(&root_kib),
        "the container's root sits on the 64 MiB scratch disk: {root_kib} KiB: {out}"
    );
    // An inbound connection into B's guest from B's namespace; A's namespace has no way there.
    let fetch = |ns: &str| {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "timeout", "60", "busybox", "wget", "-q", "-O", "-",
            ])
            .arg(format!("http://{}:8080/", b.guest))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = fetch(&b.ns);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("served-by-{}\n", b.name));
    let o = fetch(&a.ns);
    assert!(
        !o.status.success(),
        "A's namespace reached B's guest: {}",
        stdout(&o)
    );

    // vsock, guest to host: a listener on each sandbox's socket + port; the probe in A reaches A's only.
    const PORT: u32 = 7070;
    const PAYLOAD: usize = 64 * 1024;
    let listen = |n: &Net| {
        let path = std::path::PathBuf::from(format!(
            "{}_{PORT}",
            sandbox_dir(&n.name).vsock_path().display()
        ));
        let l = UnixListener::bind(&path).expect("listen on the sandbox's vsock port");
        // The jailed VMM connects as its sandbox's unprivileged uid (docs/jail.md): connect needs write access.
        let dir = sandbox_dir(&n.name);
        let id = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let uid = mvrun::sandbox::jail::jail_id(&id);
        std::os::unix::fs::chown(&path, Some(uid), Some(uid))
            .expect("give the listener to the jail's uid");
        (l, path)
    };
    let (listener_a, path_a) = listen(a);
    let (listener_b, path_b) = listen(b);
    fx.sockets.extend([path_a, path_b]);
    listener_b.set_nonblocking(true).unwrap();
    let host_side = std::thread::spawn(move || {
        let (stream, _) = listener_a.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        let ok = rest.iter().all(|b| *b == b'v');
        let _ = writeln!(&stream, "host got {} bytes (all v: {ok})", rest.len());
        (line, rest.len())
    });
    let copy_start = Instant::now();
    let copy = mvrun(&[
        "exec",
        "-i",
        &a.name,
        "sh",
        "-c",
        "cat > /tmp/probe && chmod +x /tmp/probe",
    ])
    .stdin(std::fs::File::open(&probe).unwrap())
    .status()
    .unwrap();
    assert!(copy.success(), "copy the probe into A");
    eprintln!(
        "FIGURE: {} bytes copied into A through exec -i (vsock host to guest, cat to the overlay) in {:.1?}",
        std::fs::metadata(&probe).unwrap().len(),
        copy_start.elapsed()
    );
    let o = run(&[
        "exec",
        &a.name,
        "/tmp/probe",
        "2",
        &PORT.to_string(),
        &PAYLOAD.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let (line, n) = host_side.join().unwrap();
    assert_eq!(line, "hello from the guest\n");
    assert_eq!(n, PAYLOAD);
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "host answered: host got {PAYLOAD} bytes (all v: true)"
        )),
        "{out}"
    );
    assert!(
        listener_b.accept().is_err(),
        "B's listener saw a connection from A's guest"
    );
    if let Some(us) = out
        .split_whitespace()
        .skip_while(|w| *w != "in")
        .nth(1)
        .and_then(|w| w.parse::<f64>().ok())
    {
        eprintln!(
            "FIGURE: guest A vsock to host: {PAYLOAD} bytes sent in {:.1} ms ({:.0} KiB/s)",
            us / 1000.0,
            PAYLOAD as f64 / 1024.0 / (us / 1e6).max(1e-6)
        );
    }
    drop(fx);
}

/// The VMM process of the sandbox whose supervisor (keeper) runs from sandbox directory `dir`: the `mvrun-vmm`
/// whose command line has `--vmm` and `dir`.
fn jailed_vmm_in(dir: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"--vmm".as_slice()) && args.contains(&dir.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// One boot: the VMM of a running sandbox is jailed: its root is a tmpfs that holds none of the host's files, it
/// runs as the unprivileged jail uid with no capabilities and no_new_privs, in its own PID, mount and network
/// namespaces, with lowered rlimits, in its own cgroup; stop and rm remove the cgroup and the jail directory.
#[test]
fn guest_vmm_is_jailed_and_cleaned_up() {
    require_full_path!();
    if std::env::var("MVRUN_UNSAFE_NO_JAIL").is_ok_and(|v| v == "1") {
        eprintln!("SKIP: MVRUN_UNSAFE_NO_JAIL=1 turns the jail off");
        return;
    }
    let name = format!("jail-{:06x}", rand::random::<u32>() & 0xffffff);
    // A failed check must not leave the sandbox running (the test removes it itself when all is well).
    let _cleanup = RemoveOnDrop(name.clone());
    // A host file the jail must not show.
    let marker = format!("/tmp/mvrun-jail-marker-{name}");
    std::fs::write(&marker, b"host only").unwrap();
    let o = run(&[
        "run",
        "-d",
        "--name",
        &name,
        "busybox",
        "sh",
        "-c",
        "echo up; exec sleep 600",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let id = stdout(&o).trim().to_string();
    let run_dir = std::env::var("MVRUN_RUN_DIR").unwrap_or_else(|_| "/run/mvrun".into());
    let dir = format!("{run_dir}/{id}");
    wait_for_log(&name, "up");
    let pid = jailed_vmm_in(&dir).expect("a VMM process with --vmm for the sandbox");
    let proc_ = |p: &str| format!("/proc/{pid}/{p}");

    // Filesystem: a root of its own, with the VM's files and none of the host's.
    let root = proc_("root");
    assert!(Path::new(&root).join("vmlinux").exists());
    assert!(Path::new(&root).join("rootfs").exists());
    assert!(Path::new(&root).join("vm/vsock.sock").exists());
    assert!(Path::new(&root).join("dev/kvm").exists());
    for host_only in [
        marker.as_str(),
        "/etc/hostname",
        "/etc/passwd",
        "/bin/sh",
        "/proc/self",
        "/sys/fs",
    ] {
        assert!(
            !Path::new(&root)
                .join(host_only.trim_start_matches('/'))
                .exists(),
            "{host_only} is visible in the jail"
        );
    }
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["dev", "initrd", "rootfs", "vm", "vmlinux"]);
    let mounts = std::fs::read_to_string(proc_("mountinfo")).unwrap();
    let root_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        root_mount.contains(" ro,") && root_mount.contains("tmpfs"),
        "{root_mount}"
    );
    let rootfs_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/rootfs"))
        .unwrap();
    assert!(rootfs_mount.contains(" ro,"), "{rootfs_mount}");

    // Namespaces: PID, mount, network (and IPC, UTS) of its own.
    for ns in ["pid", "mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(proc_(&format!("ns/{ns}"))).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares the host's {ns} namespace");
    }
    assert_eq!(
        status_field(pid, "NSpid").split_whitespace().last(),
        Some("1"),
        "PID 1 of its namespace"
    );

    // Credentials: the unprivileged jail uid/gid, no groups, no capabilities, no_new_privs.
    let uid = mvrun::sandbox::jail::jail_id(&id).to_string();
    assert_eq!(
        status_field(pid, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [uid.as_str(); 4]
    );
    assert_eq!(
        status_field(pid, "Gid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [uid.as_str(); 4]
    );
    assert_eq!(status_field(pid, "Groups"), "");
    for caps in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    // Every thread runs under a seccomp filter (docs/vmm-seccomp.md): the vCPU and event-loop threads under
    // theirs, the main thread (which runs the VM and drops it) and the signal thread under the rest filter.
    let threads: Vec<String> = std::fs::read_dir(proc_("task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        // KVM's own worker (kvm-nx-lpage-recovery) is a kernel thread attached to the VM's process.
        .filter(|c| !c.starts_with("kvm-"))
        .collect();
    assert_eq!(
        threads.len(),
        4,
        "one vCPU, events, signals, main: {threads:?}"
    );
    for thread in ["vcpu0", "vmm-events", "mvrun-vmm", "vmm-signals"] {
        let task = std::fs::read_dir(proc_("task"))
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == thread)
            })
            .unwrap_or_else(|| panic!("no {thread} thread in the VMM"));
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "{thread} has no seccomp filter"
        );
    }

    // rlimits.
    let limits = std::fs::read_to_string(proc_("limits")).unwrap();
    let limit = |what: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(what))
            .map(|l| {
                l[what.len()..]
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let nofile = mvrun::sandbox::jail::NOFILE.to_string();
    assert_eq!(limit("Max open files"), format!("{nofile} {nofile}"));
    let fsize = mvrun::sandbox::jail::FSIZE_MIN.to_string();
    assert_eq!(limit("Max file size"), format!("{fsize} {fsize}"));

    // Its own cgroup, with the limits set.
    let cgroup = mvrun::sandbox::cgroup::path_of(&id);
    let member = mvrun::sandbox::cgroup::membership(pid, &id);
    assert!(
        !member.is_empty(),
        "not in {}: {}",
        cgroup.display(),
        std::fs::read_to_string(proc_("cgroup")).unwrap()
    );
    eprintln!("cgroup membership: {member:?}");
    assert!(mvrun::sandbox::cgroup::cgroup_exists(&id));

    // The jail's mountpoint on the host is an empty directory: the tmpfs lives in the VMM's namespace only.
    assert_eq!(std::fs::read_dir(format!("{dir}/root")).unwrap().count(), 0);

    assert_eq!(run(&["stop", "-t", "1", &name]).status.code(), Some(0));
    // stop kills a supervisor whose guest lingers in its shutdown; the next command then cleans up after it.
    let line = ps_line(&name);
    assert!(line.contains("Exited"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the VMM {pid} outlived stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !mvrun::sandbox::cgroup::cgroup_exists(&id),
        "the cgroup outlived stop"
    );
    assert!(
        !Path::new(&format!("{dir}/root")).exists(),
        "the jail directory outlived stop"
    );
    assert!(
        !Path::new(&format!("{dir}/vm")).exists(),
        "the socket directory outlived stop"
    );
    assert_eq!(run(&["rm", &name]).status.code(), Some(0));
    assert!(!Path::new(&dir).exists());
    let _ = std::fs::remove_file(&marker);
}
