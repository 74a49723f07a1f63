//! Sandbox records under the runtime directory (`/run/mvrun/<id>/`): one directory per sandbox holding its
//! record (`state.json`), its sockets, its console log and its output logs.
//!
//! The supervisor of a sandbox owns its directory while it runs. A sandbox whose supervisor died without writing
//! its exit is found by the next command (its pid is gone, or belongs to another program) and marked as exited.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Exit code recorded for a sandbox whose supervisor vanished without reporting one.
pub const EXIT_UNKNOWN: i32 = 125;

/// Errors handling sandbox records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("failed to {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A record is unreadable.
    #[error("sandbox record {path} is corrupt")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// No sandbox has that name or id.
    #[error("no such sandbox: {0}")]
    NotFound(String),
    /// The name is taken.
    #[error("the name {0:?} is already in use by sandbox {1}: remove it first (mvrun rm {0})")]
    NameInUse(String, String),
    /// An invalid name.
    #[error("invalid sandbox name {0:?}: use letters, digits, '_', '.', '-' (up to 64), starting with a letter or digit")]
    InvalidName(String),
    /// More than one sandbox matches an id prefix.
    #[error("{0:?} matches more than one sandbox: give more of the id")]
    Ambiguous(String),
}

/// Shorthand for this module's results.
pub type Result<T> = std::result::Result<T, Error>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a sandbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being prepared; no supervisor yet.
    Created,
    /// The supervisor runs.
    Running,
    /// The workload (or the VM) ended.
    Exited,
}

/// What `state.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// 32 hex digits.
    pub id: String,
    /// User-chosen or generated name.
    pub name: String,
    /// The image reference as given.
    pub image: String,
    /// The workload's command.
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Life-cycle state.
    pub status: Status,
    /// The supervisor's pid while running.
    pub pid: Option<u32>,
    /// The workload's exit code once exited.
    pub exit_code: Option<i32>,
    /// Why it ended, when mvrun knows more than the code.
    pub exit_reason: Option<String>,
    /// Remove the record when the sandbox ends (`--rm`).
    pub auto_remove: bool,
}

/// The runtime directory holding every sandbox.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// One sandbox's directory.
#[derive(Clone, Debug)]
pub struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    /// The sandbox directory at `path`.
    pub fn at(path: PathBuf) -> Self {
        SandboxDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The record file.
    pub fn record_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    /// The socket directory the jailed VMM shares with the host: the vsock socket and any `vsock.sock_<port>`
    /// listeners for guest-initiated connections.
    pub fn vm_dir(&self) -> PathBuf {
        self.path.join("vm")
    }
    /// The vsock unix socket (Firecracker hybrid vsock).
    pub fn vsock_path(&self) -> PathBuf {
        self.vm_dir().join("vsock.sock")
    }
    /// The VMM's runtime block-slot socket (images handed over as fds: vmm's `block::slots`).
    pub fn slots_path(&self) -> PathBuf {
        self.vm_dir().join("slots.sock")
    }
    /// Where the VMM's jail root is mounted, in the VMM's own mount namespace (an empty directory on the host).
    pub fn jail_root(&self) -> PathBuf {
        self.path.join("root")
    }
    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }
    /// The supervisor's own log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }
    /// The workload's output log (detached sandboxes), one JSON line per chunk with its stream.
    pub fn output_log(&self) -> PathBuf {
        self.path.join("output.log")
    }
    /// The VMM process's launch spec.
    pub fn spec_path(&self) -> PathBuf {
        self.path.join("spec.json")
    }

    /// Reads the record.
    pub fn read(&self) -> Result<Record> {
        let path = self.record_path();
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt { path, source })
    }

    /// Replaces the record atomically (temporary file, fsync, rename).
    pub fn write(&self, record: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("records always serialize");
        write_atomic(&self.record_path(), &json)
    }

    /// Changes the record with `f` and writes it back.
    pub fn update(&self, f: impl FnOnce(&mut Record)) -> Result<Record> {
        let mut record = self.read()?;
        f(&mut record);
        self.write(&record)?;
        Ok(record)
    }
}

/// Writes `bytes` to `path` so that readers see either the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", &tmp))
}

/// Whether `name` is acceptable as a sandbox name (Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Whether `pid` is alive and is the supervisor of sandbox `id` (guards against a reused pid).
pub fn supervisor_alive(pid: u32, id: &str) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == id.as_bytes()),
        Err(_) => false,
    }
}

