//! A pod in one VM: what the shim reads from CRI's annotations and the pod containers' OCI specs, and the pod's
//! shared state (its VM, its block slots, its process ids).
//!
//! How a pod's containers reach its VM, and why:
//! - the sandbox (pause) container boots the VM, on its image as the boot disk, with [`SLOTS`] empty read-only
//!   disks (the VMM's runtime block slots). It is the VM's first container, named by its task id, so the
//!   others can join its namespaces;
//! - every other container of the pod gets its image (the erofs image [`super::rootfs`] builds from containerd's
//!   snapshot) on a free slot: the shim opens the image and hands the VMM the open descriptor over the slot
//!   socket (SCM_RIGHTS; the jailed VMM sees no host path), the VMM swaps the slot's backing file and tells the
//!   guest through a configuration-change interrupt, and guest-init mounts the disk read-only under a tmpfs
//!   upper layer of the container's own. A block image keeps the guest's exposure what it is for the boot
//!   rootfs (a read-only disk the kernel's erofs driver parses; no shared host filesystem), and slots filled at
//!   run time need no device hot-plug (virtio-mmio has none): the slot count bounds a pod's live containers;
//! - the namespace paths in a container's OCI spec name the *host's* namespaces of the sandbox (containerd writes
//!   `/proc/<pause pid>/ns/net`, `.../ipc`, `.../uts`, and `.../pid` when the pod shares PIDs). Inside the VM they
//!   mean "the sandbox container's": each kind with a path becomes a join of the sandbox's namespace of that kind
//!   in the guest, and every kind without a path stays the container's own. Mount, cgroup and user namespace
//!   paths are never carried in: the guest builds those per container;
//! - deleting a container deletes it in the guest (its processes, its mounts) and empties its slot; deleting the
//!   sandbox ends the VM.

use super::spec::{CONTAINER_TYPE_ANNOTATION, SANDBOX_ID_ANNOTATION};
use super::vm::Vm;
use agent_protocol::Namespace;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Empty block slots a pod's VM boots with: its containers besides the sandbox, at most this many at once.
pub const SLOTS: u8 = 4;

/// What CRI says a container is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No CRI annotations (plain `ctr`): a VM of its own.
    Alone,
    /// The pod's sandbox (pause) container: boots the pod's VM.
    Sandbox(String),
    /// Another container of pod `sandbox id`: created in that VM.
    Member(String),
}

/// The role of a container from its spec's annotations.
pub fn role(spec: &Spec) -> Role {
    let a = super::spec::annotations(spec);
    let sandbox = a
        .get(SANDBOX_ID_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned();
    match (
        a.get(CONTAINER_TYPE_ANNOTATION).map(String::as_str),
        sandbox,
    ) {
        (Some("sandbox"), Some(id)) => Role::Sandbox(id),
        (Some("container"), Some(id)) => Role::Member(id),
        _ => Role::Alone,
    }
}

/// The namespaces a pod member shares with its sandbox: every network, IPC, UTS or PID namespace its spec gives a
/// path for (a host path of the sandbox's, meaningless in the guest). Paths of other kinds are dropped, with a
/// log line.
pub fn shared_namespaces(spec: &Spec) -> Vec<Namespace> {
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut shared = Vec::new();
    for ns in list.iter().filter(|n| n.path().is_some()) {
        let kind = match ns.typ() {
            LinuxNamespaceType::Network => Namespace::Network,
            LinuxNamespaceType::Ipc => Namespace::Ipc,
            LinuxNamespaceType::Uts => Namespace::Uts,
            LinuxNamespaceType::Pid => Namespace::Pid,
            other => {
                tracing::info!(
                    "namespace {other:?} path {:?} not carried into the VM: the guest makes its own",
                    ns.path()
                );
                continue;
            }
        };
        if !shared.contains(&kind) {
            shared.push(kind);
        }
    }
    shared
}

/// Which member holds each block slot of a pod's VM.
pub struct Slots(Mutex<Vec<Option<String>>>);

impl Slots {
    /// `n` free slots.
    pub fn new(n: u8) -> Slots {
        Slots(Mutex::new(vec![None; usize::from(n)]))
    }

    /// Takes a free slot for `member`.
    pub fn claim(&self, member: &str) -> Option<u8> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = s.iter().position(Option::is_none)?;
        s[i] = Some(member.to_string());
        u8::try_from(i).ok()
    }

    /// Gives slot `slot` back.
    pub fn release(&self, slot: u8) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = s.get_mut(usize::from(slot)) {
            *x = None;
        }
    }
}

/// A pod's VM as its containers share it.
pub struct Pod {
    /// The sandbox container's task id (the guest's name for it).
    pub sandbox: String,
    /// The VM.
    pub vm: Arc<Vm>,
    /// Its block slots.
    pub slots: Slots,
    /// Process ids are the VM's: every container's init and exec takes the next one.
    pub ids: Arc<AtomicU32>,
}

impl Pod {
    /// The pod of sandbox container `sandbox`, in `vm` (booted with [`SLOTS`] slots).
    pub fn new(sandbox: String, vm: Arc<Vm>, ids: Arc<AtomicU32>) -> Pod {
        Pod {
            sandbox,
            vm,
            slots: Slots::new(SLOTS),
            ids,
        }
    }

    /// The next process id of the VM.
    pub fn next_id(&self) -> u32 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cri_annotations_tell_the_role() {
        let s = |t: &str| {
            spec(&format!(
                r#"{{"ociVersion": "1.0.2", "annotations": {{"io.kubernetes.cri.container-type": "{t}",
                    "io.kubernetes.cri.sandbox-id": "abc"}}}}"#
            ))
        };
        assert_eq!(role(&s("sandbox")), Role::Sandbox("abc".into()));
        assert_eq!(role(&s("container")), Role::Member("abc".into()));
        assert_eq!(role(&s("other")), Role::Alone);
        assert_eq!(role(&spec(r#"{"ociVersion": "1.0.2"}"#)), Role::Alone);
    }

    #[test]
    fn host_namespace_paths_become_joins_of_the_sandboxs() {
        // What containerd's CRI writes for a pod member (PID shared at pod level).
        let s = spec(
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/4242/ns/pid"},
                {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                {"type": "uts", "path": "/proc/4242/ns/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1234"},
                {"type": "cgroup", "path": "/proc/4242/ns/cgroup"}]}}"#,
        );
        assert_eq!(
            shared_namespaces(&s),
            [
                Namespace::Pid,
                Namespace::Ipc,
                Namespace::Uts,
                Namespace::Network
            ]
        );
        // Without pod-level PID sharing the member keeps its own PID namespace.
        let s = spec(
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [
                {"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}]}}"#,
        );
        assert_eq!(shared_namespaces(&s), [Namespace::Network]);
    }

    #[test]
    fn slots_are_claimed_and_released() {
        let slots = Slots::new(SLOTS);
        for i in 0..SLOTS {
            assert_eq!(slots.claim(&format!("c{i}")), Some(i));
        }
        assert_eq!(slots.claim("one-too-many"), None);
        slots.release(2);
        slots.release(200);
        assert_eq!(slots.claim("next"), Some(2));
    }
}
