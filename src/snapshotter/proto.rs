//! containerd's snapshots service in Rust: the code tonic and prost generate
//! from `proto/snapshots.proto` and `proto/mount.proto` (containerd 1.6's
//! messages, field for field), committed so that building lazyimg needs no
//! `protoc`. The test below regenerates it with protox and fails when the
//! committed copy differs; `LAZYIMG_REGENERATE_PROTO=1 cargo test --lib
//! snapshotter::proto` rewrites it.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `containerd.types`.
pub mod types {
    include!("proto/containerd.types.rs");
}

/// Package `containerd.services.snapshots.v1`. prost names other packages
/// relative to this one, hence the nesting.
pub mod services {
    pub mod snapshots {
        pub mod v1 {
            include!("proto/containerd.services.snapshots.v1.rs");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const GENERATED: [&str; 2] = ["containerd.types.rs", "containerd.services.snapshots.v1.rs"];

    #[test]
    fn the_committed_code_is_what_the_protos_generate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/snapshotter/proto");
        let files = protox::compile(["snapshots.proto"], [&dir]).expect("the protos compile");
        let out = tempfile::tempdir().unwrap();
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(true)
            .build_transport(false)
            .out_dir(out.path())
            .compile_fds(files)
            .expect("tonic generates the service");
        let regenerate = std::env::var_os("LAZYIMG_REGENERATE_PROTO").is_some();
        for name in GENERATED {
            let fresh = std::fs::read_to_string(out.path().join(name)).unwrap();
            let committed = dir.join(name);
            if regenerate {
                std::fs::write(&committed, &fresh).unwrap();
            } else {
                let old = std::fs::read_to_string(&committed).unwrap_or_default();
                assert!(
                    old == fresh,
                    "{} is stale: run LAZYIMG_REGENERATE_PROTO=1 cargo test --lib snapshotter::proto",
                    committed.display()
                );
            }
        }
    }
}