/// An exclusive lock on the runtime directory, held while names are checked and records created or removed.
/// (The file is held only for its lock, released when dropped.)
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn take(root: &Path) -> Result<Self> {
        let path = root.join(".lock");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::Io {
                what: "lock",
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(DirLock(f))
    }
}

impl StateDir {
    /// Opens (creating, mode 0700) the runtime directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io("create", &root))?;
        Ok(StateDir { root })
    }

    /// Creates a new sandbox directory and record. The name must be free; without one, one is made from the id.
    pub fn create(
        &self,
        name: Option<&str>,
        image: &str,
        command: &[String],
        auto_remove: bool,
    ) -> Result<(SandboxDir, Record)> {
        if let Some(n) = name.filter(|n| !valid_name(n)) {
            return Err(Error::InvalidName(n.to_string()));
        }
        let _lock = DirLock::take(&self.root)?;
        let existing = self.list_unlocked()?;
        if let Some(n) = name {
            if let Some((_, r)) = existing.iter().find(|(_, r)| r.name == n) {
                return Err(Error::NameInUse(n.to_string(), short_id(&r.id).to_string()));
            }
        }
        let id = new_id();
        let path = self.root.join(&id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io("create", &path))?;
        let record = Record {
            name: name
                .map(str::to_string)
                .unwrap_or_else(|| format!("mvrun-{}", short_id(&id))),
            id,
            image: image.to_string(),
            command: command.to_vec(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            status: Status::Created,
            pid: None,
            exit_code: None,
            exit_reason: None,
            auto_remove,
        };
        let dir = SandboxDir { path };
        dir.write(&record)?;
        Ok((dir, record))
    }

    /// Every sandbox, oldest first, with stale ones (supervisor gone) marked as exited.
    pub fn list(&self) -> Result<Vec<(SandboxDir, Record)>> {
        let _lock = DirLock::take(&self.root)?;
        self.list_unlocked()
    }

    fn list_unlocked(&self) -> Result<Vec<(SandboxDir, Record)>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io("read", &self.root))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // Sandboxes are named by their 32-hex-digit id; other entries (the shim's state, say) are not ours.
            let is_id = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_id || !path.is_dir() {
                continue;
            }
            let dir = SandboxDir { path };
            match dir.read() {
                Ok(record) => {
                    let record = self.refresh(&dir, record)?;
                    out.push((dir, record));
                }
                Err(e) => {
                    // A directory whose record was never completed is debris from a crash at creation.
                    tracing::warn!("ignoring {}: {e}", dir.path.display());
                }
            }
        }
        out.sort_by_key(|(_, r)| r.created);
        Ok(out)
    }

    /// Marks a running sandbox whose supervisor is gone as exited, and removes an `--rm` one.
    fn refresh(&self, dir: &SandboxDir, record: Record) -> Result<Record> {
        let stale = match (record.status, record.pid) {
            (Status::Running, Some(pid)) => !supervisor_alive(pid, &record.id),
            (Status::Running, None) => true,
            _ => false,
        };
        if !stale {
            return Ok(record);
        }
        tracing::info!(
            "sandbox {} lost its supervisor; marking it exited",
            record.name
        );
        let record = dir.update(|r| {
            r.status = Status::Exited;
            r.pid = None;
            r.exit_code.get_or_insert(EXIT_UNKNOWN);
            r.exit_reason.get_or_insert_with(|| {
                "the sandbox's supervisor died without reporting an exit".into()
            });
        })?;
        cleanup_runtime_files(dir);
        Ok(record)
    }

    /// The sandbox named `key`, or whose id starts with `key`.
    pub fn find(&self, key: &str) -> Result<(SandboxDir, Record)> {
        let all = self.list()?;
        if let Some(found) = all.iter().find(|(_, r)| r.name == key || r.id == key) {
            return Ok(found.clone());
        }
        let mut by_prefix = all
            .into_iter()
            .filter(|(_, r)| !key.is_empty() && r.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(one), None) => Ok(one),
            (Some(_), Some(_)) => Err(Error::Ambiguous(key.to_string())),
            _ => Err(Error::NotFound(key.to_string())),
        }
    }

    /// Deletes a sandbox's directory (and its VMM's cgroup, if a crash left one).
    pub fn remove(&self, dir: &SandboxDir) -> Result<()> {
        let _lock = DirLock::take(&self.root)?;
        cleanup_runtime_files(dir);
        fs::remove_dir_all(&dir.path).map_err(io("remove", &dir.path))
    }
}

