//! Checks of an image: setuid/setgid files, world-writable directories without the sticky bit, the configured
//! user, whether its digests were verified, and where it came from.

use super::{Finding, Status};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where an image came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Pulled from a registry over TLS.
    RegistryTls(String),
    /// Pulled from a registry over plain HTTP.
    RegistryPlainHttp(String),
    /// Imported from a local OCI layout or archive (its path).
    LocalImport(String),
    /// mvrun's built-in image.
    BuiltIn,
    /// The store does not record where this image came from.
    Unrecorded,
}

/// What the image checks look at.
#[derive(Clone, Debug)]
pub struct ImageFacts {
    /// The image's name.
    pub name: String,
    /// Its unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The config's User ("" or absent means root).
    pub user: Option<String>,
    /// Whether every blob's digest was verified when it entered the store.
    pub digests_verified: bool,
    /// Provenance.
    pub source: Source,
}

/// How many paths a finding lists before it says "and N more".
const LIST_LIMIT: usize = 10;
/// Directory depth the scan goes to; deeper trees are not expected in images and the walk stays bounded.
const MAX_DEPTH: usize = 64;

/// Every image check.
pub fn check(f: &ImageFacts) -> Vec<Finding> {
    let scan = scan(&f.rootfs);
    vec![
        setuid(&scan),
        world_writable(&scan),
        user(f),
        digests(f),
        source(f),
    ]
}

#[derive(Default)]
struct Scan {
    setuid: Vec<String>,
    world_writable: Vec<String>,
}

fn scan(root: &Path) -> Scan {
    let mut out = Scan::default();
    walk(root, root, 0, &mut out);
    out.setuid.sort();
    out.world_writable.sort();
    out
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Scan) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        // symlink_metadata: never follow a link out of the rootfs.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = format!("/{}", path.strip_prefix(root).unwrap_or(&path).display());
        let mode = meta.mode();
        if meta.is_file() && mode & 0o6000 != 0 {
            out.setuid.push(rel);
        } else if meta.is_dir() {
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                out.world_writable.push(rel);
            }
            walk(root, &path, depth + 1, out);
        }
    }
}

fn listing(paths: &[String]) -> String {
    let mut s = paths
        .iter()
        .take(LIST_LIMIT)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > LIST_LIMIT {
        s.push_str(&format!(" and {} more", paths.len() - LIST_LIMIT));
    }
    s
}

fn setuid(scan: &Scan) -> Finding {
    let id = "image.setuid";
    if scan.setuid.is_empty() {
        Finding::pass(id, "no setuid or setgid files")
    } else {
        Finding::new(
            id,
            Status::Warn,
            format!("{} setuid/setgid files: {}", scan.setuid.len(), listing(&scan.setuid)),
            "remove the bits in the image (chmod a-s); no_new_privs (on by default) keeps them inert",
        )
    }
}

fn world_writable(scan: &Scan) -> Finding {
    let id = "image.world-writable";
    if scan.world_writable.is_empty() {
        Finding::pass(id, "no world-writable directories without the sticky bit")
    } else {
        Finding::new(
            id,
            Status::Warn,
            format!(
                "{} world-writable directories without the sticky bit: {}",
                scan.world_writable.len(),
                listing(&scan.world_writable)
            ),
            "chmod +t or o-w these directories in the image",
        )
    }
}

fn user(f: &ImageFacts) -> Finding {
    let id = "image.user";
    match f.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) if !super::run_config::is_root_user(u) => {
            Finding::pass(id, format!("image runs as {u}"))
        }
        _ => Finding::new(
            id,
            Status::Warn,
            "image runs as root by default",
            "set USER in the image, or run with --user",
        ),
    }
}

fn digests(f: &ImageFacts) -> Finding {
    let id = "image.digests";
    if f.digests_verified {
        Finding::pass(id, "every blob's digest and size were verified")
    } else {
        Finding::new(
            id,
            Status::Fail,
            "the image's blobs were not verified against their digests",
            format!("pull or import {} again", f.name),
        )
    }
}

