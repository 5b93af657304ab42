use std::time::{Duration, SystemTime};

use super::*;
use crate::store::BlobSink;

fn store(max: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), max).unwrap();
    (dir, store)
}

fn tmp_is_empty(store: &Store) -> bool {
    fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn verified_content_round_trips() {
    let (_dir, store) = store(u64::MAX);
    let digest = Digest::of(b"layer bytes");
    store.put(digest, b"layer bytes", "test blob").unwrap();
    assert!(store.contains(&digest));
    assert_eq!(store.require(&digest).unwrap().bytes(), b"layer bytes");
    assert!(tmp_is_empty(&store));
}

#[test]
fn empty_content_is_storable() {
    let (_dir, store) = store(u64::MAX);
    let digest = Digest::of(b"");
    store.put(digest, b"", "empty").unwrap();
    assert_eq!(store.require(&digest).unwrap().bytes(), b"");
}

#[test]
fn wrong_bytes_are_refused_and_leave_nothing() {
    let (_dir, store) = store(u64::MAX);
    let claimed = Digest::of(b"the real thing");
    let err = store
        .put(claimed, b"the real thinG", "layer x")
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("layer x"));
    assert!(!store.contains(&claimed));
    assert!(store.get(&claimed).unwrap().is_none());
    assert!(tmp_is_empty(&store));
}

#[test]
fn size_overrun_is_caught_while_streaming() {
    let (_dir, store) = store(u64::MAX);
    let mut writer = store.writer(Digest::of(b"abc"), Some(3), "blob").unwrap();
    writer.write_all(b"ab").unwrap();
    assert!(matches!(
        writer.write_all(b"cd"),
        Err(Error::SizeMismatch { .. })
    ));
    drop(writer);
    assert!(tmp_is_empty(&store));
}

#[test]
fn restart_discards_what_was_written() {
    let (_dir, store) = store(u64::MAX);
    let mut writer = store.writer(Digest::of(b"final"), Some(5), "blob").unwrap();
    BlobSink::write(&mut writer, b"garb").unwrap();
    writer.restart().unwrap();
    assert_eq!(writer.written(), 0);
    BlobSink::write(&mut writer, b"final").unwrap();
    writer.commit().unwrap();
    assert_eq!(
        store.require(&Digest::of(b"final")).unwrap().bytes(),
        b"final"
    );
}

