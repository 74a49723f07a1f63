//! `mvrun pull`, `mvrun images` and `mvrun image inspect|rm|prune|import|rootfs` as a user runs them, against a
//! real docker-registry with htpasswd auth (started here, stopped by PID), in a temporary MVRUN_ROOT.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

fn mvrun(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(MVRUN)
        .args(args)
        .env("MVRUN_ROOT", root)
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mvrun");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait mvrun")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mvrun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn missing(tools: &[&str]) -> Option<String> {
    tools
        .iter()
        .find(|t| {
            !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|d| d.join(t).is_file())
        })
        .map(|t| format!("{t} is not installed"))
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pull_list_inspect_rootfs_rm_prune_import() {
    if let Some(why) = missing(&[
        "docker-registry",
        "skopeo",
        "htpasswd",
        "umoci",
        "mkfs.erofs",
    ]) {
        println!("SKIP: {why}");
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("store");
    // A registry with htpasswd auth.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", "bob", "pw"])
        .output()
        .unwrap();
    std::fs::write(t.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: t\n    path: {}\n",
        t.path().join("data").display(),
        t.path().join("htpasswd").display()
    );
    std::fs::write(t.path().join("config.yml"), cfg).unwrap();
    let mut reg = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(t.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline && reg.0.try_wait().unwrap().is_none(),
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // An image made with umoci, pushed with skopeo.
    let layout = t.path().join("layout");
    let image = format!("{}:v1", layout.display());
    for args in [
        vec!["init", "--layout", layout.to_str().unwrap()],
        vec!["new", "--image", &image],
        vec!["config", "--image", &image, "--config.cmd", "/bin/true"],
    ] {
        let out = Command::new("umoci").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds=bob:pw",
        ])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://127.0.0.1:{port}/cli/app:v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = format!("127.0.0.1:{port}/cli/app:v1");

    let denied = mvrun(&root, &["pull", &reference], None);
    assert_eq!(denied.status.code(), Some(125));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("refused access") && err.lines().count() == 1,
        "one clear line: {err}"
    );

    let digest = ok(&mvrun(
        &root,
        &[
            "pull",
            "-q",
            "--username",
            "bob",
            "--password-stdin",
            &reference,
        ],
        Some("pw\n"),
    ));
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    drop(reg);

    let list = ok(&mvrun(&root, &["images"], None));
    assert!(
        list.contains(&format!("127.0.0.1:{port}/cli/app:v1")),
        "{list}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&mvrun(&root, &["image", "inspect", &reference], None))).unwrap();
    assert_eq!(inspect["digest"], digest.trim());
    assert_eq!(inspect["config"]["config"]["Cmd"][0], "/bin/true");
    let rootfs = ok(&mvrun(&root, &["image", "rootfs", &reference], None));
    assert!(Path::new(rootfs.trim()).is_file(), "{rootfs}");

    // Import the same layout under another name: same digest, no registry involved.
    let imported = ok(&mvrun(
        &root,
        &[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "local/app:1",
        ],
        None,
    ));
    assert!(imported.contains(digest.trim()), "{imported}");

    ok(&mvrun(&root, &["image", "rm", &reference], None));
    let pruned = ok(&mvrun(&root, &["image", "prune"], None));
    assert!(
        pruned.starts_with("removed 0 blobs"),
        "still referenced by local/app:1: {pruned}"
    );
    ok(&mvrun(&root, &["image", "rm", "local/app:1"], None));
    let pruned = ok(&mvrun(&root, &["image", "prune"], None));
    assert!(!pruned.starts_with("removed 0 blobs"), "{pruned}");
    assert_eq!(ok(&mvrun(&root, &["images", "-q"], None)), "");
    let err = mvrun(&root, &["image", "inspect", "nothere"], None);
    assert!(String::from_utf8_lossy(&err.stderr).contains("not in the local store"));
}
