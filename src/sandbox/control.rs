//! Working with a running sandbox from outside its supervisor: exec another process in it, signal or stop its
//! workload, and wait for the supervisor to finish. Used by `mvrun exec/stop/rm` and the containerd shim.

use super::state::{SandboxDir, Status};
use agent_protocol::{hybrid, Client, ProcessSpec, StreamKind, CONTROL_PORT, WORKLOAD};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Errors controlling a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox is not running.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The guest's agent cannot be reached.
    #[error("failed to reach the guest agent of sandbox {name}")]
    Connect {
        /// Sandbox name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused or failed.
    #[error(transparent)]
    Agent(#[from] agent_protocol::client::Error),
    /// The record could not be read.
    #[error(transparent)]
    State(#[from] super::state::Error),
}

fn connect(dir: &SandboxDir, name: &str, port: u32) -> Result<UnixStream, Error> {
    hybrid::connect(&dir.vsock_path(), port).map_err(|source| Error::Connect {
        name: name.to_string(),
        source,
    })
}

fn running(dir: &SandboxDir) -> Result<String, Error> {
    let r = dir.read()?;
    if r.status != Status::Running {
        return Err(Error::NotRunning(r.name));
    }
    Ok(r.name)
}

/// A control connection to a running sandbox's agent.
pub fn client(dir: &SandboxDir) -> Result<Client<UnixStream>, Error> {
    let name = running(dir)?;
    Ok(Client::new(connect(dir, &name, CONTROL_PORT)?))
}

/// How long a signal may take to reach the agent and be acknowledged. A guest that never brought its agent up
/// accepts the VMM's socket but never answers; `stop` must not hang on it. Generous: on an emulated-KVM host the
/// agent's answer takes a while.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A control connection whose every read and write (the vsock handshake included) gives up after `timeout`.
fn client_within(dir: &SandboxDir, timeout: Duration) -> Result<Client<UnixStream>, Error> {
    let name = running(dir)?;
    let err = |source| Error::Connect {
        name: name.clone(),
        source,
    };
    let mut stream = UnixStream::connect(dir.vsock_path()).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    stream.set_write_timeout(Some(timeout)).map_err(err)?;
    hybrid::handshake(&mut stream, CONTROL_PORT).map_err(err)?;
    Ok(Client::new(stream))
}

/// Runs `process` in the sandbox's container with our stdio, and returns its exit code. With `process.tty` it runs
/// on a terminal of its own in the guest, sized like ours and resized on our SIGWINCH (the caller puts our
/// terminal in raw mode when it forwards stdin), its output merged on our stdout.
pub fn exec(dir: &SandboxDir, mut process: ProcessSpec) -> Result<i32, Error> {
    let name = running(dir)?;
    let mut control = Client::new(connect(dir, &name, CONTROL_PORT)?);
    // Exec ids only need to be unique within the sandbox: random ones avoid coordination between mvrun processes.
    let id = rand::random::<u32>().max(1);
    let attach = |kind: StreamKind| -> Result<UnixStream, Error> {
        let mut s = connect(dir, &name, kind.port())?;
        agent_protocol::client::attach_stream(&mut s, id)?;
        Ok(s)
    };
    let stdout = attach(StreamKind::Stdout)?;
    let stderr = if process.tty {
        None
    } else {
        Some(attach(StreamKind::Stderr)?)
    };
    let stdin = if process.stdin {
        Some(attach(StreamKind::Stdin)?)
    } else {
        None
    };
    if process.tty {
        process.window = super::terminal::window_size();
        // Resizes go on a control connection of their own: this one blocks in `wait`.
        let resizer = std::sync::Mutex::new(Client::new(connect(dir, &name, CONTROL_PORT)?));
        super::terminal::watch_window(move |size| {
            let mut c = resizer.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = c.resize(id, size.rows, size.cols) {
                tracing::warn!("failed to resize the exec's terminal: {e}");
            }
        });
    }
    control.exec(id, &process)?;
    let out = std::thread::spawn(move || copy_out(stdout, std::io::stdout()));
    let err = stderr.map(|s| std::thread::spawn(move || copy_out(s, std::io::stderr())));
    if let Some(mut s) = stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut s);
            let _ = s.shutdown(Shutdown::Write);
        });
    }
    let exited = control.wait(id)?;
    let _ = out.join();
    if let Some(err) = err {
        let _ = err.join();
    }
    Ok(exited.code)
}

fn copy_out(mut from: UnixStream, mut to: impl Write) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
            break;
        }
    }
}

/// Sends `signal` to the workload.
pub fn signal(dir: &SandboxDir, signal: i32) -> Result<(), Error> {
    client_within(dir, SIGNAL_TIMEOUT)?.signal(WORKLOAD, signal)?;
    Ok(())
}

/// Waits until the supervisor has recorded the sandbox's end, up to `timeout`.
pub fn wait_exited(dir: &SandboxDir, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match dir.read() {
            Ok(r) if r.status == Status::Exited => return true,
            Err(_) => return true, // removed (--rm)
            Ok(r) => {
                if let Some(pid) = r.pid {
                    if !super::state::supervisor_alive(pid, &r.id) {
                        return true;
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Docker's `stop`: SIGTERM, then SIGKILL after `grace` (a workload that is PID 1 of its namespace ignores SIGTERM
/// unless it handles it). When the agent cannot be reached, the supervisor itself is killed, which ends the VM.
pub fn stop(dir: &SandboxDir, grace: Duration) -> Result<(), Error> {
    let record = dir.read()?;
    if record.status != Status::Running {
        return Ok(());
    }
    // An agent that does not answer the SIGTERM will not answer the SIGKILL either: go to the supervisor.
    let asked = signal(dir, libc::SIGTERM).is_ok();
    if asked && wait_exited(dir, grace) {
        return Ok(());
    }
    if asked && signal(dir, libc::SIGKILL).is_ok() && wait_exited(dir, Duration::from_secs(10)) {
        return Ok(());
    }
    if let Some(pid) = record
        .pid
        .filter(|p| super::state::supervisor_alive(*p, &record.id))
    {
        // SAFETY: kill(2) on the sandbox's supervisor, checked above to be this sandbox's process.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        wait_exited(dir, Duration::from_secs(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::state::StateDir;
    use std::os::unix::net::UnixListener;

    /// A guest whose agent never came up: the VMM accepts the socket connection, nothing ever answers. The
    /// control connection `signal` (and so `stop`) uses gives up after its timeout instead of hanging.
    #[test]
    fn the_agent_connection_gives_up_on_a_silent_guest() {
        let t = tempfile::tempdir().unwrap();
        let states = StateDir::open(t.path().join("run")).unwrap();
        let (dir, _) = states
            .create(Some("silent"), "busybox", &["sh".into()], false)
            .unwrap();
        dir.update(|r| r.status = Status::Running).unwrap();
        std::fs::create_dir_all(dir.vm_dir()).unwrap();
        let listener = UnixListener::bind(dir.vsock_path()).unwrap();
        let accepted = std::thread::spawn(move || {
            // Hold every connection open, answer nothing.
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept() {
                held.push(s);
                if held.len() == 2 {
                    break;
                }
            }
            held
        });
        let start = Instant::now();
        let timeout = Duration::from_millis(300);
        assert!(matches!(
            client_within(&dir, timeout).map(|_| ()),
            Err(Error::Connect { .. })
        ));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Unblock the accept loop.
        let _ = UnixStream::connect(dir.vsock_path());
        drop(accepted.join());
    }
}
