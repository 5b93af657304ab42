//! A minimal CRI client: `runtime.v1.ImageService/PullImage` over
//! containerd's unix socket, as the kubelet calls it. The messages are the
//! fields of CRI's api.proto (k8s.io/cri-api, runtime/v1) the call needs,
//! with the same numbers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// Pulls `image` through the CRI plugin of the containerd listening on
/// `socket`; the image's id (config digest) on success.
pub fn pull_image(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required but unused: the connector dials the socket.
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
        };
        let response: tonic::Response<PullImageResponse> = grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static("/runtime.v1.ImageService/PullImage"),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        Ok(response.into_inner().image_ref)
    })
}
