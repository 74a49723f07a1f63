//! The host side: a blocking client over any `Read + Write` stream (the VMM's hybrid vsock socket, or a
//! socketpair in tests). One request at a time per connection; `wait` blocks its connection, so signal from a
//! second one.

use std::io::{Read, Write};

use crate::frame::{read_frame, write_frame, Frame, FrameError};
use crate::types::{
    CgroupStats, ContainerRef, Exec, Exited, ProcessRef, ProcessSpec, Reply, Request, Resize,
    Signal, WaitOom, WorkloadSpec,
};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Framing or transport failed.
    #[error("failed to talk to the guest agent")]
    Frame(#[from] FrameError),
    /// The agent closed the connection before replying.
    #[error("failed to get a reply: the guest agent closed the connection")]
    Closed,
    /// The agent answered with an error.
    #[error("the guest agent refused the request: {0}")]
    Refused(String),
    /// The agent answered with something that does not fit the request.
    #[error("failed to understand the guest agent: unexpected {0}")]
    Unexpected(String),
}

/// Result of client calls.
pub type Result<T> = std::result::Result<T, Error>;

/// A control connection to the agent.
pub struct Client<S> {
    stream: S,
}

impl<S: Read + Write> Client<S> {
    /// Wraps a connected control stream (vsock port [`crate::CONTROL_PORT`]).
    pub fn new(stream: S) -> Self {
        Client { stream }
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends one request and reads its reply; an `Error` reply becomes [`Error::Refused`].
    pub fn call(&mut self, request: Request) -> Result<Reply> {
        write_frame(&mut self.stream, &Frame::Request(request))?;
        match read_frame(&mut self.stream)? {
            None => Err(Error::Closed),
            Some(Frame::Reply(Reply::Error(e))) => Err(Error::Refused(e.message)),
            Some(Frame::Reply(r)) => Ok(r),
            Some(Frame::Request(r)) => Err(Error::Unexpected(format!("request {r:?}"))),
        }
    }

    fn ok(&mut self, request: Request) -> Result<()> {
        match self.call(request)? {
            Reply::Ok => Ok(()),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    fn started(&mut self, request: Request) -> Result<i32> {
        match self.call(request)? {
            Reply::Started(s) => Ok(s.pid),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// Creates the container and starts the workload; returns its pid in the guest. Attach its stdio streams
    /// (id [`crate::WORKLOAD`]) first.
    pub fn create_and_start(&mut self, spec: &WorkloadSpec) -> Result<i32> {
        self.started(Request::CreateAndStart(Box::new(spec.clone())))
    }

    /// Starts another process in the container under `id` (non-zero); attach its streams first.
    pub fn exec(&mut self, id: u32, process: &ProcessSpec) -> Result<i32> {
        self.started(Request::Exec(Exec {
            id,
            process: process.clone(),
            container: None,
        }))
    }

    /// Starts another process in container `container` of a multi-container VM under `id` (non-zero).
    pub fn exec_in(&mut self, container: &str, id: u32, process: &ProcessSpec) -> Result<i32> {
        self.started(Request::Exec(Exec {
            id,
            process: process.clone(),
            container: Some(container.to_string()),
        }))
    }

    /// Kills container `id`'s processes, deletes it and releases its rootfs device; the VM goes on.
    pub fn delete_container(&mut self, id: &str) -> Result<()> {
        self.ok(Request::DeleteContainer(ContainerRef {
            id: id.to_string(),
        }))
    }

    /// Sends `signal` to process `id`.
    pub fn signal(&mut self, id: u32, signal: i32) -> Result<()> {
        self.ok(Request::Signal(Signal { id, signal }))
    }

    /// Resizes process `id`'s terminal.
    pub fn resize(&mut self, id: u32, rows: u16, cols: u16) -> Result<()> {
        self.ok(Request::Resize(Resize { id, rows, cols }))
    }

    /// Closes process `id`'s stdin.
    pub fn close_stdin(&mut self, id: u32) -> Result<()> {
        self.ok(Request::CloseStdin(ProcessRef { id }))
    }

    /// Waits for process `id` to end.
    pub fn wait(&mut self, id: u32) -> Result<Exited> {
        match self.call(Request::Wait(ProcessRef { id }))? {
            Reply::Exited(e) => Ok(e),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// The cgroup figures of process `id`'s container.
    pub fn stats(&mut self, id: u32) -> Result<CgroupStats> {
        match self.call(Request::Stats(ProcessRef { id }))? {
            Reply::Stats(s) => Ok(*s),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// Blocks until process `id`'s container has had more than `seen` OOM kills; returns the count now.
    pub fn wait_oom(&mut self, id: u32, seen: u64) -> Result<u64> {
        match self.call(Request::WaitOom(WaitOom { id, seen }))? {
            Reply::Oom(o) => Ok(o.oom_kill),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the guest to kill everything and end the VM.
    pub fn shutdown(&mut self) -> Result<()> {
        self.ok(Request::Shutdown)
    }
}

/// Binds a freshly connected stdio stream (vsock port [`crate::StreamKind::port`]) to process `id`. After this
/// returns the stream carries raw bytes: write stdin to it (shut down its write half for EOF), read stdout/stderr
/// from it until EOF.
pub fn attach_stream<S: Read + Write>(stream: &mut S, id: u32) -> Result<()> {
    write_frame(
        stream,
        &Frame::Request(Request::AttachStream(ProcessRef { id })),
    )?;
    match read_frame(stream)? {
        None => Err(Error::Closed),
        Some(Frame::Reply(Reply::Ok)) => Ok(()),
        Some(Frame::Reply(Reply::Error(e))) => Err(Error::Refused(e.message)),
        Some(other) => Err(Error::Unexpected(format!("{other:?}"))),
    }
}
