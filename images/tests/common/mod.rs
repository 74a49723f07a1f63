//! Shared helpers of the image store's integration tests: raw tar building (hostile names included), OCI layouts,
//! a real docker-registry started and stopped by PID, skopeo pushes.
#![allow(dead_code)]

use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Prints a SKIP line and returns true when a tool is missing.
pub fn skip_without(tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            println!("SKIP: {t} is not installed (see scripts/packages.txt)");
            return true;
        }
    }
    false
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A tar written entry by entry with raw names (no path validation, so hostile names can be made).
#[derive(Default)]
pub struct RawTar {
    pub buf: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }
    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32, link: &[u8]) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        {
            let u = h.as_ustar_mut().expect("ustar");
            assert!(
                name.len() <= 100 && link.len() <= 100,
                "test names fit the ustar header"
            );
            u.name = [0; 100];
            u.name[..name.len()].copy_from_slice(name);
            u.linkname = [0; 100];
            u.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        h
    }
    fn push(&mut self, h: &tar::Header, data: &[u8]) {
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }
    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            0o644,
            b"",
        );
        self.push(&h, data);
        self
    }
    pub fn file_mode(mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            mode,
            b"",
        );
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.push(&h, data);
        self
    }
    pub fn dir(mut self, name: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Directory, 0, 0o755, b"");
        self.push(&h, &[]);
        self
    }
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Symlink,
            0,
            0o777,
            target.as_bytes(),
        );
        self.push(&h, &[]);
        self
    }
    pub fn hardlink(mut self, name: &str, target: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Link,
            0,
            0o644,
            target.as_bytes(),
        );
        self.push(&h, &[]);
        self
    }
    pub fn device(mut self, name: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Char, 0, 0o666, b"");
        self.push(&h, &[]);
        self
    }
    /// A PAX extended header with the given records, applying to the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rec_len = |n: usize| format!("{n} {k}=").len() + v.len() + 1;
            let mut n = rec_len(0);
            while rec_len(n) != n {
                n = rec_len(n);
            }
            body.extend_from_slice(format!("{n} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let h = Self::header(
            b"PaxHeader",
            tar::EntryType::XHeader,
            body.len() as u64,
            0o644,
            b"",
        );
        self.push(&h, &body);
        self
    }
    /// A header of `kind` claiming `size` bytes, followed by only `data`.
    pub fn raw_header(mut self, name: &str, kind: tar::EntryType, size: u64, data: &[u8]) -> Self {
        let h = Self::header(name.as_bytes(), kind, size, 0o644, b"");
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        self
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// What an OCI layout written by `write_oci_layout` holds.
pub struct Layout {
    pub dir: PathBuf,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

/// Writes an OCI image layout with the given (already compressed or plain) layers and their diff_ids' sources.
/// `layers`: (blob bytes, media type, uncompressed tar). `tag` goes in the ref.name annotation.
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    layers: &[(Vec<u8>, &str, Vec<u8>)],
    cmd: &[&str],
) -> Layout {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
    let put = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).expect("write blob");
        d
    };
    let diff_ids: Vec<String> = layers.iter().map(|(_, _, tar)| sha256(tar)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": cmd, "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("json");
    let config_digest = put(&config);
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(blob, mt, _)| json!({ "mediaType": mt, "digest": put(blob), "size": blob.len() }))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": layer_descs,
    }))
    .expect("json");
    let manifest_digest = put(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                        "annotations": { "org.opencontainers.image.ref.name": tag } }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("write index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    Layout {
        dir: dir.to_path_buf(),
        manifest,
        manifest_digest,
        config,
        layers: layers.iter().map(|l| l.0.clone()).collect(),
    }
}

/// A three-layer image: a base with files, dirs, a symlink and a hard link; a second layer with a whiteout and an
/// opaque dir (zstd); a third, uncompressed.
pub fn sample_layers() -> Vec<(Vec<u8>, &'static str, Vec<u8>)> {
    let l1 = RawTar::new()
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/remove-me", b"x")
        .dir("opq/")
        .file("opq/old", b"old")
        .dir("bin/")
        .file_mode("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755, 0, 0)
        .symlink("bin/sh", "tool")
        .hardlink("bin/tool2", "bin/tool")
        .finish();
    let l2 = RawTar::new()
        .file("etc/.wh.remove-me", b"")
        .dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new")
        .file("added", b"layer2")
        .finish();
    let l3 = RawTar::new()
        .file_mode("owned", b"owned by 1000", 0o640, 1000, 1001)
        .finish();
    vec![
        (gzip(&l1), "application/vnd.oci.image.layer.v1.tar+gzip", l1),
        (zstd(&l2), "application/vnd.oci.image.layer.v1.tar+zstd", l2),
        (l3.clone(), "application/vnd.oci.image.layer.v1.tar", l3),
    ]
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("docker-registry exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("docker-registry did not listen on {port}");
}

/// Debian's docker-registry on 127.0.0.1, with filesystem storage in a temp dir; killed by PID on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd");
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("write htpasswd");
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: mvrun-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), cfg).expect("write config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        wait_port(port, &mut child);
        Registry {
            child,
            port,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            _dir: dir,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// skopeo copy of an OCI layout into this registry as NAME:TAG.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.host()))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files in the whole tree under `dir` (relative), to show nothing outside an unpack dir changed.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let m = e.path().symlink_metadata().expect("stat");
                out.push((
                    e.path().strip_prefix(dir).expect("prefix").to_path_buf(),
                    m.len(),
                ));
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}
