//! Pods through containerd's CRI plugin: Debian's containerd with the CRI plugin on (its own root, state, socket
//! and config under a temporary directory), Debian's CNI plugins (bridge + host-local + loopback) with a config
//! of this test's own, and our CRI client (tests/helpers/cri_client.rs; Debian 12 has no crictl). The same pod
//! runs under the `runc` handler and the `mvrun` handler (`io.containerd.mvrun.v2`), every check printed for both
//! side by side.
//!
//! No network here: the sandbox (pause) image is built locally (busybox, whose `sleep` stands in for pause) and
//! imported into containerd's `k8s.io` namespace, and `sandbox_image` names it.
//!
//! What a pod shows: CNI gave it an address; the host reaches that address (its kernel answers); under mvrun one
//! VMM process runs the pod, the CNI namespace holds the tap and the two tc redirects, and the guest holds the
//! address. Two containers of the pod (a web server and a client) share its network: the client fetches the
//! server's page over localhost, both see the pod's address on eth0, and the host fetches the page at the pod IP;
//! under mvrun they run in the sandbox's VM (still one VMM). Stop + remove leave no VMM, tap, namespace or CNI
//! state. A test that cannot run prints `SKIP: reason`.

#[path = "helpers/containerd.rs"]
mod containerd;
#[path = "helpers/cri_client.rs"]
mod cri_client;
#[path = "helpers/requirements.rs"]
mod requirements;

use containerd::{busybox_image_tar, daemon_dir, processes_mentioning, Daemon};
use cri_client::CriClient;
use std::collections::HashSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/mvrun/cri-test:latest";
const K8S_NS: &str = "k8s.io";
const TAP: &str = "tap0_mvrun";

