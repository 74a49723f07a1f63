//! The shim's `Shim` (start/delete of the shim process) and `Task` (the ttrpc API containerd calls) services.
//!
//! One shim process serves every container of a group (a pod, told by the CRI sandbox-id annotation, else the
//! container alone). A container without CRI annotations gets its own microVM: Create boots it (the slow part),
//! Start creates the container in it through the agent, and the VM is shut down as soon as the init process
//! exits. A pod is one VM ([`super::pod`]): its sandbox container boots it and ends it; its other containers are
//! created in it, each on its image in a block slot.
//!
//! pids: the init process reports the VMM's pid on the host (the process whose death ends the task); exec'd
//! processes report their pid inside the guest.
//!
//! Stats are the container's cgroup figures from inside the guest ([`super::metrics`]). OOM kills: from Start on,
//! a thread keeps one `WaitOom` pending on its own agent connection and publishes TaskOOM each time the
//! container's `oom_kill` count rises; when the init process exits, the count is read once more before the VM
//! is shut down, so a kill that raced the exit is not lost.

use super::network::{self, PodNetwork};
use super::pod::{self, Pod, Role};
use super::process::{Process, Status, Stdio};
use super::vm::Vm;
use super::{rootfs, spec};
use agent_protocol::{
    ContainerPlacement, JoinNamespaces, RootfsDevice, StreamKind, WorkloadSpec, WORKLOAD,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    api, Config, Context, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// containerd's runtime type for mvrun.
pub const RUNTIME_ID: &str = "io.containerd.mvrun.v2";
/// The file in the bundle that tells a later `delete` invocation which runtime directory was this container's.
const BUNDLE_MARKER: &str = "mvrun-sandbox";

/// The shim configuration: the shim reaps its own children (each VMM is waited for by the thread that started
/// it), so the library's reaper, which would race with them and with `Command::output`, stays off.
pub fn config() -> Config {
    Config {
        no_reaper: true,
        ..Config::default()
    }
}

fn err(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::error::get_rpc_status(code, msg)
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ttrpc::Error {
    to_rpc(anyhow::Error::new(e))
}

/// One container: its VM and processes.
struct Task {
    id: String,
    bundle: PathBuf,
    workload: WorkloadSpec,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Process ids of the VM (shared by a pod's containers).
    next_exec: Arc<AtomicU32>,
    vm: Arc<Vm>,
    private_rootfs: Option<PathBuf>,
    /// The pod network wired into this task's VM (its sandbox container's), undone at delete.
    network: Option<PodNetwork>,
    /// The tasks that share this VM: the pod's sandbox id, else the task's own id.
    group: String,
    /// The VM is this task's (its own, or the pod's sandbox): ending the task ends the VM.
    owns_vm: bool,
    /// A container of a pod VM (the sandbox too): the guest knows it by its task id.
    in_pod: bool,
    /// A pod member's VM and block slot.
    member: Option<(Arc<Pod>, u8)>,
    /// The container's OOM kill count already published as TaskOOM events.
    oom_seen: Mutex<u64>,
}

impl Task {
    fn process(&self, exec_id: &str) -> TtrpcResult<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }
}

struct Inner {
    namespace: String,
    exit: ExitSignal,
    publisher: Mutex<Option<RemotePublisher>>,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// Pod VMs by sandbox id.
    pods: Mutex<HashMap<String, Arc<Pod>>>,
}

/// The shim service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let p = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = p.as_ref() {
            if let Err(e) = p.publish(Context::default(), topic, &self.namespace, event) {
                tracing::warn!("failed to publish {topic}: {e}");
            }
        }
    }

    fn task(&self, id: &str) -> TtrpcResult<Arc<Task>> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("task {id} not found")))
    }

    /// Publishes TaskOOM when the container's OOM kill count `now` is above what was already published.
    fn oom(&self, task: &Task, now: u64) {
        let mut seen = task.oom_seen.lock().unwrap_or_else(|e| e.into_inner());
        if now > *seen {
            *seen = now;
            tracing::info!("task {}: OOM kill in the guest (count {now})", task.id);
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: task.id.clone(),
                    ..Default::default()
                }),
            );
        }
    }

    /// Records a process's exit once and tells containerd.
    fn exited(&self, container: &str, p: &Process, code: i32) {
        if !p.set_exited(code) {
            return;
        }
        let s = p.state();
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: container.to_string(),
                id: if p.exec_id.is_empty() {
                    container.to_string()
                } else {
                    p.exec_id.clone()
                },
                pid: s.pid,
                exit_status: s.exit_status,
                exited_at: MessageField::from_option(s.exited_at),
                ..Default::default()
            }),
        );
    }
}

