//! A minimal CRI client, calling containerd's CRI plugin on its unix socket
//! as the kubelet does: `ImageService/PullImage` and the `RuntimeService`
//! calls that run a pod and one container in it. The messages hold the
//! fields of CRI's api.proto (k8s.io/cri-api, runtime/v1, as vendored by
//! containerd 1.6.20) these calls need, with the same numbers; containerd
//! reads absent fields as their defaults.

use std::collections::HashMap;
use std::path::Path;

use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
    #[prost(map = "string, string", tag = "2")]
    pub annotations: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageRequest {
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageResponse {
    #[prost(string, tag = "1")]
    pub image_ref: String,
}

/// `NamespaceMode`: 0 POD, 1 CONTAINER, 2 NODE.
pub const NAMESPACE_NODE: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(int32, tag = "1")]
    pub network: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxId {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    /// Relative to the pod's `log_directory`.
    #[prost(string, tag = "11")]
    pub log_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerId {
    #[prost(string, tag = "1")]
    container_id: String,
}

/// `ContainerState`: 0 CREATED, 1 RUNNING, 2 EXITED, 3 UNKNOWN.
pub const CONTAINER_EXITED: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(int32, tag = "7")]
    pub exit_code: i32,
    #[prost(string, tag = "10")]
    pub reason: String,
    #[prost(string, tag = "11")]
    pub message: String,
    #[prost(string, tag = "15")]
    pub log_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerStatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<ContainerStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// A CRI connection to the containerd listening on a unix socket.
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri, tonic::Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = socket.to_path_buf();
        // The URI is required but unused: the connector dials the socket.
        let channel = runtime
            .block_on(
                tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector(
                    tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }),
                ),
            )
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(Cri {
            runtime,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    fn call<Req, Resp>(&mut self, path: &'static str, request: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let grpc = &mut self.grpc;
        self.runtime.block_on(async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let response = grpc
                .unary(
                    tonic::Request::new(request),
                    PathAndQuery::from_static(path),
                    tonic_prost::ProstCodec::default(),
                )
                .await?;
            Ok(response.into_inner())
        })
    }

    /// `PullImage`: the image's id (config digest).
    pub fn pull_image(&mut self, image: &str) -> Result<String, tonic::Status> {
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
        };
        let response: PullImageResponse =
            self.call("/runtime.v1.ImageService/PullImage", request)?;
        Ok(response.image_ref)
    }

    /// `RunPodSandbox`: the pod's id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
        };
        let response: PodSandboxId =
            self.call("/runtime.v1.RuntimeService/RunPodSandbox", request)?;
        Ok(response.pod_sandbox_id)
    }

    /// `CreateContainer` then `StartContainer`: the container's id.
    pub fn start_container(
        &mut self,
        pod: &str,
        config: ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        };
        let created: ContainerId =
            self.call("/runtime.v1.RuntimeService/CreateContainer", request)?;
        let _: Empty = self.call("/runtime.v1.RuntimeService/StartContainer", created.clone())?;
        Ok(created.container_id)
    }

    /// `ContainerStatus`.
    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let request = ContainerId {
            container_id: id.to_string(),
        };
        let response: ContainerStatusResponse =
            self.call("/runtime.v1.RuntimeService/ContainerStatus", request)?;
        response
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("no status of {id}")))
    }

    /// `StopPodSandbox` then `RemovePodSandbox` (its containers with it).
    pub fn remove_pod(&mut self, pod: &str) -> Result<(), tonic::Status> {
        let id = PodSandboxId {
            pod_sandbox_id: pod.to_string(),
        };
        let _: Empty = self.call("/runtime.v1.RuntimeService/StopPodSandbox", id.clone())?;
        let _: Empty = self.call("/runtime.v1.RuntimeService/RemovePodSandbox", id)?;
        Ok(())
    }
}
