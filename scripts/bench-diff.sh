#!/usr/bin/env bash
# What `lazyimg diff` fetches to compare a >= 1 GiB image with a rebuild that
# changes one small file (issue 16, acceptance 3): the image of
# scripts/build-big-image.sh (gzip, lazyimg index pushed) and a rebuild whose
# 608 MiB layer 4 (libcublasLt, libcublas) gains one small file at the end of
# its tar, gzipped again by the same tool (umoci raw add-layer), layers 5 and
# 6 unchanged; both on the plain registry, the rebuild's index pushed too.
# `lazyimg diff` runs with an empty cache; the registry's own log says what it
# fetched (blob GETs with lazyimg's User-Agent: manifests, configs, indexes,
# content).
#
# A change early in a big gzip layer shifts every later byte of its tar, so
# the index spans after it differ and diff must read both files to compare
# them; that case is not what this measures.
#
# Usage: scripts/bench-diff.sh   (as root)
# Environment: LAZYIMG_BIN (else a release build), LAZYIMG_BENCH_DIR
#              (/var/tmp/lazyimg-bench-diff).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-diff}

log() { echo "bench-diff: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_setup umoci skopeo
mkdir -p "$WORK"

log "building / pushing the big image and its index (cached after the first run)"
bench_big_image "$WORK"
base=$LAZYIMG_TEST_PLAIN/$BIG_PATH
layout=$(sed -n 's/^layout=//p' "$WORK/image.env")
src_dir=${layout%:*} src_tag=${layout##*:}
rebuild=$LAZYIMG_TEST_PLAIN/bench/big:rebuild-append

if ! skopeo inspect --raw --tls-verify=false "docker://$rebuild" >/dev/null 2>&1; then
  log "building the rebuild (layer 4 with one more small file)"
  rm -rf "$WORK/oci"
  mkdir -p "$WORK/oci/blobs"
  cp "$src_dir/oci-layout" "$WORK/oci/"
  cp -al "$src_dir/blobs/sha256" "$WORK/oci/blobs/" # hard links: no copy of 1.2 GB
  cp "$src_dir/index.json" "$WORK/oci/"
  # The image with its bottom 3 layers only, tagged base3; layer 4's tar.
  "$(system_python)" - "$WORK/oci" "$src_tag" "$WORK/layer4.tar" <<'PY'
import gzip, hashlib, json, shutil, sys, tarfile
layout, tag, out = sys.argv[1:]
def blob(d): return f"{layout}/blobs/sha256/{d.split(':')[1]}"
def put(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    open(blob(d), "wb").write(data)
    return d, len(data)
index = json.load(open(f"{layout}/index.json"))
desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
manifest = json.load(open(blob(desc["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
with gzip.open(blob(manifest["layers"][3]["digest"])) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
with tarfile.open(out, "a", format=tarfile.GNU_FORMAT) as tar:
    info = tarfile.TarInfo("usr/local/cuda/lib64/zz-rebuild.txt")
    payload = b"rebuilt once\n"
    info.size, info.mode, info.mtime = len(payload), 0o644, 1704067200
    import io
    tar.addfile(info, io.BytesIO(payload))
manifest["layers"] = manifest["layers"][:3]
config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:3]
config.pop("history", None)
manifest["config"]["digest"], manifest["config"]["size"] = put(config)
digest, size = put(manifest)
index["manifests"].append({"mediaType": desc["mediaType"], "digest": digest, "size": size,
                           "annotations": {"org.opencontainers.image.ref.name": "base3"}})
json.dump(index, open(f"{layout}/index.json", "w"))
PY
  umoci raw add-layer --image "$WORK/oci:base3" --tag rebuild "$WORK/layer4.tar"
  rm -f "$WORK/layer4.tar"
  # Layers 5 and 6 as they were.
  "$(system_python)" - "$WORK/oci" "$src_tag" <<'PY'
import hashlib, json, sys
layout, tag = sys.argv[1:]
def blob(d): return f"{layout}/blobs/sha256/{d.split(':')[1]}"
def tagged(index, name): return next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == name)
def put(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    open(blob(d), "wb").write(data)
    return d, len(data)
index = json.load(open(f"{layout}/index.json"))
old = json.load(open(blob(tagged(index, tag)["digest"])))
old_config = json.load(open(blob(old["config"]["digest"])))
desc = tagged(index, "rebuild")
manifest = json.load(open(blob(desc["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
manifest["layers"] += old["layers"][4:]
config["rootfs"]["diff_ids"] += old_config["rootfs"]["diff_ids"][4:]
config["config"] = old_config["config"]
config.pop("history", None)
manifest["config"]["digest"], manifest["config"]["size"] = put(config)
desc["digest"], desc["size"] = put(manifest)
json.dump(index, open(f"{layout}/index.json", "w"))
PY
  skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:rebuild" "docker://$rebuild"
  "$LAZYIMG_BIN" --config "$WORK/indexer.toml" -q index --push "$rebuild" >>"$WORK/index.log" 2>&1 ||
    { cat "$WORK/index.log" >&2; exit 1; }
fi

rm -rf "$WORK/cache"
printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\ninsecure = true\n' "$WORK/cache" "$LAZYIMG_TEST_PLAIN" \
  >"$WORK/diff.toml"
mark=$(stat -c %s "$LAZYIMG_TEST_PLAIN_LOG")
T0=$(now)
"$LAZYIMG_BIN" --config "$WORK/diff.toml" -q diff "$base" "$rebuild" >"$WORK/diff.out"
secs=$(since "$T0")
read -r requests fetched < <(tail -c +$((mark + 1)) "$LAZYIMG_TEST_PLAIN_LOG" |
  awk '/^127\.0\.0\.1 - - \[/ && /lazyimg\// && /\/blobs\// { n++; split($0, q, "\" "); split(q[2], f, " "); b += f[2] } END { print n + 0, b + 0 }')
echo "lazyimg diff $base $rebuild (empty cache, $secs s):"
sed 's/^/  /' "$WORK/diff.out"
echo "  registry blob GETs: $requests, bytes: $fetched of $BIG_BLOB_BYTES blob bytes" \
  "($(awk -v f="$fetched" -v b="$BIG_BLOB_BYTES" 'BEGIN { printf "%.3f", 100 * f / b }') %)"
