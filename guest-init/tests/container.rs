//! The hardening defaults, each with a probe that fails when the default is missing. Runs `guest-init run` as
//! root against a busybox rootfs built by the test.

mod common;

use common::{busybox_rootfs, run, sh, skip};

#[test]
fn status_shows_docker_caps_seccomp_and_no_new_privs() {
    if skip("status_shows_docker_caps_seccomp_and_no_new_privs") {
        return;
    }
    let root = busybox_rootfs();
    let r = sh(
        root.path(),
        &[],
        "grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status",
    );
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("CapEff:\t00000000a80425fb"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("CapBnd:\t00000000a80425fb"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Seccomp:\t2"), "{}", r.stdout);
    assert!(r.stdout.contains("NoNewPrivs:\t1"), "{}", r.stdout);

    // Each relaxation flag does what it says.
    let r = sh(
        root.path(),
        &[
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges=false",
            "--cap-drop",
            "ALL",
        ],
        "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status",
    );
    assert!(
        r.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Seccomp:\t0"), "{}", r.stdout);
    assert!(r.stdout.contains("NoNewPrivs:\t0"), "{}", r.stdout);
}

#[test]
fn privileged_operations_are_refused() {
    if skip("privileged_operations_are_refused") {
        return;
    }
    let root = busybox_rootfs();
    let probe = |script: &str| sh(root.path(), &[], script);
    assert_ne!(
        probe("mount -t tmpfs none /tmp").code,
        0,
        "mount must be refused"
    );
    let r = probe("unshare -U true");
    assert_ne!(r.code, 0, "unshare -U must be refused");
    assert!(r.stderr.contains("not permitted"), "{}", r.stderr);
    let r = probe("echo x > /proc/sys/kernel/hostname");
    assert_ne!(r.code, 0, "writing /proc/sys must be refused");
    assert!(r.stderr.contains("Read-only"), "{}", r.stderr);
    // /proc/kcore is masked (bind of /dev/null) where the kernel has one; this host's may not exist at all.
    let r = probe("test ! -e /proc/kcore || test $(wc -c < /proc/kcore) -eq 0");
    assert_eq!(r.code, 0, "/proc/kcore must be empty or absent");
    for masked in ["/proc/keys", "/proc/timer_list", "/proc/sched_debug"] {
        let r = probe(&format!(
            "test ! -e {masked} || test $(wc -c < {masked}) -eq 0"
        ));
        assert_eq!(r.code, 0, "{masked} must be masked");
    }
    // CAP_MKNOD lets it make the node; the device cgroup must still refuse opening it.
    let r = probe("mknod /tmp/sda b 8 0 && head -c1 /tmp/sda > /dev/null");
    assert_ne!(r.code, 0, "reading a raw block device must be refused");
    assert!(r.stderr.contains("not permitted"), "{}", r.stderr);
    // Only the default device nodes.
    let r = probe("ls /dev");
    for node in r.stdout.split_whitespace() {
        assert!(
            [
                "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts",
                "shm", "mqueue", "fd", "stdin", "stdout", "stderr"
            ]
            .contains(&node),
            "unexpected /dev/{node}"
        );
    }
}

#[test]
fn keyctl_and_ptrace_outside_are_refused() {
    if skip("keyctl_and_ptrace_outside_are_refused") {
        return;
    }
    let root = busybox_rootfs();
    if !root.path().join("probe").exists() {
        println!("SKIP: keyctl_and_ptrace_outside_are_refused: examples/probe not built (run via cargo test)");
        return;
    }
    let r = run(root.path(), &["--", "/probe", "keyctl"]);
    assert_eq!(
        r.stdout.trim(),
        format!("errno {}", libc::EPERM),
        "keyctl must be refused by seccomp"
    );
    // Same call unconfined succeeds: the probe itself works.
    let r = run(
        root.path(),
        &[
            "--security-opt",
            "seccomp=unconfined",
            "--",
            "/probe",
            "keyctl",
        ],
    );
    assert_eq!(r.stdout.trim(), "ok");
    // The test process is outside the container: its pid is not even visible.
    let outside = std::process::id().to_string();
    let r = run(root.path(), &["--", "/probe", "ptrace", &outside]);
    assert!(
        r.stdout.starts_with("errno"),
        "ptrace of an outside process must fail: {}",
        r.stdout
    );
}

#[test]
fn raw_sockets_follow_net_raw() {
    if skip("raw_sockets_follow_net_raw") {
        return;
    }
    let root = busybox_rootfs();
    // Docker's default set keeps NET_RAW: ping on loopback works.
    let r = sh(root.path(), &[], "ping -c1 -W1 127.0.0.1");
    assert_eq!(r.code, 0, "ping with NET_RAW and loopback up");
    let r = sh(
        root.path(),
        &["--cap-drop", "NET_RAW"],
        "ping -c1 -W1 127.0.0.1",
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
}

#[test]
fn limits_kill_and_stop() {
    if skip("limits_kill_and_stop") {
        return;
    }
    let root = busybox_rootfs();
    let r = sh(
        root.path(),
        &["--memory", "32m"],
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    assert_eq!(r.code, 137, "memory limit must OOM-kill with 137");
    let r = sh(
        root.path(),
        &["--pids-limit", "20"],
        "n=0; for i in $(seq 60); do sleep 3 & n=$((n+1)); done 2>/dev/null; echo started $n",
    );
    assert!(
        r.stderr.contains("can't fork") || r.code != 0,
        "fork bomb must be stopped: {}",
        r.stderr
    );
}

#[test]
fn user_read_only_and_exit_codes() {
    if skip("user_read_only_and_exit_codes") {
        return;
    }
    let root = busybox_rootfs();
    let r = run(root.path(), &["--user", "65534", "--", "id", "-u"]);
    assert_eq!(r.stdout.trim(), "65534");
    let r = run(
        root.path(),
        &[
            "--user",
            "nobody",
            "--",
            "sh",
            "-c",
            "id -u; grep CapEff /proc/self/status",
        ],
    );
    assert!(
        r.stdout.starts_with("65534") && r.stdout.contains("0000000000000000"),
        "{}",
        r.stdout
    );
    let r = run(root.path(), &["--read-only", "--", "touch", "/x"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Read-only"), "{}", r.stderr);
    let r = run(
        root.path(),
        &[
            "--read-only",
            "--tmpfs",
            "/scratch",
            "--",
            "touch",
            "/scratch/x",
        ],
    );
    assert_eq!(r.code, 0, "a --tmpfs stays writable under --read-only");

    assert_eq!(run(root.path(), &["--", "true"]).code, 0);
    assert_eq!(sh(root.path(), &[], "exit 42").code, 42);
    assert_eq!(run(root.path(), &["--", "no-such-command"]).code, 127);
    assert_eq!(run(root.path(), &["--", "/no/such/path"]).code, 127);
    std::fs::write(root.path().join("not-executable"), "#!/bin/sh\n").unwrap();
    assert_eq!(run(root.path(), &["--", "/not-executable"]).code, 126);

    let r = run(
        root.path(),
        &[
            "--workdir",
            "/tmp",
            "--env",
            "A=b",
            "--hostname",
            "box",
            "--",
            "sh",
            "-c",
            "pwd; echo $A; hostname",
        ],
    );
    assert_eq!(r.stdout, "/tmp\nb\nbox\n");
    // guest-init's own failures are 125 with one line naming the problem.
    let r = run(root.path(), &["--cap-add", "FLY", "--", "true"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("FLY"), "{}", r.stderr);
    let r = run(root.path(), &["--user", "ghost", "--", "true"]);
    assert_eq!(r.code, 125);
}

#[test]
fn network_device_moves_in_and_etc_files_appear() {
    if skip("network_device_moves_in_and_etc_files_appear") {
        return;
    }
    let root = busybox_rootfs();
    // No device: loopback only, and the generated /etc files are there.
    let r = sh(
        root.path(),
        &["--hostname", "box"],
        "ls /sys/class/net; cat /etc/hostname; grep box /etc/hosts",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("lo\nbox\n"), "{}", r.stdout);

    // A (persistent, unattached) tap link stands in for the VM's virtio-net device: tun is built into kernels
    // that cannot load the dummy or veth modules.
    let name = format!("gid{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !ip(&["tuntap", "add", "name", &name, "mode", "tap"]) {
        println!("SKIP: network_device_moves_in_and_etc_files_appear: cannot create a tap link (ip from iproute2)");
        return;
    }
    let r = sh(
        root.path(),
        &[
            "--net-device",
            &name,
            "--ip",
            "10.77.0.2/24",
            "--gateway",
            "10.77.0.1",
            "--mtu",
            "1400",
            "--dns",
            "10.77.0.1",
        ],
        &format!(
            "ip -4 addr show {name}; ip route; cat /sys/class/net/{name}/mtu; cat /etc/resolv.conf"
        ),
    );
    // A tap outlives the container's netns (it returns to ours): remove it either way.
    let _ = ip(&["link", "del", &name]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("inet 10.77.0.2/24"), "{}", r.stdout);
    assert!(r.stdout.contains("default via 10.77.0.1"), "{}", r.stdout);
    assert!(r.stdout.contains("1400\n"), "{}", r.stdout);
    assert!(r.stdout.contains("nameserver 10.77.0.1"), "{}", r.stdout);
}

#[test]
fn host_run_on_a_terminal() {
    if skip("host_run_on_a_terminal") {
        return;
    }
    let root = busybox_rootfs();
    // Not a terminal on our side: still one in the container, output merged with its CRLFs.
    let r = run(
        root.path(),
        &["-t", "--", "sh", "-c", "tty; echo err >&2; exit 4"],
    );
    assert_eq!(r.code, 4);
    assert_eq!(r.stdout, "/dev/pts/0\r\nerr\r\n");
    assert!(!r.stderr.contains("err"), "{}", r.stderr);
}
