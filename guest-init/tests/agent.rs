//! The agent end to end over socketpairs: the host-side `Client` drives a real container (busybox rootfs, as
//! root); plus the protocol's failure cases against the live server.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use agent_protocol::client::{attach_stream, Error as ClientError};
use agent_protocol::frame::{encode, read_frame, Frame};
use agent_protocol::{Client, ProcessSpec, Reply, Request, StreamKind, WorkloadSpec, WORKLOAD};
use guest_init::agent::{Agent, Config};
use guest_init::container::{Reaper, Runtime};

struct Fixture {
    agent: Arc<Agent>,
    _root: tempfile::TempDir,
    _work: tempfile::TempDir,
}

fn fixture() -> Fixture {
    guest_init::host::become_subreaper();
    // The protocol-only test runs without root or busybox: an empty rootfs is enough there.
    let root = if common::skip_reason().is_none() {
        common::busybox_rootfs()
    } else {
        tempfile::tempdir().unwrap()
    };
    let work = tempfile::tempdir().unwrap();
    let id = guest_init::host::container_id("agent-test");
    let runtime = Runtime {
        state_root: work.path().join("state"),
        bundle_root: work.path().join("bundles"),
        reaper: Reaper::start(),
    };
    let config = Config {
        rootfs: root.path().to_path_buf(),
        work_dir: work.path().join("etc"),
        cgroups_path: format!("/mvrun/{id}").into(),
        container_id: id,
        pods_dir: work.path().join("pods"),
        device_dir: work.path().join("dev"),
        tmpfs_size: "16m".into(),
    };
    Fixture {
        agent: Arc::new(Agent::new(runtime, config)),
        _root: root,
        _work: work,
    }
}

impl Fixture {
    fn control(&self) -> (Client<UnixStream>, JoinHandle<()>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = self.agent.clone();
        let t = thread::spawn(move || agent.serve_control(guest));
        (Client::new(host), t)
    }

    fn raw_control(&self) -> (UnixStream, JoinHandle<()>) {
        let (c, t) = self.control();
        (c.into_inner(), t)
    }

    fn stream(&self, id: u32, kind: StreamKind) -> UnixStream {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = self.agent.clone();
        let t = thread::spawn(move || agent.serve_stream(guest, kind));
        attach_stream(&mut host, id).unwrap();
        t.join().unwrap();
        host
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.agent.stop();
    }
}