fn age(store: &Store, digest: &Digest, secs_ago: u64) {
    let file = File::options()
        .write(true)
        .open(store.blob_path(digest))
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

#[test]
fn prune_evicts_least_recently_used_first_and_spares_kept() {
    let (_dir, store) = store(u64::MAX);
    let blobs: Vec<(Digest, Vec<u8>)> = (0..4u8)
        .map(|i| {
            let bytes = vec![i; 100];
            (Digest::of(&bytes), bytes)
        })
        .collect();
    for (i, (digest, bytes)) in blobs.iter().enumerate() {
        store.put(*digest, bytes, "blob").unwrap();
        age(&store, digest, 1000 - i as u64 * 100);
    }
    // Oldest is blobs[0]; keep it anyway, so blobs[1] and blobs[2] go.
    let report = store.prune(200, &[blobs[0].0]).unwrap();
    assert_eq!(
        (report.removed, report.freed, report.remaining),
        (2, 200, 200)
    );
    assert!(store.contains(&blobs[0].0) && store.contains(&blobs[3].0));
    assert!(!store.contains(&blobs[1].0) && !store.contains(&blobs[2].0));
}

#[test]
fn prune_drops_layer_indexes_of_evicted_layers_and_keeps_other_derived_data() {
    let (_dir, store) = store(u64::MAX);
    let (kept, evicted) = (Digest::of(b"kept tar"), Digest::of(b"evicted tar"));
    store.put(kept, b"kept tar", "tar").unwrap();
    store.put(evicted, b"evicted tar", "tar").unwrap();
    age(&store, &evicted, 1000);
    for tar in [kept, evicted] {
        store
            .write_derived(Derived::EntryTable, &tar, b"index")
            .unwrap();
    }
    // Named after layers a lazy mount never stores: kept whatever is evicted.
    store
        .write_derived(Derived::ChunkMap, &evicted, b"map")
        .unwrap();
    store
        .write_derived(Derived::Tree, &evicted, b"tree")
        .unwrap();

    let report = store.prune(b"kept tar".len() as u64, &[]).unwrap();

    assert_eq!((report.removed, report.derived_removed), (1, 1));
    assert!(
        store
            .read_derived(Derived::EntryTable, &kept)
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .read_derived(Derived::EntryTable, &evicted)
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read_derived(Derived::ChunkMap, &evicted)
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .read_derived(Derived::Tree, &evicted)
            .unwrap()
            .is_some()
    );
}

#[test]
fn reading_refreshes_recency_on_disk() {
    let (dir, store) = store(u64::MAX);
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    store.put(a, b"a", "a").unwrap();
    store.put(b, b"b", "b").unwrap();
    age(&store, &a, 500);
    age(&store, &b, 400);
    // A fresh process (no in-memory state) reads `a`: it becomes the newest.
    let reopened = Store::open(dir.path(), u64::MAX).unwrap();
    reopened.require(&a).unwrap();
    let order: Vec<Digest> = reopened.list().unwrap().iter().map(|s| s.digest).collect();
    assert_eq!(order, vec![b, a]);
}

#[test]
fn cap_is_enforced_as_content_arrives() {
    let (_dir, store) = store(250);
    let old = vec![1u8; 100];
    store.put(Digest::of(&old), &old, "old").unwrap();
    age(&store, &Digest::of(&old), 100);
    for i in 2..4u8 {
        let bytes = vec![i; 100];
        store.put(Digest::of(&bytes), &bytes, "new").unwrap();
    }
    assert!(!store.contains(&Digest::of(&old)));
    assert_eq!(store.total_size().unwrap(), 200);
}

#[test]
fn a_blob_larger_than_the_cap_is_still_kept_once_written() {
    let (_dir, store) = store(10);
    let big = vec![7u8; 100];
    store.put(Digest::of(&big), &big, "big").unwrap();
    assert!(store.contains(&Digest::of(&big)));
}

#[test]
fn concurrent_writers_of_the_same_content_agree() {
    let (_dir, store) = store(u64::MAX);
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&bytes);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut w = store
                    .writer(digest, Some(bytes.len() as u64), "shared")
                    .unwrap();
                for chunk in bytes.chunks(7919) {
                    w.write_all(chunk).unwrap();
                }
                w.commit().unwrap();
            });
        }
    });
    assert_eq!(store.require(&digest).unwrap().bytes(), &bytes[..]);
    assert!(tmp_is_empty(&store));
}

#[test]
fn verify_finds_and_removes_corruption() {
    let (_dir, store) = store(u64::MAX);
    let (good, bad) = (Digest::of(b"good"), Digest::of(b"bad!"));
    store.put(good, b"good", "good").unwrap();
    store.put(bad, b"bad!", "bad").unwrap();
    fs::write(store.blob_path(&bad), b"bad?").unwrap();
    let mut seen = Vec::new();
    let corrupt = store
        .verify(|blob, ok| seen.push((blob.digest, ok)))
        .unwrap();
    assert_eq!(corrupt, vec![bad]);
    assert_eq!(seen.len(), 2);
    assert!(store.contains(&good) && !store.contains(&bad));
}

#[test]
fn image_records_round_trip() {
    let (_dir, store) = store(u64::MAX);
    let record = ImageRecord::new(
        "ghcr.io/lab/x:v1".into(),
        Digest::of(b"index"),
        Digest::of(b"manifest"),
        "linux/amd64".into(),
    );
    store.record_image(&record).unwrap();
    assert_eq!(
        store
            .image_record("ghcr.io/lab/x:v1", "linux/amd64")
            .unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        store
            .image_record("ghcr.io/lab/x:v1", "linux/arm64")
            .unwrap(),
        None
    );
    assert_eq!(store.image_records().unwrap(), vec![record]);
}

#[test]
fn open_mappings_are_bounded_in_bytes_so_reads_do_not_pin_resident_memory() {
    let (_dir, store) = store(u64::MAX);
    let chunk = vec![7u8; 1 << 20];
    for n in 0..((3 * recency::OPEN_BYTES) >> 20) as u32 {
        let mut content = chunk.clone();
        content[..4].copy_from_slice(&n.to_le_bytes());
        let digest = Digest::of(&content);
        store.put(digest, &content, "chunk").unwrap();
        assert_eq!(store.require(&digest).unwrap().bytes(), &content[..]);
        assert!(store.lock_open().mapped_bytes() <= recency::OPEN_BYTES);
    }
    assert!(store.lock_open().mapped_bytes() > 0);
}