fn skip_reason() -> Option<String> {
    requirements::root("containerd's CRI plugin and CNI")
        .or_else(requirements::kvm)
        .or_else(|| {
            requirements::programs(&[
                ("/usr/bin/containerd", "containerd"),
                ("/usr/bin/ctr", "containerd"),
                ("/usr/bin/containerd-shim-runc-v2", "containerd"),
                ("/usr/sbin/runc", "runc"),
                ("/usr/lib/cni/bridge", "containernetworking-plugins"),
                ("/usr/lib/cni/host-local", "containernetworking-plugins"),
                ("/usr/lib/cni/loopback", "containernetworking-plugins"),
                ("/bin/busybox", "busybox-static"),
                ("/usr/bin/mkfs.erofs", "erofs-utils"),
                ("/usr/sbin/ip", "iproute2"),
                ("/usr/sbin/tc", "iproute2"),
            ])
        })
        .or_else(requirements::guest_init)
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn netns_names() -> HashSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// containerd with the CRI plugin, CNI and both runtime handlers; everything it and its pods made is removed when
/// dropped (pods through CRI, then containerd, shims and VMMs by pid, the bridge, the namespaces and CNI state).
struct Cri {
    d: Daemon,
    /// CNI's network name and bridge, unique to this run.
    net_name: String,
    bridge: String,
    subnet: u32,
    netns_before: HashSet<String>,
}

impl Cri {
    fn start() -> Cri {
        let dir = daemon_dir("cri");
        let d = dir.path();
        let pid = std::process::id();
        let subnet = 10 + pid % 200;
        let net_name = format!("mvrun-cri-{pid}");
        let bridge = format!("mvcri{}", pid % 100_000);
        std::fs::create_dir_all(d.join("cni")).unwrap();
        std::fs::create_dir_all(d.join("run")).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net_name,
            "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.205.{subnet}.0/24")}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": d.join("ipam")}
            }]
        });
        std::fs::write(d.join("cni/10-mvrun.conflist"), conflist.to_string()).unwrap();
        // restrict_oom_score_adj: these machines lack CAP_SYS_RESOURCE for the sandbox's oom_score_adj -998, and
        // runc's RunPodSandbox fails without it.
        let config = format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.mvrun]
      runtime_type = "io.containerd.mvrun.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1"#,
            cni = d.join("cni").display(),
        );
        // The shim's runtime directories (and so its VMMs' sockets) stay under this test's directory.
        let run_dir = d.join("run");
        let netns_before = netns_names();
        let daemon = Daemon::start(dir, K8S_NS, &config, &[("MVRUN_RUN_DIR", &run_dir)]);
        Cri {
            d: daemon,
            net_name,
            bridge,
            subnet,
            netns_before,
        }
    }

    fn run_root(&self) -> PathBuf {
        self.dir().join("run")
    }

    fn client(&self) -> CriClient {
        CriClient::connect(&self.sock()).unwrap()
    }

    fn import_image(&self) {
        // Its default command sleeps, so it serves as the pod's sandbox image too.
        let tar = busybox_image_tar(
            self.dir(),
            IMAGE,
            &["sleep", "2147483647"],
            &[
                "sh", "echo", "cat", "sleep", "true", "ls", "ps", "hostname", "ip", "ifconfig",
                "wget", "httpd", "nc", "grep",
            ],
            &[("www/index.html", "hello from the pod\n")],
        );
        let o = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }

    /// The `mvrun-vmm` processes of this containerd's mvrun shims: each VM has a keeper (unjailed) and the
    /// jailed VMM proper (its command line ends in `--vmm ...`).
    fn vmm_processes(&self) -> Vec<(i32, bool)> {
        let root = self.run_root().display().to_string();
        processes_mentioning("--sandbox")
            .into_iter()
            .filter_map(|pid| {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                (exe.file_name().is_some_and(|n| n == "mvrun-vmm")
                    && String::from_utf8_lossy(&cmd).contains(&root))
                .then(|| (pid, args.contains(&&b"--vmm"[..])))
            })
            .collect()
    }

    /// The jailed VMM processes: one per VM.
    fn vmm_pids(&self) -> Vec<i32> {
        self.vmm_processes()
            .into_iter()
            .filter_map(|(pid, vmm)| vmm.then_some(pid))
            .collect()
    }

    /// The namespaces CRI made since this containerd started.
    fn new_netns(&self) -> Vec<String> {
        netns_names()
            .difference(&self.netns_before)
            .filter(|n| n.starts_with("cni-"))
            .cloned()
            .collect()
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        if let Ok(mut c) = CriClient::connect(&self.sock()) {
            for pod in c.pods().unwrap_or_default() {
                let _ = c.stop_pod(&pod);
                let _ = c.remove_pod(&pod);
            }
        }
        self.d.stop();
        for (pid, _) in self.vmm_processes() {
            // SAFETY: kill(2) on a VMM under this harness's runtime directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        for ns in self.new_netns() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
        if let Ok(d) = std::fs::read_dir("/var/lib/cni/results") {
            for e in d.flatten() {
                if e.file_name().to_string_lossy().starts_with(&self.net_name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

// The harness's daemon methods (ctr, sock, log_tail, ...) on the test's containerd.
impl std::ops::Deref for Cri {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

/// Whether the host reaches `ip` and a kernel there answers: a UDP datagram to a closed port comes back as ICMP
/// port-unreachable, which a connected UDP socket reports as ECONNREFUSED. No ping binary needed.
fn host_reaches(ip: Ipv4Addr) -> Result<Duration, String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.connect((ip, 9)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut last = String::new();
    // A few tries: the first datagram may wait on ARP, and an emulated guest answers slowly.
    for _ in 0..10 {
        let _ = s.send(b"mvrun");
        let mut buf = [0u8; 16];
        match s.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Ok(start.elapsed())
            }
            Err(e) => last = e.to_string(),
            Ok(_) => last = "an answer from port 9".into(),
        }
    }
    Err(format!("no ICMP answer from {ip}: {last}"))
}

/// `[handler] what: result` lines, the two handlers' next to each other.
fn report(handler: &str, what: &str, result: impl std::fmt::Display) {
    eprintln!("[{handler:<5}] {what}: {result}");
}

/// Two containers in pod `pod`: a web server and a client. The client reaches the server over localhost (one
/// network namespace), sees the pod's address on its own interfaces, and the host reaches the server at the pod
/// IP; under mvrun no VMM is added (the containers run in the sandbox's VM).
fn containers_in(
    cri: &Cri,
    c: &mut CriClient,
    handler: &str,
    pod: &str,
    config: &k8s_cri::v1::PodSandboxConfig,
    ip: Ipv4Addr,
    vmms_before: usize,
) {
    let exec_timeout = Duration::from_secs(600);
    let mut ids = Vec::new();
    for (name, cmd) in [
        ("web", vec!["httpd", "-f", "-p", "8080", "-h", "/www"]),
        ("client", vec!["sleep", "2147483647"]),
    ] {
        let t = Instant::now();
        let id = c
            .create_container(pod, config, name, IMAGE, &cmd)
            .unwrap_or_else(|e| panic!("CreateContainer {name} ({handler}): {e}"));
        c.start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer {name} ({handler}): {e}"));
        report(
            handler,
            &format!("CreateContainer + StartContainer {name}"),
            format!("{:.1}s", t.elapsed().as_secs_f64()),
        );
        ids.push(id);
    }
    let (web, client) = (&ids[0], &ids[1]);
    let vmms = cri.vmm_pids().len();
    report(handler, "VMM processes with both containers", vmms);
    assert_eq!(vmms, vmms_before, "the pod's containers add no VMM");

    let t = Instant::now();
    let deadline = Instant::now() + exec_timeout;
    let local = loop {
        let r = c
            .exec_sync(
                client,
                &["wget", "-qO-", "http://127.0.0.1:8080/index.html"],
                exec_timeout,
            )
            .unwrap_or_else(|e| panic!("ExecSync ({handler}): {e}"));
        // httpd may still be starting.
        if r.exit_code == 0 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    report(
        handler,
        "ExecSync client: wget http://127.0.0.1:8080 (web's server over localhost)",
        format!(
            "{:?} (stderr {:?}) exit {} in {:.1}s",
            local.stdout.trim(),
            local.stderr.trim(),
            local.exit_code,
            t.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(local.stdout, "hello from the pod\n", "{local:?}");

    let mut addrs = Vec::new();
    for (name, id) in [("web", web), ("client", client)] {
        let r = c
            .exec_sync(id, &["ip", "-o", "-4", "addr", "show"], exec_timeout)
            .unwrap_or_else(|e| panic!("ExecSync ({handler}): {e}"));
        let eth0: Vec<&str> = r.stdout.lines().filter(|l| !l.contains(" lo ")).collect();
        report(
            handler,
            &format!("ExecSync {name}: ip -4 addr (not lo)"),
            eth0.join(" | "),
        );
        assert!(
            r.stdout.contains(&format!("inet {ip}/")),
            "{name} sees the pod IP: {r:?}"
        );
        addrs.push(eth0.join("\n"));
    }
    assert_eq!(
        addrs[0], addrs[1],
        "both containers see the same interfaces"
    );

    let t = Instant::now();
    let page = http_get(ip, 8080);
    report(
        handler,
        "host: GET http://POD_IP:8080",
        format!(
            "{:?} in {:.0} ms",
            page.as_deref().map(str::trim),
            t.elapsed().as_secs_f64() * 1e3
        ),
    );
    assert_eq!(page.as_deref(), Ok("hello from the pod\n"));
}

/// The body of `GET /index.html` from `ip:port`.
fn http_get(ip: Ipv4Addr, port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    resp.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .ok_or_else(|| format!("not an HTTP answer: {resp:?}"))
}

/// What one pod under `handler` showed.
struct PodRun {
    ip: Ipv4Addr,
    vmms: usize,
}

/// Runs a pod under `handler`, checks it, stops and removes it, and checks nothing is left.
fn pod_under(cri: &Cri, c: &mut CriClient, handler: &str) -> PodRun {
    let name = format!("pod-{handler}");
    let config = CriClient::pod_config(&name);
    let t = Instant::now();
    let pod = c
        .run_pod(&config, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", cri.log_tail()));
    report(
        handler,
        "RunPodSandbox",
        format!("{} in {:.1}s", &pod[..12], t.elapsed().as_secs_f64()),
    );
    let ip: Ipv4Addr = c
        .pod_ip(&pod)
        .unwrap()
        .parse()
        .expect("CRI reports the pod's IPv4 address");
    report(handler, "pod IP (PodSandboxStatus)", ip);
    assert_eq!(
        ip.octets()[..3],
        [10, 205, cri.subnet as u8],
        "the address is from this test's CNI range"
    );
    let netns = cri.new_netns();
    assert_eq!(netns.len(), 1, "one CNI namespace for the pod: {netns:?}");
    let ns = &netns[0];
    let vmms = cri.vmm_pids();
    report(
        handler,
        "VMM processes (jailed mvrun-vmm, one per VM)",
        vmms.len(),
    );
    let filters = text(
        &run(
            "tc",
            &["-n", ns, "filter", "show", "dev", "eth0", "ingress"],
        )
        .stdout,
    );
    let redirected = filters.contains(&format!("Egress Redirect to device {TAP}"));
    report(
        handler,
        "eth0 -> tap redirect in the pod namespace",
        redirected,
    );
    if handler == "mvrun" {
        assert_eq!(vmms.len(), 1, "one VMM runs the pod");
        assert!(redirected, "eth0's ingress redirects to the tap: {filters}");
        let back = text(&run("tc", &["-n", ns, "filter", "show", "dev", TAP, "ingress"]).stdout);
        assert!(
            back.contains("Egress Redirect to device eth0"),
            "the tap's ingress redirects to eth0: {back}"
        );
        // The tap is what the VMM holds open: its NIC sits in the pod's namespace.
        let tap = text(&run("ip", &["-n", ns, "-o", "link", "show", TAP]).stdout);
        assert!(tap.contains("UP"), "the tap is up: {tap}");
    } else {
        assert!(vmms.is_empty() && !redirected);
    }
    let reach = host_reaches(ip);
    report(
        handler,
        "host reaches the pod IP (ICMP port unreachable from the pod's kernel)",
        match &reach {
            Ok(d) => format!("yes, in {:.0} ms", d.as_secs_f64() * 1e3),
            Err(e) => e.clone(),
        },
    );
    reach.unwrap_or_else(|e| panic!("{handler}: {e}"));
    if handler == "mvrun" {
        // The answer came from the guest: the host's neighbour entry for the pod IP is the veth's MAC, which the
        // guest's NIC took, while the namespace's own stack never sees a frame (tc steals them at ingress).
        let veth_mac = text(&run("ip", &["-n", ns, "-o", "link", "show", "eth0"]).stdout);
        let neigh = text(&run("ip", &["neigh", "show", &ip.to_string()]).stdout);
        let mac = veth_mac
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        report(handler, "host's neighbour entry for the pod", neigh.trim());
        assert!(!mac.is_empty() && neigh.contains(&mac), "{neigh} has {mac}");
    }

    containers_in(cri, c, handler, &pod, &config, ip, vmms.len());

    let t = Instant::now();
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
    report(
        handler,
        "StopPodSandbox + RemovePodSandbox",
        format!("{:.1}s", t.elapsed().as_secs_f64()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cri.vmm_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cri.vmm_processes().is_empty(),
        "VMM processes left: {:?}",
        cri.vmm_processes()
    );
    assert!(
        cri.new_netns().is_empty(),
        "namespaces left: {:?}",
        cri.new_netns()
    );
    let runtime_dirs: Vec<_> = std::fs::read_dir(cri.run_root().join("containerd"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        runtime_dirs.is_empty(),
        "runtime directories left: {runtime_dirs:?}"
    );
    PodRun {
        ip,
        vmms: vmms.len(),
    }
}

/// Boots a guest (the mvrun pod's VM): run under the shared lock, `flock /tmp/mvrun-guest.lock cargo nextest run
/// --test cri guest_cri_ --no-capture`.
#[test]
fn guest_cri_pods_under_runc_and_mvrun_get_the_cni_network() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP: {reason}");
        return;
    }
    // An emulated guest takes minutes to bring its agent up.
    if std::env::var_os("MVRUN_BOOT_TIMEOUT").is_none() {
        std::env::set_var("MVRUN_BOOT_TIMEOUT", "900");
    }
    let cri = Cri::start();
    let mut c = cri.client();
    let version = c
        .version()
        .unwrap_or_else(|e| panic!("CRI Version: {e}\n{}", cri.log_tail()));
    eprintln!("CRI: {version}");
    cri.import_image();
    let runc = pod_under(&cri, &mut c, "runc");
    let mvrun = pod_under(&cri, &mut c, "mvrun");
    eprintln!(
        "pods: runc {} with {} VMMs, mvrun {} with {} VMM",
        runc.ip, runc.vmms, mvrun.ip, mvrun.vmms
    );
    drop(c);
    let bridge = cri.bridge.clone();
    drop(cri);
    assert!(
        !run("ip", &["-o", "link", "show"]).stdout.is_empty()
            && !text(&run("ip", &["-o", "link", "show"]).stdout).contains(&bridge),
        "the CNI bridge is gone"
    );
}
