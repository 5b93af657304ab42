//! The gRPC face of [`Snapshotter`]: containerd's
//! `containerd.services.snapshots.v1.Snapshots` on a unix socket. Thin: each
//! call converts messages, runs the snapshotter on a blocking thread (calls
//! touch the disk and may wait on a registry) and maps [`Error`] to the code
//! containerd's errdefs reads back (errdefs/grpc.go `FromGRPC`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::proto::services::snapshots::v1 as pb;
use super::proto::types as pb_types;
use super::state::Kind;
use super::{Error, Info, Snapshotter, mounts::Mount};

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Serves `snapshotter` on the unix socket `socket` (replacing a stale
/// socket file; mode 0600) until `shutdown` completes.
///
/// Errors: the socket cannot be bound, or the server fails.
pub async fn serve(
    snapshotter: Arc<Snapshotter>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old socket {}", socket.display()));
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // Whoever can call Prepare decides what containerd mounts: root only, as
    // containerd's own socket.
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    tonic::transport::Server::builder()
        .add_service(pb::snapshots_server::SnapshotsServer::new(Service(
            snapshotter,
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("the snapshots service failed")
}

struct Service(Arc<Snapshotter>);

impl Service {
    /// Runs `call` on a blocking thread, its error as a gRPC status.
    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Snapshotter) -> super::Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let snapshotter = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || call(&snapshotter))
            .await
            .map_err(|e| Status::internal(format!("snapshotter call failed: {e}")))?
            .map_err(status)
    }
}

fn status(error: Error) -> Status {
    let message = error.to_string();
    match error {
        Error::NotFound(_) => Status::not_found(message),
        Error::AlreadyExists(_) => Status::already_exists(message),
        Error::FailedPrecondition(_) => Status::failed_precondition(message),
        Error::InvalidArgument(_) => Status::invalid_argument(message),
        Error::Io { .. } | Error::Corrupt { .. } => Status::internal(message),
    }
}

fn parent(parent: String) -> Option<String> {
    (!parent.is_empty()).then_some(parent)
}

fn labels(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

fn pb_mounts(mounts: Vec<Mount>) -> Vec<pb_types::Mount> {
    mounts
        .into_iter()
        .map(|m| pb_types::Mount {
            r#type: m.kind.to_string(),
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

fn pb_info(info: Info) -> pb::Info {
    pb::Info {
        name: info.name,
        parent: info.parent.unwrap_or_default(),
        kind: match info.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(info.created)),
        updated_at: Some(timestamp(info.updated)),
        labels: info.labels.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> Reply<pb::PrepareSnapshotResponse> {
        let r = r.into_inner();
        let mounts = self
            .run(move |s| s.prepare(&r.key, parent(r.parent).as_deref(), labels(r.labels)))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: pb_mounts(mounts),
        }))
    }

    async fn view(&self, r: Request<pb::ViewSnapshotRequest>) -> Reply<pb::ViewSnapshotResponse> {
        let r = r.into_inner();
        let mounts = self
            .run(move |s| s.view(&r.key, parent(r.parent).as_deref(), labels(r.labels)))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: pb_mounts(mounts),
        }))
    }

    async fn mounts(&self, r: Request<pb::MountsRequest>) -> Reply<pb::MountsResponse> {
        let key = r.into_inner().key;
        let mounts = self.run(move |s| s.mounts(&key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: pb_mounts(mounts),
        }))
    }

    async fn commit(&self, r: Request<pb::CommitSnapshotRequest>) -> Reply<()> {
        let r = r.into_inner();
        self.run(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<pb::RemoveSnapshotRequest>) -> Reply<()> {
        let key = r.into_inner().key;
        self.run(move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(&self, r: Request<pb::StatSnapshotRequest>) -> Reply<pb::StatSnapshotResponse> {
        let key = r.into_inner().key;
        let info = self.run(move |s| s.stat(&key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(pb_info(info)),
        }))
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> Reply<pb::UpdateSnapshotResponse> {
        let r = r.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without snapshot info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .run(move |s| s.update(&info.name, labels(info.labels), &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(pb_info(info)),
        }))
    }

    type ListStream = tokio_stream::Iter<
        std::vec::IntoIter<std::result::Result<pb::ListSnapshotsResponse, Status>>,
    >;

    async fn list(&self, _: Request<pb::ListSnapshotsRequest>) -> Reply<Self::ListStream> {
        let infos = self.run(|s| Ok(s.list())).await?;
        // One message per 100 snapshots keeps each well under gRPC's 4 MiB.
        let pages: Vec<_> = infos
            .chunks(100)
            .map(|page| {
                Ok(pb::ListSnapshotsResponse {
                    info: page.iter().cloned().map(pb_info).collect(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(pages)))
    }

    async fn usage(&self, r: Request<pb::UsageRequest>) -> Reply<pb::UsageResponse> {
        let key = r.into_inner().key;
        let usage = self.run(move |s| s.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: i64::try_from(usage.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(usage.inodes).unwrap_or(i64::MAX),
        }))
    }

    async fn cleanup(&self, _: Request<pb::CleanupRequest>) -> Reply<()> {
        self.run(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
