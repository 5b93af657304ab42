#!/usr/bin/env bash
# What checking a lazyimg index's signature costs a mount (issue 14): the same
# cold lazy mount (fresh cache each run: manifest, index discovery, index
# blobs, tree) with `trusted_index_keys` set and unset, alternating, same run,
# through the signed index `lazyimg index --push` pushed. Reports the medians,
# their difference, and the bytes reading one small file fetched.
#
# Image: the busybox demo image plus a gzip layer with a 48 MiB random file,
# in the local plain registry.
#
# Usage: scripts/bench-index-trust.sh [RUNS]     (as root; RUNS defaults to 9)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-9}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-trust}

log() { echo "bench-index-trust: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
unmount() { fusermount3 -u "$1" 2>/dev/null || true; }

bench_setup umoci
unmount "$WORK/mnt"
rm -rf "$WORK"
mkdir -p "$WORK/mnt" "$WORK/big/data"

log "building the image (busybox + 48 MiB file)"
bash scripts/build-demo-image.sh "$WORK/oci" 1 >/dev/null 2>&1
head -c 48M /dev/urandom >"$WORK/big/data/big.bin"
echo small >"$WORK/big/data/small.txt"
tar -C "$WORK/big" --owner=0 --group=0 --numeric-owner -cf "$WORK/big.tar" data
umoci raw add-layer --image "$WORK/oci:1" "$WORK/big.tar" # gzip-compressed by umoci
rm -f "$WORK/big.tar"
image=$LAZYIMG_TEST_PLAIN/bench/trust:$(date +%s)
bash scripts/push-oci-layout.sh "$WORK/oci:1" "$image" >/dev/null 2>&1

"$LAZYIMG_BIN" key generate "$WORK/keys" >/dev/null
config() { # FILE CACHE EXTRA
  cat >"$1" <<TOML
cache_dir = "$2"
$3
[[registry]]
prefix = "$LAZYIMG_TEST_PLAIN"
insecure = true
TOML
}
config "$WORK/seed.toml" "$WORK/seed-cache" "[index_signing]
key_file = \"$WORK/keys/index.key\""
"$LAZYIMG_BIN" -q --config "$WORK/seed.toml" index --push "$image" >/dev/null

once() { # keys|nokeys: seconds until the mount is live, bytes a small file's read fetched
  local extra=""
  [[ $1 == keys ]] && extra="trusted_index_keys = [\"$WORK/keys/index.pub\"]"
  rm -rf "$WORK/cache"
  config "$WORK/node.toml" "$WORK/cache" "$extra"
  local t0 took fetched
  t0=$(now)
  "$LAZYIMG_BIN" -q --config "$WORK/node.toml" mount "$image" "$WORK/mnt" 2>/dev/null
  took=$(since "$t0")
  cat "$WORK/mnt/data/small.txt" >/dev/null
  fetched=$("$LAZYIMG_BIN" stats --json "$WORK/mnt" | sed -n 's/.*"bytes_fetched": \([0-9]*\).*/\1/p')
  unmount "$WORK/mnt"
  echo "$took $fetched"
}
# A warm-up mount each, so neither side pays for cold page caches.
once keys >/dev/null
once nokeys >/dev/null
declare -A rows
bench_alternate "$RUNS" "seconds bytes_fetched" keys nokeys
with=$(col 1 <<<"${rows[keys]}")
without=$(col 1 <<<"${rows[nokeys]}")
fetched=$(col 2 <<<"${rows[keys]}")
layer=$("$LAZYIMG_BIN" -q --config "$WORK/node.toml" inspect --json "$image" |
  "$(system_python)" -c 'import json, sys; print(max(l["size"] for l in json.load(sys.stdin)["layers"]))')
echo "cold lazy mount until live, median of $RUNS:"
echo "  trusted_index_keys set   ${with} s (signature checked)"
echo "  trusted_index_keys unset ${without} s"
awk -v a="$with" -v b="$without" 'BEGIN {printf "  signature check adds     %.1f ms\n", (a - b) * 1000}'
awk -v f="$fetched" -v l="$layer" 'BEGIN {printf "reading data/small.txt fetched %d bytes = %.2f %% of the %d-byte layer\n", f, 100 * f / l, l}'
