//! guest-init: PID 1 of an mvrun guest.
//!
//! Mounts the guest's pseudo filesystems and the image rootfs, talks to the host over vsock with the agent
//! protocol, and runs the workload as a hardened container built with youki's `libcontainer`. The same code
//! runs on a host as `guest-init run --rootfs DIR -- CMD` for tests and debugging.

pub mod agent;
pub mod cgroup;
pub mod cmdline;
pub mod container;
pub mod host;
pub mod net;
pub mod pid1;
pub mod pod;
pub mod seccomp;
pub mod spec;
pub mod tty;
pub mod user;
