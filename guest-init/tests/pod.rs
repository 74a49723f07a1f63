//! Several containers in one agent (a pod), on the host as root: the sandbox container on the "boot" rootfs, an
//! app container on its own read-only erofs image behind a block device (a loop device standing in for the VM's
//! virtio slot), joining the sandbox's network, IPC and UTS namespaces and nothing else.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use agent_protocol::client::{attach_stream, Error as ClientError};
use agent_protocol::{
    Client, ContainerPlacement, JoinNamespaces, Namespace, ProcessSpec, RootfsDevice, StreamKind,
    WorkloadSpec, WORKLOAD,
};
use guest_init::agent::{Agent, Config};
use guest_init::container::{Reaper, Runtime};

/// A read-only loop device on an image file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(image: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(image)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn read_all(mut s: UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

struct Pod {
    agent: Arc<Agent>,
    work: tempfile::TempDir,
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Also when an assertion failed: no container, mount or loop device user is left behind.
        self.agent.stop();
    }
}

impl Pod {
    fn control(&self) -> Client<UnixStream> {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = self.agent.clone();
        thread::spawn(move || agent.serve_control(guest));
        Client::new(host)
    }

    fn stdout(&self, id: u32) -> UnixStream {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = self.agent.clone();
        let t = thread::spawn(move || agent.serve_stream(guest, StreamKind::Stdout));
        attach_stream(&mut host, id).unwrap();
        t.join().unwrap();
        host
    }

    /// Runs `script` as exec `id` in `container`; returns its stdout.
    fn exec(&self, container: &str, id: u32, script: &str) -> String {
        let out = self.stdout(id);
        let mut c = self.control();
        c.exec_in(container, id, &sh(script)).unwrap();
        let text = read_all(out);
        assert_eq!(c.wait(id).unwrap().code, 0, "{script}: {text}");
        text
    }

    fn mounted(&self, what: &str) -> bool {
        let needle = self.work.path().join("pods").join(what);
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&needle.display().to_string())
    }
}