/// The grouping key of a bundle: the pod's sandbox id when CRI runs it, else the container's own id.
fn grouping(bundle: &Path, id: &str) -> String {
    spec::load(bundle)
        .ok()
        .and_then(|s| spec::annotations(&s).remove(spec::SANDBOX_ID_ANNOTATION))
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| id.to_string())
}

/// The network namespace whose network a container's VM takes over: the pod's (made by CNI) for a pod's sandbox
/// container, or the one a plain container's spec joins. A pod's other containers name the sandbox's namespace
/// too, and share its VM and network.
fn vm_netns(oci: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    let kind = spec::annotations(oci).remove(spec::CONTAINER_TYPE_ANNOTATION);
    if kind.is_some_and(|k| k != "sandbox") {
        return None;
    }
    network::netns_path(oci)
}

/// Wires the pod network in `ns` for task `id`'s VM, and logs what the guest gets.
fn attach_network(id: &str, ns: &Path) -> Result<PodNetwork, network::Error> {
    let t = std::time::Instant::now();
    let n = PodNetwork::attach(ns)?;
    tracing::info!(
        "task {id}: pod network {} ({:?} via {:?}, MTU {:?}) redirected to {} in {} in {:.1} ms",
        n.veth,
        n.config.address,
        n.config.gateway,
        n.config.mtu,
        n.tap,
        ns.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(n)
}

fn runtime_root() -> PathBuf {
    crate::paths::run_root().join("containerd")
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                exit: ExitSignal::default(),
                publisher: Mutex::new(None),
                tasks: Mutex::new(HashMap::new()),
                pods: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // containerd runs `start` in the bundle directory.
        let bundle = std::env::current_dir().unwrap_or_default();
        let group = grouping(&bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        // A restarted containerd reconnects to a running shim through the bundle's `address` file; the library's
        // spawn does not write it (its runc shim does so in its own start_shim). Without it containerd takes the
        // shim for dead after a restart and drops a task that is still running.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd runs `delete` when the shim died: end what it left (the VMM, its runtime directory).
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        if let Ok(dir) = std::fs::read_to_string(bundle.join(BUNDLE_MARKER)) {
            let dir = crate::sandbox::state::SandboxDir::at(PathBuf::from(dir.trim()));
            if let Ok(r) = dir.read() {
                if let Some(pid) = r
                    .pid
                    .filter(|p| crate::sandbox::state::supervisor_alive(*p, &r.id))
                {
                    // SAFETY: kill(2) on the VMM of this bundle, checked above by its command line.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
            }
            if let Ok(states) = crate::sandbox::state::StateDir::open(runtime_root()) {
                let _ = states.remove(&dir);
            }
            let _ = std::fs::remove_file(bundle.join(BUNDLE_MARKER));
        }
        if let Some(ns) = spec::load(&bundle).ok().as_ref().and_then(vm_netns) {
            if let Err(e) = network::detach_in(&ns) {
                tracing::warn!("failed to remove the pod network's tap: {e:#}");
            }
        }
        let _ = std::fs::remove_file(bundle.join("rootfs.erofs"));
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(
                containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp::now(),
            ),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(publisher);
        self.clone()
    }
}

impl Service {
    fn create(&self, req: &api::CreateTaskRequest) -> anyhow::Result<Arc<Task>> {
        let bundle = PathBuf::from(&req.bundle);
        let oci = spec::load(&bundle)?;
        let mut workload = spec::workload(&oci, !req.stdin.is_empty())?;
        let role = pod::role(&oci);
        let t = std::time::Instant::now();
        let root_dir = oci.root().as_ref().map(|r| bundle.join(r.path()));
        let image = rootfs::prepare(
            &req.rootfs,
            root_dir.as_deref(),
            &crate::paths::data_root().join("shim-rootfs"),
            &bundle,
        )?;
        tracing::info!(
            "task {}: rootfs image {} ready in {:.1} ms",
            req.id,
            image.path.display(),
            t.elapsed().as_secs_f64() * 1e3
        );
        let private_rootfs = image.private.then(|| image.path.clone());
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if let Role::Member(sandbox) = &role {
            let created = self.create_member(req, &oci, sandbox, workload, &image.path, stdio);
            return match created {
                Ok(task) => Ok(Arc::new(Task {
                    private_rootfs,
                    ..task
                })),
                Err(e) => {
                    if let Some(r) = &private_rootfs {
                        let _ = std::fs::remove_file(r);
                    }
                    Err(e)
                }
            };
        }
        let group = match &role {
            Role::Sandbox(sandbox) => {
                // The VM's first container, named so that the pod's others can join its namespaces.
                workload.container = Some(ContainerPlacement {
                    id: req.id.clone(),
                    process: WORKLOAD,
                    ..Default::default()
                });
                sandbox.clone()
            }
            _ => req.id.clone(),
        };
        let init = Arc::new(Process::new(String::new(), WORKLOAD, stdio, None));
        let slots = if matches!(role, Role::Sandbox(_)) {
            pod::SLOTS
        } else {
            0
        };
        let drop_image = || {
            if image.private {
                let _ = std::fs::remove_file(&image.path);
            }
        };
        let network = match vm_netns(&oci)
            .map(|ns| attach_network(&req.id, &ns))
            .transpose()
        {
            Ok(n) => n,
            Err(e) => {
                drop_image();
                return Err(e.into());
            }
        };
        if let Some(n) = &network {
            workload.network = Some(n.config.clone());
        }
        let nic = network.as_ref().map(PodNetwork::nic);
        let vm = match Vm::boot(
            runtime_root(),
            &req.id,
            image.path.clone(),
            &workload,
            nic.as_ref(),
            slots,
            self.on_vm_exit(&group),
        ) {
            Ok(vm) => Arc::new(vm),
            Err(e) => {
                if let Some(n) = &network {
                    let _ = n.detach();
                }
                drop_image();
                return Err(e.into());
            }
        };
        let _ = std::fs::write(bundle.join(BUNDLE_MARKER), vm.dir().display().to_string());
        init.set_pid(vm.pid());
        let ids = Arc::new(AtomicU32::new(1));
        if let Role::Sandbox(sandbox) = &role {
            self.inner
                .pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    sandbox.clone(),
                    Arc::new(Pod::new(req.id.clone(), vm.clone(), ids.clone())),
                );
        }
        Ok(Arc::new(Task {
            id: req.id.clone(),
            bundle,
            workload,
            init,
            execs: Mutex::new(HashMap::new()),
            next_exec: ids,
            vm,
            private_rootfs,
            group,
            owns_vm: true,
            in_pod: matches!(role, Role::Sandbox(_)),
            member: None,
            network,
            oom_seen: Mutex::new(0),
        }))
    }

    /// A VMM that ends, however, ends every process of every task in its VM: a killed VMM reaches containerd as
    /// an exit (128 + the signal), never as a task that hangs.
    fn on_vm_exit(&self, group: &str) -> Box<dyn FnOnce(i32) + Send> {
        let inner = Arc::downgrade(&self.inner);
        let group = group.to_string();
        Box::new(move |code: i32| {
            let Some(inner) = inner.upgrade() else { return };
            let tasks: Vec<Arc<Task>> = inner
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|t| t.group == group)
                .cloned()
                .collect();
            // A process still running when its VM ends was killed with it: 137 as runc reports a SIGKILL, or
            // what killed the VMM; an exit the agent already reported stands.
            let killed = if code == 0 { 128 + libc::SIGKILL } else { code };
            for t in tasks {
                let execs: Vec<Arc<Process>> = t
                    .execs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for p in execs.iter().chain(std::iter::once(&t.init)) {
                    inner.exited(&t.id, p, p.pending_exit().unwrap_or(killed));
                }
            }
        })
    }

    /// A pod member: its image into a free block slot of the pod's VM; the guest creates it at Start.
    fn create_member(
        &self,
        req: &api::CreateTaskRequest,
        oci: &oci_spec::runtime::Spec,
        sandbox: &str,
        mut workload: WorkloadSpec,
        image: &Path,
        stdio: Stdio,
    ) -> anyhow::Result<Task> {
        let pod = self
            .inner
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sandbox)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("pod sandbox {sandbox} is not running in this shim"))?;
        if pod.vm.exit_code().is_some() {
            anyhow::bail!("the VM of pod sandbox {sandbox} has ended");
        }
        let slot = pod.slots.claim(&req.id).ok_or_else(|| {
            anyhow::anyhow!(
                "pod sandbox {sandbox} has no free block slot ({} containers at most)",
                pod::SLOTS
            )
        })?;
        let t = std::time::Instant::now();
        let attached = std::fs::File::open(image)
            .map_err(anyhow::Error::from)
            .and_then(|f| {
                Ok(vmm::devices::virtio::block::slots::attach(
                    &pod.vm.slots_path(),
                    slot,
                    &f,
                )?)
            });
        if let Err(e) = attached {
            pod.slots.release(slot);
            return Err(e.context(format!(
                "failed to attach the image of {} to its pod's VM",
                req.id
            )));
        }
        tracing::info!(
            "task {}: image attached to block slot {slot} of pod {sandbox} in {:.1} ms",
            req.id,
            t.elapsed().as_secs_f64() * 1e3
        );
        let join = pod::shared_namespaces(oci);
        let init_id = pod.next_id();
        workload.container = Some(ContainerPlacement {
            id: req.id.clone(),
            process: init_id,
            rootfs: Some(RootfsDevice {
                // The pod's VM has one configured disk, its sandbox's image: slots follow it.
                device: crate::sandbox::launch_spec::slot_device(1, slot),
                fstype: Some(crate::sandbox::rootfs_fstype(image).to_string()),
            }),
            join: (!join.is_empty()).then(|| JoinNamespaces {
                container: pod.sandbox.clone(),
                namespaces: join,
            }),
        });
        let init = Arc::new(Process::new(String::new(), init_id, stdio, None));
        init.set_pid(pod.vm.pid());
        Ok(Task {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            workload,
            init,
            execs: Mutex::new(HashMap::new()),
            next_exec: pod.ids.clone(),
            vm: pod.vm.clone(),
            private_rootfs: None,
            group: sandbox.to_string(),
            owns_vm: false,
            in_pod: true,
            member: Some((pod.clone(), slot)),
            network: None,
            oom_seen: Mutex::new(0),
        })
    }

    /// Ends a pod member in the guest and empties its block slot; the VM goes on.
    fn remove_member(&self, task: &Task) {
        let Some((pod, slot)) = &task.member else {
            return;
        };
        if task.vm.exit_code().is_none() {
            if let Err(e) = task
                .vm
                .control()
                .and_then(|mut c| Ok(c.delete_container(&task.id)?))
            {
                tracing::warn!("task {}: failed to delete it in the guest: {e}", task.id);
            }
            if let Err(e) = vmm::devices::virtio::block::slots::detach(&task.vm.slots_path(), *slot)
            {
                tracing::warn!(
                    "task {}: failed to empty its block slot {slot}: {e}",
                    task.id
                );
            }
        }
        pod.slots.release(*slot);
    }

    /// Attaches a process's streams, starts it, and starts the thread that waits for its exit.
    fn start_process(&self, task: &Arc<Task>, p: &Arc<Process>) -> anyhow::Result<i32> {
        let vm = &task.vm;
        let stdout = vm.attach(StreamKind::Stdout, p.agent_id)?;
        // On a terminal the output arrives merged on stdout.
        let stderr = if p.stdio.terminal {
            None
        } else {
            Some(vm.attach(StreamKind::Stderr, p.agent_id)?)
        };
        let stdin = if p.stdio.stdin.is_empty() {
            None
        } else {
            Some(vm.attach(StreamKind::Stdin, p.agent_id)?)
        };
        let mut control = vm.control()?;
        let guest_pid = match &p.spec {
            None => {
                let mut w = task.workload.clone();
                w.process.window = p.window();
                control.create_and_start(&w)?
            }
            Some(spec) => {
                let mut spec = spec.clone();
                spec.window = p.window();
                if task.in_pod {
                    control.exec_in(&task.id, p.agent_id, &spec)?
                } else {
                    control.exec(p.agent_id, &spec)?
                }
            }
        };
        p.plumb(stdout, stderr, stdin);
        p.set_running();
        Ok(guest_pid)
    }

    fn spawn_waiter(&self, task: &Arc<Task>, p: &Arc<Process>) {
        let inner = self.inner.clone();
        let task = task.clone();
        let p = p.clone();
        std::thread::spawn(move || {
            let exited = task.vm.control().and_then(|mut c| Ok(c.wait(p.agent_id)?));
            match exited {
                Ok(e) => {
                    p.exit_pending(e.code);
                    p.drain();
                    if p.exec_id.is_empty() {
                        // An OOM kill that raced the exit: published before the exit, as runc's shim would.
                        if let Ok(s) = task.vm.control().and_then(|mut c| Ok(c.stats(p.agent_id)?))
                        {
                            inner.oom(&task, s.memory_events.get("oom_kill").copied().unwrap_or(0));
                        }
                    }
                    inner.exited(&task.id, &p, e.code);
                    if p.exec_id.is_empty() && task.owns_vm {
                        // The container is over: the VM has nothing left to do.
                        let t = std::time::Instant::now();
                        task.vm.shutdown();
                        tracing::info!(
                            "task {}: exited {}, VM shut down in {:.1} ms",
                            task.id,
                            e.code,
                            t.elapsed().as_secs_f64() * 1e3
                        );
                    }
                }
                Err(e) => {
                    // The agent is gone or broken while the VM may still run: end the VM, whose watcher then
                    // reports the exit, rather than leave containerd waiting forever.
                    tracing::warn!("lost the guest agent of task {}: {e}", task.id);
                    if task.owns_vm {
                        task.vm.kill();
                    } else {
                        // A pod member: the pod's VM goes on; this process is lost to containerd.
                        inner.exited(&task.id, &p, 255);
                    }
                }
            }
        });
    }
}