fn workload(args: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        process: ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn read_all(mut s: UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn workload_streams_and_exit_code() {
    if common::skip("workload_streams_and_exit_code") {
        return;
    }
    let f = fixture();
    let mut stdin = f.stream(WORKLOAD, StreamKind::Stdin);
    let stdout = f.stream(WORKLOAD, StreamKind::Stdout);
    let stderr = f.stream(WORKLOAD, StreamKind::Stderr);
    let (mut c, _t) = f.control();
    let pid = c
        .create_and_start(&workload(&[
            "sh",
            "-c",
            "read x; echo out:$x; echo err >&2; exit 7",
        ]))
        .unwrap();
    assert!(pid > 0);
    stdin.write_all(b"hello\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(stdout), "out:hello\n");
    assert_eq!(read_all(stderr), "err\n");
    let e = c.wait(WORKLOAD).unwrap();
    assert_eq!((e.code, e.signal), (7, None));
    // Waiting again returns the same status; a second workload is refused.
    assert_eq!(c.wait(WORKLOAD).unwrap().code, 7);
    assert!(matches!(
        c.create_and_start(&workload(&["true"])),
        Err(ClientError::Refused(_))
    ));
}

#[test]
fn signal_exec_close_stdin_and_shutdown() {
    if common::skip("signal_exec_close_stdin_and_shutdown") {
        return;
    }
    let f = fixture();
    let (mut c, _t) = f.control();
    c.create_and_start(&workload(&[
        "sh",
        "-c",
        "trap 'exit 5' TERM; cat > /dev/null; while true; do sleep 0.05; done",
    ]))
    .unwrap();

    // exec with its own stdout stream.
    let out = f.stream(1, StreamKind::Stdout);
    let exec = ProcessSpec {
        args: vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()],
        ..Default::default()
    };
    c.exec(1, &exec).unwrap();
    assert_eq!(read_all(out), "hi\n");
    assert_eq!(c.wait(1).unwrap().code, 3);
    assert!(
        matches!(c.exec(1, &exec), Err(ClientError::Refused(_))),
        "exec ids are unique"
    );
    assert_eq!(
        c.exec(
            2,
            &ProcessSpec {
                args: vec!["nope".into()],
                ..Default::default()
            }
        )
        .map(|_| ())
        .ok(),
        Some(())
    );
    assert_eq!(c.wait(2).unwrap().code, 127);

    // CloseStdin without a stdin stream is harmless; resize has no terminal to act on.
    c.close_stdin(WORKLOAD).unwrap();
    assert!(matches!(
        c.resize(WORKLOAD, 24, 80),
        Err(ClientError::Refused(_))
    ));
    assert!(matches!(
        c.signal(WORKLOAD, 4242),
        Err(ClientError::Refused(_))
    ));

    // Signal from a second connection while the first waits.
    let (mut c2, _t2) = f.control();
    let waiter = thread::spawn(move || c.wait(WORKLOAD).unwrap());
    thread::sleep(Duration::from_millis(200));
    c2.signal(WORKLOAD, libc::SIGTERM).unwrap();
    let e = waiter.join().unwrap();
    assert_eq!(e.code, 5, "the workload's TERM trap ran");
    assert!(
        matches!(
            c2.signal(WORKLOAD, libc::SIGTERM),
            Err(ClientError::Refused(_))
        ),
        "it has exited"
    );

    c2.shutdown().unwrap();
    f.agent
        .wait_for_end(Duration::from_secs(60), Duration::from_secs(60));
}

#[test]
fn close_stdin_gives_eof_and_kill_gives_137() {
    if common::skip("close_stdin_gives_eof_and_kill_gives_137") {
        return;
    }
    let f = fixture();
    let _stdin = f.stream(WORKLOAD, StreamKind::Stdin);
    let (mut c, _t) = f.control();
    c.create_and_start(&workload(&["sh", "-c", "cat; sleep 30"]))
        .unwrap();
    c.close_stdin(WORKLOAD).unwrap();
    let (mut c2, _t2) = f.control();
    thread::sleep(Duration::from_millis(200));
    c2.signal(WORKLOAD, libc::SIGKILL).unwrap();
    let e = c.wait(WORKLOAD).unwrap();
    assert_eq!((e.code, e.signal), (137, Some(9)));
}

fn reply(s: &mut UnixStream) -> Reply {
    match read_frame(s).unwrap() {
        Some(Frame::Reply(r)) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn malformed_frames_get_errors_and_the_agent_goes_on() {
    // Needs no container: runs everywhere.
    let f = fixture();
    let (mut s, t) = f.raw_control();
    let header = |kind: u8, len: u32| {
        let mut h = b"MV\x01".to_vec();
        h.push(kind);
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    // Unknown type.
    s.write_all(&header(0x42, 2)).unwrap();
    s.write_all(b"{}").unwrap();
    assert!(matches!(reply(&mut s), Reply::Error(e) if e.message.contains("unknown message kind")));
    // Oversized: announced over the limit, sent in full; skipped, answered, connection kept.
    let big = agent_protocol::MAX_PAYLOAD as u32 + 10;
    s.write_all(&header(0x01, big)).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        thread::spawn(move || w.write_all(&vec![b' '; big as usize]).unwrap())
    };
    assert!(matches!(reply(&mut s), Reply::Error(e) if e.message.contains("exceeds the limit")));
    writer.join().unwrap();
    // Bad payload.
    s.write_all(&header(0x06, 3)).unwrap();
    s.write_all(b"{x}").unwrap();
    assert!(matches!(reply(&mut s), Reply::Error(_)));
    // A valid request still works: unknown process.
    s.write_all(
        &encode(&Frame::Request(Request::Wait(agent_protocol::ProcessRef {
            id: 9,
        })))
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(reply(&mut s), Reply::Error(e) if e.message.contains("no such process")));
    // Truncated frame, then the peer disconnects mid-frame: the server thread ends.
    let frame = encode(&Frame::Request(Request::Shutdown)).unwrap();
    s.write_all(&frame[..5]).unwrap();
    drop(s);
    t.join().unwrap();

    // Bad magic: error reply, then the connection is closed.
    let (mut s, t) = f.raw_control();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(matches!(reply(&mut s), Reply::Error(e) if e.message.contains("magic")));
    assert!(
        !matches!(read_frame(&mut s), Ok(Some(_))),
        "closed after a framing error"
    );
    t.join().unwrap();

    // A stdio connection that does not start with AttachStream is refused.
    let (mut host, guest) = UnixStream::pair().unwrap();
    let agent = f.agent.clone();
    let t = thread::spawn(move || agent.serve_stream(guest, StreamKind::Stdout));
    host.write_all(&encode(&Frame::Request(Request::Shutdown)).unwrap())
        .unwrap();
    assert!(matches!(reply(&mut host), Reply::Error(_)));
    t.join().unwrap();
    // Requests before the workload exists are refused cleanly.
    let (mut c, _t) = f.control();
    assert!(matches!(
        c.signal(WORKLOAD, 9),
        Err(ClientError::Refused(_))
    ));
    assert!(matches!(
        c.exec(1, &ProcessSpec::default()),
        Err(ClientError::Refused(_))
    ));
}

/// Reads `s` until the text so far contains `needle` (or EOF / 20 s pass); returns everything read.
fn read_until(s: &mut UnixStream, seen: &mut String, needle: &str) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    true
}

fn on_terminal(args: &[&str], rows: u16, cols: u16) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: true,
        tty: true,
        window: Some(agent_protocol::WindowSize { rows, cols }),
        ..Default::default()
    }
}

#[test]
fn workload_and_exec_on_a_terminal() {
    if common::skip("workload_and_exec_on_a_terminal") {
        return;
    }
    let f = fixture();
    let mut stdin = f.stream(WORKLOAD, StreamKind::Stdin);
    let mut stdout = f.stream(WORKLOAD, StreamKind::Stdout);
    let stderr = f.stream(WORKLOAD, StreamKind::Stderr);
    let (mut c, _t) = f.control();
    let w = WorkloadSpec {
        process: on_terminal(
            &[
                "sh",
                "-c",
                "tty; stty size; echo $TERM; echo to-stderr >&2; read x; echo got:$x; read y; stty size; exit 3",
            ],
            24,
            80,
        ),
        ..Default::default()
    };
    c.create_and_start(&w).unwrap();
    assert_eq!(read_all(stderr), "", "stderr merges into the terminal");
    let mut seen = String::new();
    assert!(
        read_until(&mut stdout, &mut seen, "to-stderr\r\n"),
        "{seen:?}"
    );
    assert_eq!(
        seen, "/dev/pts/0\r\n24 80\r\nxterm\r\nto-stderr\r\n",
        "a terminal of the container's own devpts, sized before the workload ran, TERM set, output merged"
    );
    stdin.write_all(b"hello\n").unwrap();
    seen.clear();
    assert!(
        read_until(&mut stdout, &mut seen, "got:hello\r\n"),
        "{seen:?}"
    );
    assert_eq!(seen, "hello\r\ngot:hello\r\n", "the terminal echoes input");

    // An exec gets its own terminal and size.
    let mut exec_out = f.stream(1, StreamKind::Stdout);
    c.exec(
        1,
        &on_terminal(&["sh", "-c", "tty; stty size; exit 5"], 40, 120),
    )
    .unwrap();
    let mut exec_seen = String::new();
    read_until(&mut exec_out, &mut exec_seen, "never");
    assert_eq!(exec_seen, "/dev/pts/1\r\n40 120\r\n");
    assert_eq!(c.wait(1).unwrap().code, 5);

    // Resize reaches the workload's terminal.
    c.resize(WORKLOAD, 50, 150).unwrap();
    stdin.write_all(b"\n").unwrap();
    seen.clear();
    read_until(&mut stdout, &mut seen, "never");
    assert_eq!(
        seen, "\r\n50 150\r\n",
        "EOF on stdout once the workload is gone"
    );
    assert_eq!(c.wait(WORKLOAD).unwrap().code, 3);
    assert!(
        matches!(c.resize(9, 1, 1), Err(ClientError::Refused(_))),
        "no such process"
    );
}

#[test]
fn closing_a_terminal_stdin_types_end_of_file() {
    if common::skip("closing_a_terminal_stdin_types_end_of_file") {
        return;
    }
    let f = fixture();
    let stdin = f.stream(WORKLOAD, StreamKind::Stdin);
    let stdout = f.stream(WORKLOAD, StreamKind::Stdout);
    let (mut c, _t) = f.control();
    let w = WorkloadSpec {
        process: on_terminal(&["sh", "-c", "cat; echo cat-ended"], 0, 0),
        ..Default::default()
    };
    c.create_and_start(&w).unwrap();
    (&stdin).write_all(b"abc\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    let out = read_all(stdout);
    assert!(out.ends_with("cat-ended\r\n"), "{out:?}");
    assert_eq!(c.wait(WORKLOAD).unwrap().code, 0);
}