fn source(f: &ImageFacts) -> Finding {
    let id = "image.source";
    match &f.source {
        Source::RegistryTls(r) => Finding::pass(id, format!("pulled from {r} over TLS")),
        Source::RegistryPlainHttp(r) => Finding::new(
            id,
            Status::Warn,
            format!("pulled from {r} over plain HTTP"),
            "use a registry with TLS; digests still protect the content",
        ),
        Source::LocalImport(path) => Finding::new(
            id,
            Status::Info,
            format!("imported from the local archive or layout {path}"),
            "",
        ),
        Source::BuiltIn => Finding::new(
            id,
            Status::Info,
            "mvrun's built-in image, made from Debian's busybox-static",
            "",
        ),
        Source::Unrecorded => Finding::new(
            id,
            Status::Info,
            "the store does not record where this image came from (named before mvrun recorded provenance)",
            "pull or import it again to record its source",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn facts(rootfs: &Path) -> ImageFacts {
        ImageFacts {
            name: "t".into(),
            rootfs: rootfs.to_path_buf(),
            user: Some("65534".into()),
            digests_verified: true,
            source: Source::RegistryTls("registry.example".into()),
        }
    }

    fn find(f: &ImageFacts, id: &str) -> Finding {
        check(f).into_iter().find(|x| x.id == id).unwrap()
    }

    #[test]
    fn clean_rootfs_passes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("tmp")).unwrap();
        std::fs::set_permissions(
            t.path().join("tmp"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        std::fs::write(t.path().join("bin"), b"").unwrap();
        let f = facts(t.path());
        for id in [
            "image.setuid",
            "image.world-writable",
            "image.user",
            "image.digests",
            "image.source",
        ] {
            assert_eq!(find(&f, id).status, Status::Pass, "{id}");
        }
    }

    #[test]
    fn setuid_binary_and_open_directory_are_listed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("usr/bin")).unwrap();
        let su = t.path().join("usr/bin/su");
        std::fs::write(&su, b"").unwrap();
        std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::create_dir(t.path().join("drop")).unwrap();
        std::fs::set_permissions(
            t.path().join("drop"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let f = facts(t.path());
        let s = find(&f, "image.setuid");
        assert_eq!(s.status, Status::Warn);
        assert!(s.reason.contains("/usr/bin/su"), "{}", s.reason);
        let w = find(&f, "image.world-writable");
        assert_eq!(w.status, Status::Warn);
        assert!(w.reason.contains("/drop"), "{}", w.reason);
    }

    #[test]
    fn root_user_unverified_and_plain_http_are_flagged() {
        let t = tempfile::tempdir().unwrap();
        let mut f = facts(t.path());
        f.user = None;
        f.digests_verified = false;
        f.source = Source::RegistryPlainHttp("127.0.0.1:5000".into());
        assert_eq!(find(&f, "image.user").status, Status::Warn);
        assert_eq!(find(&f, "image.digests").status, Status::Fail);
        assert_eq!(find(&f, "image.source").status, Status::Warn);
    }

    #[test]
    fn the_recorded_source_is_named() {
        let t = tempfile::tempdir().unwrap();
        let mut f = facts(t.path());
        assert_eq!(find(&f, "image.source").status, Status::Pass);
        f.source = Source::LocalImport("/srv/app.tar".into());
        let s = find(&f, "image.source");
        assert_eq!(s.status, Status::Info);
        assert!(s.reason.contains("/srv/app.tar"), "{}", s.reason);
        f.source = Source::Unrecorded;
        assert!(find(&f, "image.source").remedy.contains("again"));
    }

    #[test]
    fn symlinks_out_of_the_rootfs_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", t.path().join("escape")).unwrap();
        let f = facts(t.path());
        assert_eq!(find(&f, "image.setuid").status, Status::Pass);
    }
}
