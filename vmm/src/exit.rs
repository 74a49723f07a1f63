//! How the VM ends: the first reason recorded wins, and an eventfd wakes the event loop.

use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 CPU reset, the way out with `reboot=k`).
    Reset,
    /// KVM reported a shutdown (triple fault) or a system event.
    Shutdown,
    /// KVM could not emulate an instruction or otherwise failed inside the guest.
    InternalError {
        /// KVM's suberror (1: emulation failure).
        suberror: u32,
        /// Guest instruction pointer.
        rip: u64,
        /// vCPU index.
        vcpu: u8,
    },
    /// KVM refused to enter the guest.
    FailEntry {
        /// Hardware exit reason.
        reason: u64,
        /// vCPU index.
        vcpu: u8,
    },
    /// A vCPU thread failed in the VMM.
    VcpuError {
        /// vCPU index.
        vcpu: u8,
        /// What failed.
        message: String,
    },
    /// The VMM was asked to stop (timeout, caller request).
    Stopped,
}

impl VmExit {
    /// Whether this is an orderly end of the guest (reset or shutdown).
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::Reset | VmExit::Shutdown)
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "the guest reset the VM"),
            VmExit::Shutdown => write!(f, "the guest shut down"),
            VmExit::InternalError {
                suberror,
                rip,
                vcpu,
            } => {
                write!(
                f,
                "KVM internal error, suberror {suberror}{} on vCPU {vcpu} at guest RIP {rip:#x}",
                if *suberror == 1 { " (instruction emulation failed)" } else { "" }
            )
            }
            VmExit::FailEntry { reason, vcpu } => {
                write!(
                    f,
                    "KVM failed to enter the guest on vCPU {vcpu} (hardware reason {reason:#x})"
                )
            }
            VmExit::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu} failed: {message}"),
            VmExit::Stopped => write!(f, "the VMM stopped the VM"),
        }
    }
}

/// Shared by the vCPUs, the devices that can end the VM and the event loop.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    event: EventFd,
}

impl ExitSignal {
    /// A new, unsignalled exit.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(ExitSignal {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Records `exit` unless a reason is already there, and wakes the event loop.
    pub fn signal(&self, exit: VmExit) {
        {
            let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if reason.is_none() {
                *reason = Some(exit);
            }
        }
        if let Err(e) = self.event.write(1) {
            tracing::error!("failed to wake the event loop for the VM's exit: {e}");
        }
    }

    /// The recorded reason, if the VM has ended.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd the event loop waits on.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.signal(VmExit::Reset);
        s.signal(VmExit::Stopped);
        assert_eq!(s.reason(), Some(VmExit::Reset));
        assert_eq!(s.event().read().unwrap(), 2);
    }

    #[test]
    fn internal_error_message_names_rip() {
        let e = VmExit::InternalError {
            suberror: 1,
            rip: 0xffff_ffff_8100_0000,
            vcpu: 0,
        };
        let msg = e.to_string();
        assert!(msg.contains("0xffffffff81000000"), "{msg}");
        assert!(msg.contains("emulation failed"), "{msg}");
    }
}
