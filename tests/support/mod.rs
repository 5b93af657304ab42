//! Test support shared by integration tests (`mod support;`).
//!
//! * [`containerd`]: a containerd of the test's own, with `lazyimg snapshotter` as a proxy plugin.
//! * [`cri`]: a minimal CRI client (`PullImage`) for containerd's CRI plugin.
//! * [`fake_registry`]: an in-process HTTP server for faults real registries cannot stage.
//! * [`layer`]: layer entries and deterministic layer tarballs.
//! * [`estargz`]: eStargz layers written from the same entries.
//! * [`image`]: OCI image layout writer (re-exports `layer` and the ready-made specs).
//! * [`torture`]: `torture_image(compression)`, `simple_image(n)`.
//! * [`listing`]: canonical tree listing + diff, the comparison oracle format.
//! * [`tools`]: skopeo push/inspect, umoci unpack.
//! * [`zstd_chunked`]: zstd:chunked images converted by skopeo.
//! * [`registry`]: throwaway `docker-registry` on 127.0.0.1.
//! * [`pushed`]: images pushed to the plain registry for runtime tests, and their layers.
//! * [`site`]: `ces-pull`/`seed` helpers, the demo image, podman on this host.
//! * [`token_server`]: a token service of the test's own (`scripts/token-server.py`).
//! * [`testenv`]: the shared topology from `scripts/testenv.sh` and a sandboxed `lazyimg`.
#![allow(dead_code, unused_imports)]

pub mod containerd;
pub mod cri;
pub mod estargz;
pub mod fake_registry;
pub mod image;
pub mod layer;
pub mod listing;
pub mod pushed;
pub mod registry;
pub mod site;
pub mod testenv;
pub mod token_server;
pub mod tools;
pub mod torture;
pub mod zstd_chunked;
