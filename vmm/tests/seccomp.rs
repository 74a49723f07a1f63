//! The VMM's seccomp filters on /dev/kvm with hand-assembled guests: a guest runs to its end under each level, and
//! a system call outside the event loop's allowlist kills the whole process with SIGSYS (checked in a re-executed
//! copy of this test binary, so the test harness itself survives).

mod common;

use common::{kvm_usable, Console};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use vmm::seccomp::SeccompLevel;
use vmm::{build_vm, Payload, RawMode, VmConfig, VmExit};

/// Set in the re-executed child: run the guest instead of spawning.
const CHILD_ENV: &str = "MVRUN_VMM_SECCOMP_TEST_CHILD";

/// Prints "ok\n" on COM1, then resets through the i8042: the console write (a vCPU thread's write), the reset
/// (an eventfd write), the event loop noticing the end and stopping the vCPU all run under the filters.
fn print_and_reset() -> Vec<u8> {
    let mut code = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"ok\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // mov al, 0xfe; out 0x64, al; hlt
    code
}

/// A two-vCPU VM running `code` under the filters of `level`, and its console.
fn build(code: Vec<u8>, level: SeccompLevel) -> (vmm::Vmm, Console) {
    let console = Console::default();
    let config = VmConfig {
        payload: Payload::Raw {
            code,
            mode: RawMode::Real,
        },
        mem_mib: 16,
        vcpus: 2,
        seccomp: level,
        ..Default::default()
    };
    let vmm = build_vm(&config, Box::new(console.clone()), Instant::now()).expect("build VM");
    (vmm, console)
}

fn run(code: Vec<u8>, level: SeccompLevel, timeout: Duration) -> (vmm::RunOutcome, String) {
    let (vmm, console) = build(code, level);
    let outcome = vmm.run(Some(timeout));
    (outcome, console.text())
}

#[test]
fn a_guest_runs_to_its_end_at_every_level() {
    if !kvm_usable() {
        return;
    }
    for level in [
        SeccompLevel::Arguments,
        SeccompLevel::Syscalls,
        SeccompLevel::Off,
    ] {
        let (outcome, text) = run(print_and_reset(), level, Duration::from_secs(20));
        assert_eq!(outcome.exit, VmExit::Reset, "{level:?}");
        assert_eq!(text, "ok\n", "{level:?}");
    }
    // The calling thread has no filter of the VMM's: it can still open files.
    assert!(std::fs::read("/proc/self/status").is_ok());
}

#[test]
fn a_confined_runner_runs_the_guest_and_drops_the_vm_under_the_rest_filter() {
    if !kvm_usable() {
        return;
    }
    for level in [SeccompLevel::Arguments, SeccompLevel::Syscalls] {
        let (vmm, console) = build(print_and_reset(), level);
        // The runner filters itself once the VM's threads exist and drops the VM under that filter: a call
        // outside `rest` would kill this whole test process.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let runner = std::thread::spawn(move || {
            let outcome = vmm.run_confined(Some(Duration::from_secs(20)));
            // SAFETY: gettid has no arguments.
            let tid = unsafe { libc::gettid() };
            let _ = done_tx.send((outcome.exit, tid));
            let _ = go_rx.recv(); // stay alive while the test looks at this thread
        });
        let (exit, tid) = done_rx.recv().expect("runner");
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let _ = go_tx.send(());
        runner.join().expect("runner");
        assert_eq!(exit, VmExit::Reset, "{level:?}");
        assert_eq!(console.text(), "ok\n", "{level:?}");
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "the runner is filtered ({level:?})"
        );
    }
}

#[test]
fn a_spinning_guest_is_stopped_by_the_timeout_under_the_filters() {
    if !kvm_usable() {
        return;
    }
    // jmp $: only the timeout and the kicks (tgkill with the kick signal from the filtered event loop) end it.
    let (outcome, _) = run(
        vec![0xeb, 0xfe],
        SeccompLevel::Arguments,
        Duration::from_millis(500),
    );
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit, VmExit::Stopped);
}

#[test]
fn a_forbidden_call_on_the_event_loop_kills_the_vmm_with_sigsys() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIP: the forbidden-call hook exists only in debug builds");
        return;
    }
    if !kvm_usable() {
        return;
    }
    const NAME: &str = "a_forbidden_call_on_the_event_loop_kills_the_vmm_with_sigsys";
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: the event loop opens /etc/passwd right after its filter is on.
        let (outcome, _) = run(
            vec![0xeb, 0xfe],
            SeccompLevel::Arguments,
            Duration::from_secs(20),
        );
        panic!("the VMM survived its forbidden call: {outcome:?}");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("MVRUN_VMM_TEST_FORBIDDEN_SYSCALL", "1")
        .output()
        .expect("re-run this test binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{:?}\nstderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("survived"), "{stderr}");
    // Level 0 lets the same call through: the hook only reports it.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_forbidden_call_is_let_through_at_level_0",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env("MVRUN_VMM_TEST_FORBIDDEN_SYSCALL", "1")
        .output()
        .expect("re-run this test binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\nstderr: {stderr}", out.status);
}

