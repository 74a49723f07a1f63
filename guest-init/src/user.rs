//! `--user` resolution against the image's /etc/passwd and /etc/group, as Docker does it: `uid`, `name`,
//! `uid:gid`, `name:group`; a numeric uid missing from /etc/passwd runs with gid 0; supplementary groups come from
//! /etc/group membership. The image is hostile: its files are opened with `openat2(RESOLVE_IN_ROOT)` so symlinks
//! cannot lead out of the rootfs, and at most [`MAX_DB`] bytes are read.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Longest /etc/passwd or /etc/group we read.
const MAX_DB: u64 = 1 << 20;

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user is not a number and not in /etc/passwd.
    #[error("failed to resolve user {0:?}: no such user in the image's /etc/passwd")]
    NoUser(String),
    /// The group is not a number and not in /etc/group.
    #[error("failed to resolve group {0:?}: no such group in the image's /etc/group")]
    NoGroup(String),
}

/// A resolved identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
    /// Home directory from /etc/passwd, if the user is there.
    pub home: Option<String>,
}

/// Opens `rel` inside `root` without letting symlinks or `..` leave it.
pub fn open_in_root(root: &Path, rel: &str) -> std::io::Result<File> {
    let root_dir = File::open(root)?;
    let mut path = rel.trim_start_matches('/').as_bytes().to_vec();
    path.push(0);
    // struct open_how from <linux/openat2.h> (libc's is non-exhaustive, so it cannot be built here).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: openat2 reads a NUL-terminated path and an open_how of the size passed; both outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

fn read_db(root: &Path, rel: &str) -> String {
    let mut s = Vec::new();
    if let Ok(f) = open_in_root(root, rel) {
        // A missing or unreadable database is an image without that file: resolve numerically.
        let _ = f.take(MAX_DB).read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// (name, id, gid-or-members, home) from colon-separated lines.
fn entries(db: &str) -> impl Iterator<Item = Vec<&str>> {
    db.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
}

/// Resolves `spec` (`user[:group]`, names or numbers) against the rootfs at `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<Identity, Error> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(root, "etc/passwd");
    let entry =
        entries(&passwd).find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let mut id = match (user.parse::<u32>(), &entry) {
        (_, Some(f)) => Identity {
            uid: f[2].parse().map_err(|_| Error::NoUser(user.into()))?,
            gid: f[3].parse().unwrap_or(0),
            groups: Vec::new(),
            home: f.get(5).map(|h| h.to_string()),
        },
        (Ok(uid), None) => Identity {
            uid,
            ..Default::default()
        },
        (Err(_), None) => return Err(Error::NoUser(user.into())),
    };
    let groups = read_db(root, "etc/group");
    if let Some(g) = group {
        id.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entries(&groups)
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| Error::NoGroup(g.into()))?,
        };
    } else if let Some(name) = entry.as_ref().map(|f| f[0]) {
        id.groups = entries(&groups)
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|gid| *gid != id.gid)
            .collect();
    }
    Ok(id)
}

/// Whether `p` is a plain relative-free absolute path (for workdir and mount destinations).
pub fn is_clean_absolute(p: &str) -> bool {
    Path::new(p).is_absolute()
        && !Path::new(p)
            .as_os_str()
            .as_bytes()
            .windows(2)
            .any(|w| w == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn resolves_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        let r = |s: &str| resolve(dir.path(), s);
        assert_eq!(r("65534").unwrap().gid, 65534);
        assert_eq!(r("nobody").unwrap().uid, 65534);
        assert_eq!(
            r("4242").unwrap(),
            Identity {
                uid: 4242,
                ..Default::default()
            }
        );
        assert_eq!(r("app").unwrap().groups, vec![10]);
        assert_eq!(r("app:wheel").unwrap().gid, 10);
        assert_eq!(r("1000:7").unwrap().gid, 7);
        assert!(matches!(r("ghost"), Err(Error::NoUser(_))));
        assert!(matches!(r("app:ghosts"), Err(Error::NoGroup(_))));
    }

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), "evil:x:7:7::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/passwd")).unwrap();
        // The absolute link target is resolved inside the root, where it does not exist.
        assert!(matches!(resolve(dir.path(), "evil"), Err(Error::NoUser(_))));
    }
}