impl Service {
    /// Keeps a `WaitOom` pending for the task's container until the VM or the agent goes away.
    fn spawn_oom_watcher(&self, task: &Arc<Task>) {
        let inner = self.inner.clone();
        let task = task.clone();
        std::thread::spawn(move || {
            let Ok(mut c) = task.vm.control() else { return };
            loop {
                let seen = *task.oom_seen.lock().unwrap_or_else(|e| e.into_inner());
                match c.wait_oom(task.init.agent_id, seen) {
                    Ok(now) => inner.oom(&task, now),
                    Err(e) => {
                        tracing::debug!("task {}: OOM watch ended: {e}", task.id);
                        return;
                    }
                }
            }
        });
    }
}

fn to_rpc(e: anyhow::Error) -> ttrpc::Error {
    err(Code::UNKNOWN, format!("{e:#}"))
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.inner.task(&req.id).is_ok() {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        let t = std::time::Instant::now();
        let task = self.create(&req).map_err(to_rpc)?;
        let pid = task.init.state().pid;
        // A pod member boots nothing: its container goes into the pod's running VM at Start.
        let what = if task.owns_vm {
            "VM booted"
        } else {
            "ready in its pod's VM"
        };
        tracing::info!(
            "task {}: {what} (VMM pid {pid}) in {:.1} ms",
            req.id,
            t.elapsed().as_secs_f64() * 1e3
        );
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), task);
        self.inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        if p.state().status != Status::Created {
            return Err(err(Code::FAILED_PRECONDITION, "process already started"));
        }
        let t = std::time::Instant::now();
        let guest_pid = self.start_process(&task, &p).map_err(to_rpc)?;
        tracing::info!(
            "task {} process {:?}: started in the guest in {:.1} ms",
            req.id,
            req.exec_id,
            t.elapsed().as_secs_f64() * 1e3
        );
        if req.exec_id.is_empty() {
            self.spawn_oom_watcher(&task);
            self.inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: p.state().pid,
                    ..Default::default()
                }),
            );
        } else {
            p.set_pid(u32::try_from(guest_pid).unwrap_or(0));
            self.inner.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: p.state().pid,
                    ..Default::default()
                }),
            );
        }
        self.spawn_waiter(&task, &p);
        Ok(api::StartResponse {
            pid: p.state().pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        let s = p.state();
        if s.status == Status::Running {
            return Err(err(
                Code::FAILED_PRECONDITION,
                "cannot delete a running process",
            ));
        }
        if !req.exec_id.is_empty() {
            task.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
        } else {
            // Created but never started, or exited: end the VM (a pod member: the container in it) and remove
            // everything this task made.
            if task.owns_vm {
                task.vm.shutdown();
                task.vm.remove();
                let _ = std::fs::remove_file(task.bundle.join(BUNDLE_MARKER));
                self.inner
                    .pods
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&task.group);
            } else {
                self.remove_member(&task);
            }
            if let Some(n) = &task.network {
                if let Err(e) = n.detach() {
                    tracing::warn!("task {}: failed to undo the pod network: {e:#}", req.id);
                }
            }
            if let Some(r) = &task.private_rootfs {
                let _ = std::fs::remove_file(r);
            }
            self.inner
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.id);
            self.inner.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid: s.pid,
                    exit_status: s.exit_status,
                    exited_at: MessageField::from_option(s.exited_at.clone()),
                    ..Default::default()
                }),
            );
        }
        Ok(api::DeleteResponse {
            pid: s.pid,
            exit_status: s.exit_status,
            exited_at: MessageField::from_option(s.exited_at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let task = self.inner.task(&req.id)?;
        let mut processes = vec![ProcessInfo {
            pid: task.vm.pid(),
            ..Default::default()
        }];
        for p in task
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let s = p.state();
            if s.status == Status::Running {
                processes.push(ProcessInfo {
                    pid: s.pid,
                    ..Default::default()
                });
            }
        }
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        let signal =
            i32::try_from(req.signal).map_err(|_| err(Code::INVALID_ARGUMENT, "bad signal"))?;
        match p.state().status {
            Status::Stopped => return Err(err(Code::NOT_FOUND, "process already finished")),
            Status::Created => {
                // Nothing runs yet: the process ends as if the signal had killed it (what runc reports).
                self.inner.exited(&task.id, &p, 128 + signal);
                return Ok(api::Empty::new());
            }
            Status::Running => {}
        }
        let mut targets = vec![p.clone()];
        if req.all && req.exec_id.is_empty() {
            targets.extend(
                task.execs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .filter(|e| e.state().status == Status::Running)
                    .cloned(),
            );
        }
        let sent = task
            .vm
            .control()
            .map_err(anyhow::Error::from)
            .and_then(|mut c| {
                for t in &targets {
                    c.signal(t.agent_id, signal)?;
                }
                Ok(())
            });
        if let Err(e) = sent {
            if signal == libc::SIGKILL && p.exec_id.is_empty() && task.owns_vm {
                // The guest does not answer: SIGKILL of the task still has to end it.
                task.vm.kill();
            } else {
                return Err(to_rpc(e));
            }
        }
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let task = self.inner.task(&req.id)?;
        if task.init.state().status != Status::Running {
            return Err(err(Code::FAILED_PRECONDITION, "the task is not running"));
        }
        let json = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let process = spec::exec_process(json, !req.stdin.is_empty()).map_err(internal)?;
        let mut execs = task.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        let agent_id = task.next_exec.fetch_add(1, Ordering::Relaxed);
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Process::new(
                req.exec_id.clone(),
                agent_id,
                stdio,
                Some(process),
            )),
        );
        drop(execs);
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        if !p.stdio.terminal {
            return Err(err(
                Code::FAILED_PRECONDITION,
                "the process has no terminal",
            ));
        }
        p.set_window(agent_protocol::WindowSize { rows, cols });
        if p.state().status != Status::Running {
            // Not started yet: the size goes with the start. Exited: nothing to resize.
            return Ok(api::Empty::new());
        }
        task.vm
            .control()
            .map_err(anyhow::Error::from)
            .and_then(|mut c| Ok(c.resize(p.agent_id, rows, cols)?))
            .map_err(to_rpc)?;
        Ok(api::Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let task = self.inner.task(&req.id)?;
        if task.init.state().status != Status::Running {
            return Err(err(Code::FAILED_PRECONDITION, "the task is not running"));
        }
        let s = task
            .vm
            .control()
            .map_err(anyhow::Error::from)
            .and_then(|mut c| Ok(c.stats(task.init.agent_id)?))
            .map_err(to_rpc)?;
        let any = super::metrics::packed(&s).map_err(internal)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        let s = p.wait();
        Ok(api::WaitResponse {
            exit_status: s.exit_status,
            exited_at: MessageField::from_option(s.exited_at),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let task = self.inner.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        let s = p.state();
        let mut r = api::StateResponse {
            id: req.id.clone(),
            bundle: task.bundle.display().to_string(),
            pid: s.pid,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: s.exit_status,
            exited_at: MessageField::from_option(s.exited_at),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        r.set_status(match s.status {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        });
        Ok(r)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.task(&req.id).map(|t| t.vm.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // One shim serves a group: it stays while any of its tasks does.
        if self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