/// Removes what only a live sandbox needs (sockets, the scratch disk, the VMM's jail mountpoint and cgroup),
/// keeping its record and logs for `ps -a` and `logs`.
pub fn cleanup_runtime_files(dir: &SandboxDir) {
    let _ = fs::remove_dir_all(dir.vm_dir());
    let _ = fs::remove_dir(dir.jail_root());
    if let Some(id) = dir.path().file_name().and_then(|n| n.to_str()) {
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            crate::sandbox::cgroup::remove(id);
        }
    }
    if let Ok(entries) = fs::read_dir(dir.path()) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".sock")
                || name.contains(".sock_")
                || name == crate::sandbox::scratch::FILE_NAME
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The first 12 hex digits, as Docker shows ids.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path().join("run")).unwrap();
        (t, s)
    }

    #[test]
    fn create_find_and_remove() {
        let (_t, s) = state();
        let (dir, rec) = s
            .create(Some("web"), "busybox", &["sh".into()], false)
            .unwrap();
        assert_eq!(rec.status, Status::Created);
        assert_eq!(s.find("web").unwrap().1.id, rec.id);
        assert_eq!(s.find(&rec.id[..6]).unwrap().1.name, "web");
        assert!(matches!(s.find("nope"), Err(Error::NotFound(_))));
        s.remove(&dir).unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn names_are_unique_and_checked() {
        let (_t, s) = state();
        s.create(Some("a"), "busybox", &[], false).unwrap();
        assert!(matches!(
            s.create(Some("a"), "busybox", &[], false),
            Err(Error::NameInUse(..))
        ));
        assert!(matches!(
            s.create(Some("../x"), "busybox", &[], false),
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            s.create(Some(""), "busybox", &[], false),
            Err(Error::InvalidName(_))
        ));
        let (_, r) = s.create(None, "busybox", &[], false).unwrap();
        assert!(r.name.starts_with("mvrun-"));
    }

    #[test]
    fn a_running_sandbox_whose_supervisor_is_gone_is_marked_exited() {
        let (_t, s) = state();
        let (dir, _) = s.create(Some("crashed"), "busybox", &[], false).unwrap();
        std::fs::create_dir(dir.vm_dir()).unwrap();
        std::fs::create_dir(dir.jail_root()).unwrap();
        std::fs::write(dir.vsock_path(), b"").unwrap();
        std::fs::write(dir.path().join(crate::sandbox::scratch::FILE_NAME), b"").unwrap();
        // A pid that exists but is not this sandbox's supervisor: our own.
        dir.update(|r| {
            r.status = Status::Running;
            r.pid = Some(std::process::id());
        })
        .unwrap();
        let (_, rec) = s.find("crashed").unwrap();
        assert_eq!(rec.status, Status::Exited);
        assert_eq!(rec.exit_code, Some(EXIT_UNKNOWN));
        assert!(!dir.vm_dir().exists(), "stale sockets are removed");
        assert!(
            !dir.jail_root().exists(),
            "the jail's mountpoint is removed"
        );
        assert!(
            !dir.path().join(crate::sandbox::scratch::FILE_NAME).exists(),
            "a dead sandbox's scratch disk is removed"
        );
    }

    #[test]
    fn debris_without_a_record_is_ignored() {
        let (t, s) = state();
        std::fs::create_dir(t.path().join("run").join("half-made")).unwrap();
        std::fs::create_dir(
            t.path()
                .join("run")
                .join("0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn ambiguous_prefix_is_reported() {
        let (_t, s) = state();
        let mut n = 0;
        // Make two ids sharing their first digit.
        loop {
            let (_, r) = s.create(None, "busybox", &[], false).unwrap();
            n += 1;
            let all = s.list().unwrap();
            let first = &r.id[..1];
            if all.iter().filter(|(_, x)| x.id.starts_with(first)).count() > 1 {
                assert!(matches!(s.find(first), Err(Error::Ambiguous(_))));
                break;
            }
            assert!(n < 100);
        }
    }
}
