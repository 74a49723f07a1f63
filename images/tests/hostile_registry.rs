//! A registry that lies: a tiny HTTP/1.1 server (std TcpListener, one thread) serving hand-made answers. Every
//! lie is refused with a clear error, and the store is left with nothing named and nothing unverified.

mod common;

use common::*;
use images::{ImageStore, PullOptions};
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
enum Answer {
    Body(Vec<u8>),
    /// Announce the full length, send only the first n bytes, close.
    Truncate(Vec<u8>, usize),
    /// Truncate on the first `k` requests, then answer fully.
    TruncateFirst(Vec<u8>, usize, usize),
}

struct Server {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
}

fn serve(routes: HashMap<String, Answer>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            h.lock().unwrap().push(path.clone());
            let n = {
                let mut c = counts.lock().unwrap();
                let e = c.entry(path.clone()).or_insert(0);
                *e += 1;
                *e
            };
            let answer = if path == "/v2/" {
                Some(Answer::Body(b"{}".to_vec()))
            } else {
                routes.get(&path).cloned()
            };
            let (body, send) = match answer {
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                Some(Answer::Body(b)) => {
                    let n = b.len();
                    (b, n)
                }
                Some(Answer::Truncate(b, k)) => (b, k),
                Some(Answer::TruncateFirst(b, k, times)) => {
                    let len = b.len();
                    (b, if n <= times { k } else { len })
                }
            };
            let ct = if path.contains("/manifests/") {
                "application/vnd.oci.image.manifest.v1+json"
            } else {
                "application/octet-stream"
            };
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[..send]);
            let _ = s.flush();
            // Dropping the socket here closes the connection, mid-body when send < len.
        }
    });
    Server { port, hits }
}

struct Img {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

fn image(layer_count_in_manifest: usize) -> Img {
    let layer = gzip(&RawTar::new().file("hello", &vec![b'x'; 300_000]).finish());
    let tar = RawTar::new().file("hello", &vec![b'x'; 300_000]).finish();
    let config = serde_json::to_vec(
        &json!({"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},
        "rootfs":{"type":"layers","diff_ids":[sha256(&tar)]}}),
    )
    .unwrap();
    let layers = vec![layer; layer_count_in_manifest];
    let manifest = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":sha256(&config),"size":config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":sha256(l),"size":l.len()})).collect::<Vec<_>>()}))
    .unwrap();
    Img {
        manifest,
        config,
        layers,
    }
}

fn routes(img: &Img) -> HashMap<String, Answer> {
    let mut r = HashMap::new();
    r.insert(
        "/v2/t/img/manifests/v1".into(),
        Answer::Body(img.manifest.clone()),
    );
    r.insert(
        format!("/v2/t/img/blobs/{}", sha256(&img.config)),
        Answer::Body(img.config.clone()),
    );
    for l in &img.layers {
        r.insert(
            format!("/v2/t/img/blobs/{}", sha256(l)),
            Answer::Body(l.clone()),
        );
    }
    r
}

/// The store holds no name, no work files, and only blobs whose bytes match their names.
fn assert_store_clean(root: &Path) {
    let store = ImageStore::open(root).unwrap();
    assert!(store.list().unwrap().is_empty(), "nothing named");
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "no work files left"
    );
    for e in std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256(&data)[7..],
            *e.file_name().to_string_lossy(),
            "only verified blobs"
        );
    }
}

fn pull_err(
    routes: HashMap<String, Answer>,
    attempts: u32,
) -> (String, tempfile::TempDir, Arc<AtomicUsize>) {
    let server = serve(routes);
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let err = store
        .pull(
            &format!("127.0.0.1:{}/t/img:v1", server.port),
            &PullOptions::new()
                .with_attempts(attempts)
                .with_docker_config(false),
        )
        .map(|_| ())
        .unwrap_err();
    let mut msg = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    println!("refused as expected: {msg}");
    let hits = Arc::new(AtomicUsize::new(server.hits.lock().unwrap().len()));
    (msg, root, hits)
}

#[test]
fn blob_bytes_not_matching_digest() {
    let img = image(1);
    let mut r = routes(&img);
    let mut evil = img.layers[0].clone();
    let last = evil.len() - 20;
    evil[last] ^= 0xff;
    r.insert(
        format!("/v2/t/img/blobs/{}", sha256(&img.layers[0])),
        Answer::Body(evil),
    );
    let (msg, root, _) = pull_err(r, 2);
    assert!(
        msg.contains("failed to verify layer") && msg.contains("expected digest"),
        "{msg}"
    );
    assert_store_clean(root.path());
}

#[test]
fn truncated_blob() {
    let img = image(1);
    let mut r = routes(&img);
    let l = img.layers[0].clone();
    let half = l.len() / 2;
    r.insert(
        format!("/v2/t/img/blobs/{}", sha256(&l)),
        Answer::Truncate(l, half),
    );
    let (msg, root, _) = pull_err(r, 2);
    assert!(msg.contains("failed to download layer"), "{msg}");
    assert_store_clean(root.path());
}

