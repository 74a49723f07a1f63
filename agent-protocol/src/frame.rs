//! Framing: an 8-byte header (magic `MV`, version, kind, big-endian u32 payload length), then the JSON payload.
//!
//! Decoding never allocates more than [`MAX_PAYLOAD`] bytes and never panics on any input (fuzzed by
//! `fuzz/fuzz_targets/agent_protocol.rs`). Errors after which the stream is still in sync (bad version, unknown
//! kind, oversized or undecodable payload) consume the frame's payload so the reader can reply and go on.

use std::io::{self, Read, Write};

use crate::types::{
    CgroupStats, ContainerRef, ErrorReply, Exec, Exited, Oom, ProcessRef, Reply, Request, Resize,
    Signal, Started, WaitOom, WorkloadSpec,
};
use crate::{MAX_PAYLOAD, VERSION};

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"MV";
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;

mod kind {
    pub const CREATE_AND_START: u8 = 0x01;
    pub const EXEC: u8 = 0x02;
    pub const SIGNAL: u8 = 0x03;
    pub const RESIZE: u8 = 0x04;
    pub const CLOSE_STDIN: u8 = 0x05;
    pub const WAIT: u8 = 0x06;
    pub const SHUTDOWN: u8 = 0x07;
    pub const ATTACH_STREAM: u8 = 0x08;
    pub const STATS: u8 = 0x09;
    pub const WAIT_OOM: u8 = 0x0a;
    pub const DELETE_CONTAINER: u8 = 0x0b;
    pub const OK: u8 = 0x81;
    pub const STARTED: u8 = 0x82;
    pub const EXITED: u8 = 0x83;
    pub const ERROR: u8 = 0x84;
    pub const STATS_REPLY: u8 = 0x85;
    pub const OOM: u8 = 0x86;
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Host -> guest.
    Request(Request),
    /// Guest -> host.
    Reply(Reply),
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed.
    #[error("failed to read or write a frame")]
    Io(#[from] io::Error),
    /// The peer closed the connection inside a frame.
    #[error("failed to read a frame: the connection closed in the middle of it")]
    Truncated,
    /// The header does not start with the magic: the stream is out of sync and must be closed.
    #[error("failed to read a frame: bad magic {0:02x?} (stream out of sync)")]
    BadMagic([u8; 2]),
    /// A version this side does not speak (payload skipped).
    #[error(
        "failed to read a frame: unsupported protocol version {0} (this side speaks {VERSION})"
    )]
    Version(u8),
    /// An unknown message kind (payload skipped).
    #[error("failed to read a frame: unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A payload over the limit (skipped when reading, never sent when writing).
    #[error("failed to handle a frame: payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(u64),
    /// A payload that is not the JSON its kind requires (payload consumed).
    #[error("failed to decode the payload of message kind {kind:#04x}")]
    Payload {
        /// The message kind.
        kind: u8,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
}

impl FrameError {
    /// Whether the stream is still at a frame boundary, so the reader may reply with an error and go on.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            FrameError::Version(_)
                | FrameError::UnknownKind(_)
                | FrameError::TooLarge(_)
                | FrameError::Payload { .. }
        )
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes arrived.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Discards `len` payload bytes without buffering them.
fn skip<R: Read>(r: &mut R, len: u64) -> Result<(), FrameError> {
    let skipped = io::copy(&mut r.by_ref().take(len), &mut io::sink())?;
    if skipped < len {
        return Err(FrameError::Truncated);
    }
    Ok(())
}

/// Reads one frame. `Ok(None)` means the peer closed the connection cleanly at a frame boundary.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match fill(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        _ => return Err(FrameError::Truncated),
    }
    if header[..2] != MAGIC {
        return Err(FrameError::BadMagic([header[0], header[1]]));
    }
    let (version, kind) = (header[2], header[3]);
    let len = u64::from(u32::from_be_bytes([
        header[4], header[5], header[6], header[7],
    ]));
    if version != VERSION {
        skip(r, len)?;
        return Err(FrameError::Version(version));
    }
    if len > MAX_PAYLOAD as u64 {
        skip(r, len)?;
        return Err(FrameError::TooLarge(len));
    }
    if !is_known_kind(kind) {
        skip(r, len)?;
        return Err(FrameError::UnknownKind(kind));
    }
    // len <= MAX_PAYLOAD, so this allocation is bounded.
    let mut payload = vec![0u8; len as usize];
    if fill(r, &mut payload)? != payload.len() {
        return Err(FrameError::Truncated);
    }
    decode_payload(kind, &payload).map(Some)
}

