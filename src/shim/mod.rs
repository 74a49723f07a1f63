//! The containerd runtime v2 shim (`containerd-shim-mvrun-v2`, runtime type `io.containerd.mvrun.v2`): containerd's
//! Task API on top of the same sandbox library `mvrun run` uses. Built on the `containerd-shim` crate's sync API.
//!
//! - [`service`]: the `Shim` and `Task` services (one shim per container, or per pod);
//! - [`rootfs`]: containerd's snapshot mounts -> the cached read-only erofs image the guest mounts;
//! - [`spec`]: the bundle's OCI spec -> the workload guest-init creates;
//! - [`network`]: the pod's CNI network namespace -> a tap redirected to its veth, and the guest's address;
//! - [`vm`]: one microVM (the `mvrun-vmm` process) and its agent connection;
//! - [`pod`]: a pod's containers in one VM (CRI's annotations, namespace paths, block slots);
//! - [`metrics`]: the guest's cgroup figures -> containerd's cgroup v2 Metrics (Task Stats);
//! - [`process`]: a task's processes, their states and their stdio between containerd's fifos and the guest.

pub mod metrics;
pub mod network;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod service;
pub mod spec;
pub mod vm;

pub use service::{config, Service, RUNTIME_ID};