fn mkfs_erofs(dir: &Path, image: &Path) -> bool {
    Command::new("mkfs.erofs")
        .arg(image)
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pod_members_have_their_own_rootfs_and_hardening_and_share_the_sandboxs_namespaces() {
    if common::skip("pod_members_have_their_own_rootfs") {
        return;
    }
    guest_init::host::become_subreaper();
    let sandbox_root = common::busybox_rootfs();
    std::fs::write(sandbox_root.path().join("which"), "sandbox\n").unwrap();
    let app_root = common::busybox_rootfs();
    std::fs::write(app_root.path().join("which"), "app\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("app.erofs");
    if !mkfs_erofs(app_root.path(), &image) {
        println!("SKIP: pod test: mkfs.erofs missing or failed (install erofs-utils)");
        return;
    }
    let Some(lo) = Loop::attach(&image) else {
        println!("SKIP: pod test: no loop device (losetup failed)");
        return;
    };
    // The agent only takes /dev/vdX names: vdb in the test's device directory is the loop device.
    let dev_dir = work.path().join("dev");
    std::fs::create_dir_all(&dev_dir).unwrap();
    std::os::unix::fs::symlink(&lo.0, dev_dir.join("vdb")).unwrap();
    let id = guest_init::host::container_id("pod-test");
    let runtime = Runtime {
        state_root: work.path().join("state"),
        bundle_root: work.path().join("bundles"),
        reaper: Reaper::start(),
    };
    let config = Config {
        rootfs: sandbox_root.path().to_path_buf(),
        work_dir: work.path().join("etc"),
        cgroups_path: format!("/mvrun/{id}").into(),
        container_id: id.clone(),
        pods_dir: work.path().join("pods"),
        device_dir: dev_dir,
        tmpfs_size: "16m".into(),
    };
    let pod = Pod {
        agent: Arc::new(Agent::new(runtime, config)),
        work,
    };
    let sandbox = format!("{id}-sb");
    let app = format!("{id}-app");
    let mut c = pod.control();

    // The sandbox container: the first, on the boot rootfs, named, init process 0.
    let sb = WorkloadSpec {
        process: sh("exec sleep 1000"),
        hostname: Some("podhost".into()),
        container: Some(ContainerPlacement {
            id: sandbox.clone(),
            process: WORKLOAD,
            ..Default::default()
        }),
        ..Default::default()
    };
    c.create_and_start(&sb).unwrap();

    // Refusals: the boot rootfs is taken, a taken process id, a device outside /dev/vdX, an unknown container.
    let member = |process: u32, device: &str, join: &str| WorkloadSpec {
        process: sh("exec sleep 1000"),
        cap_drop: vec!["ALL".into()],
        container: Some(ContainerPlacement {
            id: app.clone(),
            process,
            rootfs: Some(RootfsDevice {
                device: device.into(),
                fstype: None,
            }),
            join: Some(JoinNamespaces {
                container: join.into(),
                namespaces: vec![Namespace::Network, Namespace::Ipc, Namespace::Uts],
            }),
        }),
        ..Default::default()
    };
    let mut no_rootfs = member(10, "/dev/vdb", &sandbox);
    no_rootfs.container.as_mut().unwrap().rootfs = None;
    for (bad, why) in [
        (no_rootfs, "boot rootfs"),
        (member(WORKLOAD, "/dev/vdb", &sandbox), "is taken"),
        (member(10, "/dev/sda", &sandbox), "not /dev/vdX"),
        (member(10, "/dev/vdb", "nobody"), "no such container"),
    ] {
        match c.create_and_start(&bad) {
            Err(ClientError::Refused(m)) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    assert!(!pod.mounted(&app), "a refused member leaves no mount");

    // The app container: its own image on vdb, the sandbox's network/IPC/UTS.
    c.create_and_start(&member(10, "/dev/vdb", &sandbox))
        .unwrap();
    assert!(pod.mounted(&app));
    assert!(matches!(
        c.create_and_start(&member(11, "/dev/vdb", &sandbox)),
        Err(ClientError::Refused(_))
    ));

    // /proc/1 is the container's init (each has its own PID namespace): its hardening is the container's.
    let probe =
        "cat /which; hostname; for n in net uts ipc pid mnt; do readlink /proc/self/ns/$n; done; \
                 grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/1/status";
    let in_sb = pod.exec(&sandbox, 20, probe);
    let in_app = pod.exec(&app, 21, probe);
    println!("sandbox:\n{in_sb}app:\n{in_app}");
    let sb: Vec<&str> = in_sb.lines().collect();
    let ap: Vec<&str> = in_app.lines().collect();
    assert_eq!(
        (sb[0], ap[0]),
        ("sandbox", "app"),
        "each has its own rootfs"
    );
    assert_eq!((sb[1], ap[1]), ("podhost", "podhost"), "UTS is shared");
    assert_eq!(sb[2], ap[2], "network namespace is shared");
    assert_eq!(sb[3], ap[3], "UTS namespace is shared");
    assert_eq!(sb[4], ap[4], "IPC namespace is shared");
    assert_ne!(sb[5], ap[5], "PID namespace is the app's own");
    assert_ne!(sb[6], ap[6], "mount namespace is the app's own");
    assert!(in_sb.contains("CapEff:\t00000000a80425fb"), "{in_sb}");
    assert!(
        in_app.contains("CapEff:\t0000000000000000"),
        "its own capabilities: {in_app}"
    );
    assert!(in_app.contains("Seccomp:\t2") && in_app.contains("NoNewPrivs:\t1"));
    // An exec'd process runs under its container's filter too (libcontainer's tenant spec drops it).
    for (c, id) in [(&sandbox, 26), (&app, 27)] {
        let status = pod.exec(c, id, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status");
        assert_eq!(status, "NoNewPrivs:\t1\nSeccomp:\t2\n", "exec in {c}");
    }
    // Writes land in the app's own upper layer, not its image.
    pod.exec(&app, 22, "echo x > /written && cat /written");
    assert!(!app_root.path().join("written").exists());

    // Deleting the app unmounts its image; the sandbox goes on, and its device can be used again.
    c.delete_container(&app).unwrap();
    assert!(!pod.mounted(&app), "the app's mounts are gone");
    assert!(matches!(
        c.exec_in(&app, 23, &sh("true")),
        Err(ClientError::Refused(_))
    ));
    assert_eq!(pod.exec(&sandbox, 24, "cat /which"), "sandbox\n");
    c.create_and_start(&member(30, "/dev/vdb", &sandbox))
        .unwrap();
    assert_eq!(
        pod.exec(&app, 31, "cat /which; ls /written 2>&1 || true")
            .lines()
            .next(),
        Some("app")
    );
    assert!(
        !pod.exec(&app, 32, "ls / ").contains("written"),
        "a fresh upper layer"
    );

    pod.agent.stop();
    assert!(!pod.mounted(&app), "stop unmounts every member");
}