fn is_known_kind(kind: u8) -> bool {
    matches!(kind, kind::CREATE_AND_START..=kind::DELETE_CONTAINER | kind::OK..=kind::OOM)
}

fn json<'a, T: serde::Deserialize<'a>>(kind: u8, payload: &'a [u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|source| FrameError::Payload { kind, source })
}

/// Decodes a payload of a known kind.
fn decode_payload(k: u8, p: &[u8]) -> Result<Frame, FrameError> {
    Ok(match k {
        kind::CREATE_AND_START => {
            Frame::Request(Request::CreateAndStart(Box::new(json::<WorkloadSpec>(
                k, p,
            )?)))
        }
        kind::EXEC => Frame::Request(Request::Exec(json::<Exec>(k, p)?)),
        kind::SIGNAL => Frame::Request(Request::Signal(json::<Signal>(k, p)?)),
        kind::RESIZE => Frame::Request(Request::Resize(json::<Resize>(k, p)?)),
        kind::CLOSE_STDIN => Frame::Request(Request::CloseStdin(json::<ProcessRef>(k, p)?)),
        kind::WAIT => Frame::Request(Request::Wait(json::<ProcessRef>(k, p)?)),
        kind::SHUTDOWN => Frame::Request(Request::Shutdown),
        kind::ATTACH_STREAM => Frame::Request(Request::AttachStream(json::<ProcessRef>(k, p)?)),
        kind::STATS => Frame::Request(Request::Stats(json::<ProcessRef>(k, p)?)),
        kind::WAIT_OOM => Frame::Request(Request::WaitOom(json::<WaitOom>(k, p)?)),
        kind::DELETE_CONTAINER => {
            Frame::Request(Request::DeleteContainer(json::<ContainerRef>(k, p)?))
        }
        kind::OK => Frame::Reply(Reply::Ok),
        kind::STARTED => Frame::Reply(Reply::Started(json::<Started>(k, p)?)),
        kind::EXITED => Frame::Reply(Reply::Exited(json::<Exited>(k, p)?)),
        kind::ERROR => Frame::Reply(Reply::Error(json::<ErrorReply>(k, p)?)),
        kind::STATS_REPLY => Frame::Reply(Reply::Stats(Box::new(json::<CgroupStats>(k, p)?))),
        kind::OOM => Frame::Reply(Reply::Oom(json::<Oom>(k, p)?)),
        other => return Err(FrameError::UnknownKind(other)),
    })
}

/// The kind byte and JSON payload of a frame.
fn encode_payload(frame: &Frame) -> Result<(u8, Vec<u8>), serde_json::Error> {
    Ok(match frame {
        Frame::Request(Request::CreateAndStart(s)) => {
            (kind::CREATE_AND_START, serde_json::to_vec(s)?)
        }
        Frame::Request(Request::Exec(e)) => (kind::EXEC, serde_json::to_vec(e)?),
        Frame::Request(Request::Signal(s)) => (kind::SIGNAL, serde_json::to_vec(s)?),
        Frame::Request(Request::Resize(r)) => (kind::RESIZE, serde_json::to_vec(r)?),
        Frame::Request(Request::CloseStdin(p)) => (kind::CLOSE_STDIN, serde_json::to_vec(p)?),
        Frame::Request(Request::Wait(p)) => (kind::WAIT, serde_json::to_vec(p)?),
        Frame::Request(Request::Shutdown) => (kind::SHUTDOWN, Vec::new()),
        Frame::Request(Request::AttachStream(p)) => (kind::ATTACH_STREAM, serde_json::to_vec(p)?),
        Frame::Request(Request::Stats(p)) => (kind::STATS, serde_json::to_vec(p)?),
        Frame::Request(Request::WaitOom(w)) => (kind::WAIT_OOM, serde_json::to_vec(w)?),
        Frame::Request(Request::DeleteContainer(c)) => {
            (kind::DELETE_CONTAINER, serde_json::to_vec(c)?)
        }
        Frame::Reply(Reply::Ok) => (kind::OK, Vec::new()),
        Frame::Reply(Reply::Started(s)) => (kind::STARTED, serde_json::to_vec(s)?),
        Frame::Reply(Reply::Exited(e)) => (kind::EXITED, serde_json::to_vec(e)?),
        Frame::Reply(Reply::Error(e)) => (kind::ERROR, serde_json::to_vec(e)?),
        Frame::Reply(Reply::Stats(s)) => (kind::STATS_REPLY, serde_json::to_vec(s)?),
        Frame::Reply(Reply::Oom(o)) => (kind::OOM, serde_json::to_vec(o)?),
    })
}

