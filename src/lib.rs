//! mvrun: run untrusted OCI images in their own KVM microVM.
//!
//! This library holds what the `mvrun` CLI (and later the containerd shim) share: where files live, the guest
//! kernel store, and the sandbox that ties images, the VMM and the guest agent together.

pub mod check;
pub mod kernel;
pub mod paths;
pub mod sandbox;
pub mod shim;
