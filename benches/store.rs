//! Hashing + storing a 256 MiB blob, against `sha256sum` of the same file in the
//! same run. Run with `cargo bench --bench store`.
//!
//! The store's number includes everything a pull pays per blob: sha256, the write
//! to a temp file, fsync, rename and directory fsync.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::median;
use lazyimg::digest::{Digest, Hasher};
use lazyimg::store::Store;

const SIZE: usize = 256 << 20;
const RUNS: usize = 5;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blob_path = dir.path().join("blob");
    let digest = write_test_blob(&blob_path);

    let sha256sum = median(RUNS, || {
        let out = Command::new("sha256sum")
            .arg(&blob_path)
            .output()
            .expect("sha256sum runs");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&digest.hex()));
    });
    let hash_only = median(RUNS, || {
        let mut hasher = Hasher::new();
        read_chunks(&blob_path, |chunk| hasher.update(chunk));
        assert_eq!(hasher.finish(), digest);
    });
    let store_root = dir.path().join("store");
    let store_blob = median(RUNS, || {
        let _ = std::fs::remove_dir_all(&store_root);
        let store = Store::open(&store_root, u64::MAX).expect("store opens");
        let mut writer = store
            .writer(digest, Some(SIZE as u64), "bench blob")
            .expect("writer");
        read_chunks(&blob_path, |chunk| writer.write_all(chunk).expect("write"));
        writer.commit().expect("commit");
    });

    let rate = |d: Duration| SIZE as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!("hash+store 256 MiB blob (median of {RUNS} runs)");
    println!(
        "  sha256sum (coreutils)      {:>8.1} MiB/s",
        rate(sha256sum)
    );
    println!(
        "  lazyimg sha256 only        {:>8.1} MiB/s",
        rate(hash_only)
    );
    println!(
        "  lazyimg hash+store+fsync   {:>8.1} MiB/s",
        rate(store_blob)
    );
    println!(
        "  ratio store/sha256sum      {:>8.2}  (goal >= 0.80)",
        rate(store_blob) / rate(sha256sum)
    );
}

/// Incompressible, deterministic content, so no layer of the stack can shortcut it.
fn write_test_blob(path: &Path) -> Digest {
    let mut file = File::create(path).expect("create blob");
    let mut hasher = Hasher::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..SIZE / chunk.len() {
        for word in chunk.chunks_exact_mut(8) {
            // xorshift64*: cheap and fine for filler bytes.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).expect("write blob");
    }
    file.sync_all().expect("sync blob");
    hasher.finish()
}

fn read_chunks(path: &Path, mut each: impl FnMut(&[u8])) {
    let mut file = File::open(path).expect("open blob");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        each(&buf[..n]);
    }
}