/// Run by the test above in a child: at level 0 the forbidden call goes through and the VM runs to its end.
#[test]
fn a_forbidden_call_is_let_through_at_level_0() {
    if !kvm_usable() {
        return;
    }
    let (outcome, text) = run(
        print_and_reset(),
        SeccompLevel::Off,
        Duration::from_secs(20),
    );
    assert_eq!(outcome.exit, VmExit::Reset);
    assert_eq!(text, "ok\n");
}

/// What the filters cost at start: from the end of VM setup to the first KVM_RUN (starting the event-loop and
/// vCPU threads, which compile nothing but install their filters), median of 30 runs per level.
/// `cargo nextest run -p vmm --release --test seccomp --run-ignored only --no-capture`
#[test]
#[ignore = "a measurement, not a check"]
fn bench_setup_to_first_kvm_run() {
    if !kvm_usable() {
        return;
    }
    for level in [
        SeccompLevel::Off,
        SeccompLevel::Syscalls,
        SeccompLevel::Arguments,
    ] {
        let mut us: Vec<f64> = (0..30)
            .map(|_| {
                let (o, _) = run(print_and_reset(), level, Duration::from_secs(20));
                let first = o.timings.first_kvm_run.expect("the guest ran");
                (first - o.timings.setup).as_secs_f64() * 1e6
            })
            .collect();
        us.sort_by(f64::total_cmp);
        println!(
            "seccomp level {}: setup -> first KVM_RUN median {:.0} us (min {:.0}, max {:.0})",
            level.as_u8(),
            us[us.len() / 2],
            us[0],
            us[us.len() - 1]
        );
    }
}

/// The filters' own cost: compiling all of them (done once in `build_vm`) and installing one in a fresh thread
/// (done by each vCPU and the event loop before the guest runs), median of 200.
#[test]
#[ignore = "a measurement, not a check"]
fn bench_compile_and_install() {
    use vmm::seccomp::{compile, install, Filters, ThreadKind};
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let compile_us = median(
        (0..200)
            .map(|_| {
                let t = Instant::now();
                let f = Filters::new(SeccompLevel::Arguments).unwrap();
                let us = t.elapsed().as_secs_f64() * 1e6;
                assert!(f.vcpu.is_some());
                us
            })
            .collect(),
    );
    let vcpu = compile(ThreadKind::Vcpu, SeccompLevel::Arguments)
        .unwrap()
        .unwrap();
    let install_us = median(
        (0..200)
            .map(|_| {
                let p = vcpu.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    install(ThreadKind::Vcpu, &p).unwrap();
                    t.elapsed().as_secs_f64() * 1e6
                })
                .join()
                .unwrap()
            })
            .collect(),
    );
    println!(
        "compile vCPU + event-loop filters: {compile_us:.1} us; install one ({} BPF instructions): {install_us:.1} us",
        vcpu.len()
    );
}

/// The pattern the `rest` list is for (the VMM process's main thread): the VM runs on a thread started before the
/// filter goes on (a filter is inherited by threads started later, so `Vmm::run`'s own threads must not be
/// started under it), the main thread installs the `rest` filter, waits, reports the outcome on stdout and exits.
/// Checked in a re-executed child: a call outside the list would kill it with SIGSYS.
#[test]
fn a_main_thread_under_the_rest_filter_waits_reports_and_exits() {
    if !kvm_usable() {
        return;
    }
    const NAME: &str = "a_main_thread_under_the_rest_filter_waits_reports_and_exits";
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        // The parent's directory: removing it would take a call the list does not need.
        let dir = std::path::PathBuf::from(dir);
        let console = Console::default();
        let config = VmConfig {
            payload: Payload::Raw {
                code: print_and_reset(),
                mode: RawMode::Real,
            },
            mem_mib: 16,
            vcpus: 2,
            vsock: Some(vmm::config::VsockConfig {
                guest_cid: 3,
                uds_path: dir.join("v.sock"),
            }),
            rng: true,
            ..Default::default()
        };
        let vmm = build_vm(&config, Box::new(console.clone()), Instant::now()).expect("build VM");
        let runner = std::thread::spawn(move || vmm.run(Some(Duration::from_secs(20))));
        vmm::seccomp::apply(vmm::seccomp::ThreadKind::Rest, SeccompLevel::Arguments).unwrap();
        let outcome = runner.join().unwrap();
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "CHILD-OUTCOME {:?} {:?}", outcome.exit, console.text()).unwrap();
        out.flush().unwrap();
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("re-run this test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD-OUTCOME Reset \"ok\\n\""), "{stdout}");
    // The VM's drop, on the runner thread, removed the vsock socket.
    assert!(!dir.path().join("v.sock").exists());
}
