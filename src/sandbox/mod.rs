//! The sandbox: image -> rootfs image -> `VmConfig` -> VMM process -> agent -> exit code. Both front ends (the CLI
//! and the containerd shim) call this module; neither holds a second copy of the logic.

pub mod initramfs;
pub mod options;
pub mod state;

use options::RunOptions;

/// Exit code for mvrun's own failures, as docker and podman use it.
pub const EXIT_MVRUN_FAILED: u8 = 125;

/// Errors running a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox path is not complete yet.
    #[error("mvrun run cannot start {0}: the sandbox path is not wired up in this build yet")]
    NotReady(String),
}

/// Runs a sandbox to completion (or starts it detached) and returns the exit code for the caller.
pub fn run(options: RunOptions) -> Result<u8, Error> {
    Err(Error::NotReady(options.image))
}