#[test]
fn connection_dropped_mid_blob_is_retried() {
    let img = image(1);
    let mut r = routes(&img);
    let l = img.layers[0].clone();
    let cut = l.len() / 3;
    r.insert(
        format!("/v2/t/img/blobs/{}", sha256(&l)),
        Answer::TruncateFirst(l.clone(), cut, 1),
    );
    let server = serve(r);
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = store
        .pull(
            &format!("127.0.0.1:{}/t/img:v1", server.port),
            &PullOptions::new().with_docker_config(false),
        )
        .unwrap();
    assert_eq!(image.digest().as_str(), sha256(&img.manifest));
    let layer_hits = server
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.ends_with(&sha256(&l)))
        .count();
    assert_eq!(layer_hits, 2, "one dropped attempt, one full");
    store.rootfs_image(&image).unwrap();
}

#[test]
fn manifest_over_the_size_limit() {
    let img = image(1);
    let mut r = routes(&img);
    let mut big = img.manifest.clone();
    big.pop();
    big.extend_from_slice(
        format!(r#","annotations":{{"pad":"{}"}}}}"#, "a".repeat(5 << 20)).as_bytes(),
    );
    r.insert("/v2/t/img/manifests/v1".into(), Answer::Body(big));
    let (msg, root, _) = pull_err(r, 1);
    assert!(msg.contains("over the limit"), "{msg}");
    assert_store_clean(root.path());
}

#[test]
fn layer_count_disagreeing_with_diff_ids() {
    let img = image(2); // two layers in the manifest, one diff_id in the config
    let (msg, root, _) = pull_err(routes(&img), 1);
    assert!(
        msg.contains("2 layers but the config lists 1 diff_ids"),
        "{msg}"
    );
    assert_store_clean_except_config(root.path());
}

// The config was verified and stored before the mismatch was seen; it is an unreferenced blob for prune.
fn assert_store_clean_except_config(root: &Path) {
    let store = ImageStore::open(root).unwrap();
    assert!(store.list().unwrap().is_empty());
    let r = store.prune().unwrap();
    assert!(r.blobs <= 1);
    assert_store_clean(root);
}

#[test]
fn layer_whose_content_is_hostile() {
    // A correctly-digested layer that tries to escape: the pull succeeds (bytes are what the manifest says),
    // building the rootfs refuses it by entry name, and nothing is left half-built.
    let tar = RawTar::new()
        .symlink("up", "../../../../..")
        .file("up/tmp/pwned", b"x")
        .finish();
    let layer = gzip(&tar);
    let config = serde_json::to_vec(&json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[sha256(&tar)]}})).unwrap();
    let manifest = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":sha256(&config),"size":config.len()},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":sha256(&layer),"size":layer.len()}]}))
    .unwrap();
    let img = Img {
        manifest,
        config,
        layers: vec![layer],
    };
    let server = serve(routes(&img));
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = store
        .pull(
            &format!("127.0.0.1:{}/t/img:v1", server.port),
            &PullOptions::new(),
        )
        .unwrap();
    let err = format!("{:?}", store.rootfs_image(&image).unwrap_err());
    assert!(err.contains("up/tmp/pwned"), "{err}");
    assert!(!Path::new("/tmp/pwned").exists());
    assert_eq!(
        std::fs::read_dir(root.path().join("rootfs"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn multi_platform_index_resolves_to_linux_amd64_and_docker_media_types_work() {
    let img = image(1);
    // The amd64 entry is a Docker schema 2 manifest (docker media types throughout).
    let docker_manifest = String::from_utf8(img.manifest.clone())
        .unwrap()
        .replace(
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        )
        .replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
        .into_bytes();
    let arm = b"{\"not\":\"used\"}".to_vec();
    let index = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests":[
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":sha256(&arm),"size":arm.len(),
             "platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":sha256(&docker_manifest),"size":docker_manifest.len(),
             "platform":{"architecture":"amd64","os":"linux"}}]}))
    .unwrap();
    let mut r = routes(&img);
    r.insert("/v2/t/img/manifests/v1".into(), Answer::Body(index));
    r.insert(
        format!("/v2/t/img/manifests/{}", sha256(&docker_manifest)),
        Answer::Body(docker_manifest.clone()),
    );
    let server = serve(r);
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = store
        .pull(
            &format!("127.0.0.1:{}/t/img:v1", server.port),
            &PullOptions::new(),
        )
        .unwrap();
    assert_eq!(
        image.digest().as_str(),
        sha256(&docker_manifest),
        "the linux/amd64 manifest is stored"
    );
    assert!(
        !server
            .hits
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.contains(&sha256(&arm)[7..])),
        "arm64 never fetched"
    );
    let rootfs = store.rootfs_image(&image).unwrap();
    assert!(rootfs.exists());
}

#[test]
fn index_without_linux_amd64_is_refused() {
    let arm = b"{}".to_vec();
    let index = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
        "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":sha256(&arm),"size":2,
                      "platform":{"architecture":"arm64","os":"linux"}}]}))
    .unwrap();
    let mut r = HashMap::new();
    r.insert("/v2/t/img/manifests/v1".to_string(), Answer::Body(index));
    let (msg, root, _) = pull_err(r, 1);
    assert!(msg.contains("no linux/amd64 image"), "{msg}");
    assert_store_clean(root.path());
}
