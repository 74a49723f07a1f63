//! A small blocking client of containerd's CRI gRPC API (`runtime.v1.RuntimeService`) over its unix socket, for
//! tests/cri.rs: Debian 12 has no crictl. The protos and the tonic client come from the `k8s-cri` crate; each call
//! runs to completion on a private single-threaded tokio runtime.

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// What an `ExecSync` returned.
#[derive(Debug)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

type Result<T> = std::result::Result<T, tonic::Status>;

impl CriClient {
    /// Connects to the CRI socket at `sock` (containerd's gRPC address).
    pub fn connect(sock: &Path) -> std::result::Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let path: PathBuf = sock.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is a placeholder: the connector always dials the unix socket.
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connect to {}: {e}", sock.display()))?;
        Ok(CriClient {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// The runtime's name and version (`Version`): proves the CRI plugin serves.
    pub fn version(&mut self) -> Result<String> {
        let r = self
            .rt
            .block_on(self.client.version(VersionRequest::default()))?
            .into_inner();
        Ok(format!(
            "{} {} (CRI {})",
            r.runtime_name, r.runtime_version, r.runtime_api_version
        ))
    }

    /// The sandbox config of pod `name`; CreateContainer wants it again.
    pub fn pod_config(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "mvrun-test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            ..Default::default()
        }
    }

    /// `RunPodSandbox` under runtime handler `handler`: the pod's id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .rt
            .block_on(self.client.run_pod_sandbox(req))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// The pod's IP as CRI reports it (from CNI's result).
    pub fn pod_ip(&mut self, pod: &str) -> Result<String> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        let s = self
            .rt
            .block_on(self.client.pod_sandbox_status(req))?
            .into_inner();
        Ok(s.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// `CreateContainer` of `image` running `command` in pod `pod`: the container's id.
    pub fn create_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .rt
            .block_on(self.client.create_container(req))?
            .into_inner()
            .container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.rt.block_on(self.client.start_container(req))?;
        Ok(())
    }

    /// `ExecSync` of `cmd` in container `id`, with CRI's own timeout `timeout`.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecResult> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.rt.block_on(self.client.exec_sync(req))?.into_inner();
        Ok(ExecResult {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    pub fn stop_pod(&mut self, pod: &str) -> Result<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.rt.block_on(self.client.stop_pod_sandbox(req))?;
        Ok(())
    }

    pub fn remove_pod(&mut self, pod: &str) -> Result<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.rt.block_on(self.client.remove_pod_sandbox(req))?;
        Ok(())
    }

    /// The ids of every pod sandbox CRI knows.
    pub fn pods(&mut self) -> Result<Vec<String>> {
        let r = self
            .rt
            .block_on(
                self.client
                    .list_pod_sandbox(ListPodSandboxRequest::default()),
            )?
            .into_inner();
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }
}
