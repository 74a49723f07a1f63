//! The container's cgroup v2 figures for the host (`Stats`) and its OOM kills (`WaitOom`).
//!
//! Read from the container's own cgroup directory in the guest, which is where the guest kernel accounts the
//! workload: the host sees only the VMM's cgroup. OOM kills are counted by `memory.events`' `oom_kill` (hierarchical:
//! it includes the container's child cgroups); the kernel raises a file-modified event on that file when it
//! changes, so a waiter sleeps on inotify, with a timeout to notice the cgroup going away; on a kernel built
//! without inotify (the project's minimal guest kernel has none: ENOSYS) it reads the file every
//! [`POLL`] instead, a few microseconds of kernel work each time.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use agent_protocol::{CgroupStats, IoStat};

/// Where the guest's cgroup2 hierarchy is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// How often a waiter checks, without an inotify event, that its cgroup still exists and the agent goes on.
const WAKE: Duration = Duration::from_secs(1);
/// How often a waiter reads `memory.events` when the kernel has no inotify.
pub const POLL: Duration = Duration::from_millis(250);

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// A single-value file: a number, or `None` for "max" or a missing file.
fn value(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// A flat keyed file (`memory.stat`, `memory.events`, `cpu.stat`): `name value` per line.
fn keyed(dir: &Path, file: &str) -> BTreeMap<String, u64> {
    read(dir, file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N` per device.
fn io_stat(text: &str) -> Vec<IoStat> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (major, minor) = f.next()?.split_once(':')?;
            let mut s = IoStat {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..IoStat::default()
            };
            for kv in f {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.rbytes = v,
                    "wbytes" => s.wbytes = v,
                    "rios" => s.rios = v,
                    "wios" => s.wios = v,
                    _ => {}
                }
            }
            Some(s)
        })
        .collect()
}

/// The figures of the cgroup at `dir`; files that are missing leave their fields empty.
pub fn stats(dir: &Path) -> io::Result<CgroupStats> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup at {}", dir.display()),
        ));
    }
    Ok(CgroupStats {
        memory_current: value(dir, "memory.current"),
        memory_max: value(dir, "memory.max"),
        memory_peak: value(dir, "memory.peak"),
        swap_current: value(dir, "memory.swap.current"),
        swap_max: value(dir, "memory.swap.max"),
        memory_stat: keyed(dir, "memory.stat"),
        memory_events: keyed(dir, "memory.events"),
        cpu_stat: keyed(dir, "cpu.stat"),
        pids_current: value(dir, "pids.current"),
        pids_max: value(dir, "pids.max"),
        io: io_stat(&read(dir, "io.stat").unwrap_or_default()),
    })
}

/// The cgroup's OOM kill count so far.
pub fn oom_kills(dir: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(dir.join("memory.events"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0))
}

/// Blocks until the cgroup at `dir` has had more than `seen` OOM kills and returns the count, or fails when the
/// cgroup goes away or `stop` says the agent is ending.
pub fn wait_oom(dir: &Path, seen: u64, stop: impl Fn() -> bool) -> io::Result<u64> {
    let ino = match watch(&dir.join("memory.events")) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(e) => return Err(e),
    };
    let mut buf = [0u8; 1024];
    loop {
        // Read after the watch is set, so a kill between the two is not missed.
        let n = oom_kills(dir)?;
        if n > seen {
            return Ok(n);
        }
        if stop() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the agent is shutting down",
            ));
        }
        let Some(ino) = &ino else {
            std::thread::sleep(POLL);
            continue;
        };
        let mut pfd = libc::pollfd {
            fd: ino.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, WAKE.as_millis() as i32) };
        // Drain the events; what matters is the count re-read above.
        // SAFETY: reads into a buffer we own, of its length; non-blocking.
        while unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

/// An inotify descriptor watching `file` for modifications.
fn watch(file: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the cgroup path"))?;
    // SAFETY: inotify_init1 has no preconditions; the fd is owned right away.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let ino = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid inotify fd and a NUL-terminated path.
    if unsafe { libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cgroup_directory() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("memory.current"), "1234\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("memory.stat"), "anon 4096\nfile 8192\nbogus\n").unwrap();
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(
            d.join("cpu.stat"),
            "usage_usec 100\nuser_usec 60\nsystem_usec 40\n",
        )
        .unwrap();
        std::fs::write(d.join("pids.current"), "2\n").unwrap();
        std::fs::write(d.join("pids.max"), "1024\n").unwrap();
        std::fs::write(
            d.join("io.stat"),
            "254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        )
        .unwrap();
        let s = stats(d).unwrap();
        assert_eq!(s.memory_current, Some(1234));
        assert_eq!(s.memory_max, None);
        assert_eq!(s.memory_stat.get("file"), Some(&8192));
        assert_eq!(s.memory_stat.len(), 2);
        assert_eq!(s.cpu_stat.get("usage_usec"), Some(&100));
        assert_eq!(s.pids_current, Some(2));
        assert_eq!(s.pids_max, Some(1024));
        assert_eq!(s.io.len(), 1);
        assert_eq!(
            (s.io[0].major, s.io[0].rbytes, s.io[0].rios),
            (254, 4096, 1)
        );
        assert_eq!(oom_kills(d).unwrap(), 1);
        assert!(stats(&d.join("gone")).is_err());
    }

    #[test]
    fn an_oom_waiter_wakes_when_the_count_rises_and_fails_when_told_to_stop() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_path_buf();
        std::fs::write(d.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        let w = {
            let d = d.clone();
            std::thread::spawn(move || wait_oom(&d, 0, || false))
        };
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(d.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(w.join().unwrap().unwrap(), 1);
        assert_eq!(wait_oom(&d, 0, || true).unwrap(), 1, "already above seen");
        assert!(wait_oom(&d, 1, || true).is_err());
    }
}
