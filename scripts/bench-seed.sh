#!/usr/bin/env bash
# Benchmark of `lazyimg seed` (push mode) against `skopeo copy --all`, same run,
# same image, same registries: from the HTTPS+token upstream (plays ghcr.io) to
# the plain registry (plays the site proxy), both on 127.0.0.1.
#
# The image is LAYERS layers of random data (SIZE_MIB in all, default 4 x 256 MiB),
# built with dd + tar + `umoci raw add-layer` and pushed to the upstream. Each run
# builds a fresh image and copies it into fresh repositories, and lazyimg starts
# from an empty cache, so neither tool finds a blob already there (skopeo's blob
# info cache would otherwise mount blobs it saw in an earlier run).
#
# Usage: scripts/bench-seed.sh [RUNS] [SIZE_MIB] [LAYERS]   (as root; default 1 1024 4)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-1}
SIZE_MIB=${2:-1024}
LAYERS=${3:-4}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-seed}

log() { echo "bench-seed: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

bench_setup skopeo umoci tar

rm -rf "$WORK"
mkdir -p "$WORK"
cat >"$WORK/config.toml" <<TOML
cache_dir = "$WORK/cache"
[[registry]]
prefix = "$LAZYIMG_TEST_UPSTREAM"
ca_file = "$LAZYIMG_TEST_CA"
[[registry]]
prefix = "$LAZYIMG_TEST_PLAIN"
insecure = true
TOML
export REGISTRY_AUTH_FILE=$LAZYIMG_TEST_AUTH_FILE

digest_at() { # docker://REF [skopeo args] -> manifest digest
  local ref=$1
  shift
  skopeo inspect --raw "$@" "$ref" | sha256sum | awk '{print "sha256:" $1}'
}

lz_times=() sk_times=()
for run in $(seq "$RUNS"); do
  id=$$-$run-$(date +%s)
  image=bench/seed-$id:big
  log "run $run: building a ${SIZE_MIB} MiB image in $LAYERS random layers"
  rm -rf "$WORK/oci" "$WORK/layer" "$WORK/cache"
  umoci init --layout "$WORK/oci"
  umoci new --image "$WORK/oci:big"
  for i in $(seq "$LAYERS"); do
    mkdir -p "$WORK/layer/data"
    dd if=/dev/urandom of="$WORK/layer/data/$i.bin" bs=1M count=$((SIZE_MIB / LAYERS)) status=none
    tar -C "$WORK/layer" --owner=0 --group=0 --numeric-owner -cf "$WORK/layer.tar" "data/$i.bin"
    umoci raw add-layer --image "$WORK/oci:big" "$WORK/layer.tar"
    rm -rf "$WORK/layer" "$WORK/layer.tar"
  done
  bash scripts/push-oci-layout.sh "$WORK/oci:big" "$LAZYIMG_TEST_UPSTREAM/$image" \
    --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" >/dev/null 2>&1
  rm -rf "$WORK/oci"
  want=$(digest_at "docker://$LAZYIMG_TEST_UPSTREAM/$image" \
    --cert-dir "$LAZYIMG_TEST_CERT_DIR" --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN")
  sync

  log "run $run: lazyimg seed"
  t0=$(now)
  "$LAZYIMG_BIN" -q --config "$WORK/config.toml" seed --to "$LAZYIMG_TEST_PLAIN/lazyimg-$id" \
    "$LAZYIMG_TEST_UPSTREAM/$image" >/dev/null
  lz_times+=("$(since "$t0")")

  log "run $run: skopeo copy --all"
  t0=$(now)
  skopeo copy --all --preserve-digests --quiet \
    --src-cert-dir "$LAZYIMG_TEST_CERT_DIR" --src-creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" \
    --dest-tls-verify=false \
    "docker://$LAZYIMG_TEST_UPSTREAM/$image" "docker://$LAZYIMG_TEST_PLAIN/skopeo-$id/$image"
  sk_times+=("$(since "$t0")")

  for tool in lazyimg skopeo; do
    got=$(digest_at "docker://$LAZYIMG_TEST_PLAIN/$tool-$id/$image" --tls-verify=false)
    [[ $got == "$want" ]] || { log "$tool's copy has digest $got, the upstream $want"; exit 1; }
  done
  log "run $run: lazyimg ${lz_times[-1]}s, skopeo ${sk_times[-1]}s"
done
rm -rf "$WORK/cache"

lz=$(printf '%s\n' "${lz_times[@]}" | median)
sk=$(printf '%s\n' "${sk_times[@]}" | median)
cat <<REPORT
lazyimg seed benchmark ($RUNS runs, medians; ${SIZE_MIB} MiB image in $LAYERS random gzip layers,
upstream https://$LAZYIMG_TEST_UPSTREAM -> plain http://$LAZYIMG_TEST_PLAIN, both on this host)
  lazyimg seed (empty cache: download, verify, cache, upload)   ${lz}s
  skopeo copy --all                                              ${sk}s
  ratio skopeo / lazyimg                                         $(ratio "$sk" "$lz")x   (goal >= 1)
REPORT