/// Encodes a frame into bytes (header + payload).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let (k, payload) =
        encode_payload(frame).map_err(|source| FrameError::Payload { kind: 0, source })?;
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(k);
    // payload.len() <= MAX_PAYLOAD < u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Writes one frame with a single `write_all`, so frames from one writer never interleave.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<(), FrameError> {
    w.write_all(&encode(frame)?)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;
    use std::io::Cursor;

    fn all_frames() -> Vec<Frame> {
        let spec = WorkloadSpec {
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["A=b".into()],
                cwd: Some("/tmp".into()),
                user: Some("65534".into()),
                stdin: true,
                tty: true,
                window: Some(WindowSize { rows: 24, cols: 80 }),
            },
            hostname: Some("box".into()),
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["NET_RAW".into()],
            seccomp: SeccompPolicy::Profile("{}".into()),
            no_new_privileges: false,
            read_only: true,
            tmpfs: vec!["/tmp:size=1m".into()],
            memory_bytes: Some(64 << 20),
            cpus: Some(1.5),
            pids_limit: Some(100),
            network: Some(NetworkConfig {
                interface: Some("eth0".into()),
                address: Some("10.0.0.2/24".into()),
                gateway: Some("10.0.0.1".into()),
                mtu: Some(1500),
                dns: vec!["10.0.0.1".into()],
            }),
            container: None,
        };
        let pod_member = WorkloadSpec {
            container: Some(ContainerPlacement {
                id: "app-1".into(),
                process: 5,
                rootfs: Some(RootfsDevice {
                    device: "/dev/vdc".into(),
                    fstype: Some("erofs".into()),
                }),
                join: Some(JoinNamespaces {
                    container: "sandbox".into(),
                    namespaces: vec![Namespace::Network, Namespace::Ipc, Namespace::Uts],
                }),
            }),
            ..Default::default()
        };
        vec![
            Frame::Request(Request::CreateAndStart(Box::new(pod_member))),
            Frame::Request(Request::CreateAndStart(Box::new(spec))),
            Frame::Request(Request::CreateAndStart(Box::default())),
            Frame::Request(Request::Exec(Exec {
                id: 3,
                process: ProcessSpec::default(),
                container: None,
            })),
            Frame::Request(Request::Exec(Exec {
                id: 4,
                process: ProcessSpec::default(),
                container: Some("app-1".into()),
            })),
            Frame::Request(Request::DeleteContainer(ContainerRef {
                id: "app-1".into(),
            })),
            Frame::Request(Request::Signal(Signal { id: 0, signal: 15 })),
            Frame::Request(Request::Resize(Resize {
                id: 1,
                rows: 24,
                cols: 80,
            })),
            Frame::Request(Request::CloseStdin(ProcessRef { id: 0 })),
            Frame::Request(Request::Wait(ProcessRef { id: 7 })),
            Frame::Request(Request::Shutdown),
            Frame::Request(Request::AttachStream(ProcessRef { id: 2 })),
            Frame::Reply(Reply::Ok),
            Frame::Reply(Reply::Started(Started { id: 0, pid: 42 })),
            Frame::Reply(Reply::Exited(Exited {
                id: 0,
                code: 137,
                signal: Some(9),
            })),
            Frame::Reply(Reply::Error(ErrorReply {
                message: "failed to x".into(),
            })),
            Frame::Request(Request::Stats(ProcessRef { id: 0 })),
            Frame::Request(Request::WaitOom(WaitOom { id: 0, seen: 2 })),
            Frame::Reply(Reply::Stats(Box::new(CgroupStats {
                memory_current: Some(4096),
                memory_max: None,
                memory_stat: [("anon".to_string(), 8192)].into(),
                cpu_stat: [("usage_usec".to_string(), 12)].into(),
                pids_max: Some(1024),
                io: vec![IoStat {
                    major: 254,
                    rbytes: 512,
                    ..Default::default()
                }],
                ..Default::default()
            }))),
            Frame::Reply(Reply::Stats(Box::default())),
            Frame::Reply(Reply::Oom(Oom { id: 0, oom_kill: 3 })),
        ]
    }

    #[test]
    fn round_trips_every_message() {
        let mut buf = Vec::new();
        for f in all_frames() {
            write_frame(&mut buf, &f).unwrap();
        }
        let mut r = Cursor::new(buf);
        for f in all_frames() {
            assert_eq!(read_frame(&mut r).unwrap(), Some(f));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn single_container_requests_keep_their_wire_form_and_meaning() {
        // What a host from before pods sends decodes as a request for the VM's one container...
        let old = br#"{"process": {"args": ["true"]}}"#;
        let w: WorkloadSpec = serde_json::from_slice(old).unwrap();
        assert!(w.container.is_none());
        let e: Exec = serde_json::from_slice(br#"{"id": 2, "process": {"args": ["ls"]}}"#).unwrap();
        assert!(e.container.is_none());
        // ...and such requests encode without the new fields, so a guest from before pods reads them too.
        let json = serde_json::to_string(&WorkloadSpec::default()).unwrap();
        assert!(!json.contains("container"), "{json}");
        let json = serde_json::to_string(&Exec {
            id: 1,
            process: ProcessSpec::default(),
            container: None,
        })
        .unwrap();
        assert!(!json.contains("container"), "{json}");
        // A placement names only what it sets.
        let p: ContainerPlacement = serde_json::from_slice(
            br#"{"id": "c", "join": {"container": "s", "namespaces": ["network", "pid"]}}"#,
        )
        .unwrap();
        assert_eq!(p.process, 0);
        assert_eq!(
            p.join.unwrap().namespaces,
            [Namespace::Network, Namespace::Pid]
        );
        assert!(serde_json::from_slice::<JoinNamespaces>(br#"{"namespaces": ["mnt"]}"#).is_err());
    }

    #[test]
    fn truncated_header_and_payload_are_errors() {
        let full = encode(&Frame::Request(Request::Wait(ProcessRef { id: 1 }))).unwrap();
        for cut in 1..full.len() {
            let err = read_frame(&mut Cursor::new(&full[..cut])).unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut {cut}: {err}");
            assert!(!err.is_recoverable());
        }
    }

    fn header(version: u8, kind: u8, len: u32) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.push(version);
        h.push(kind);
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_read() {
        let len = MAX_PAYLOAD as u32 + 1;
        let mut buf = header(VERSION, 0x06, len);
        buf.resize(buf.len() + len as usize, b'x');
        buf.extend(encode(&Frame::Reply(Reply::Ok)).unwrap());
        let mut r = Cursor::new(buf);
        let err = read_frame(&mut r).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(l) if l == u64::from(len)));
        assert!(err.is_recoverable());
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::Reply(Reply::Ok)));
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        // 4 GiB declared, 3 bytes present: truncated, with nothing allocated for the claim.
        let mut buf = header(VERSION, 0x01, u32::MAX);
        buf.extend_from_slice(b"abc");
        assert!(matches!(
            read_frame(&mut Cursor::new(buf)),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn unknown_kind_and_version_are_recoverable() {
        let mut buf = header(VERSION, 0x7f, 2);
        buf.extend_from_slice(b"{}");
        buf.extend(header(9, 0x01, 1));
        buf.push(b'x');
        buf.extend(encode(&Frame::Request(Request::Shutdown)).unwrap());
        let mut r = Cursor::new(buf);
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::UnknownKind(0x7f))
        ));
        assert!(matches!(read_frame(&mut r), Err(FrameError::Version(9))));
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::Request(Request::Shutdown))
        );
    }

    #[test]
    fn bad_payload_and_bad_magic() {
        let mut buf = header(VERSION, 0x03, 5);
        buf.extend_from_slice(b"nope!");
        buf.extend_from_slice(b"XX\x01\x01\0\0\0\0");
        let mut r = Cursor::new(buf);
        let err = read_frame(&mut r).unwrap_err();
        assert!(matches!(err, FrameError::Payload { kind: 0x03, .. }) && err.is_recoverable());
        let err = read_frame(&mut r).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic(_)) && !err.is_recoverable());
    }

    #[test]
    fn oversized_frame_is_never_sent() {
        let spec = WorkloadSpec {
            process: ProcessSpec {
                args: vec!["x".repeat(MAX_PAYLOAD)],
                ..Default::default()
            },
            ..Default::default()
        };
        let mut out = Vec::new();
        let err = write_frame(
            &mut out,
            &Frame::Request(Request::CreateAndStart(Box::new(spec))),
        )
        .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
        assert!(out.is_empty());
    }
}
