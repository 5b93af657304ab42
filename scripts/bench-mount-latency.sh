#!/usr/bin/env bash
# Mount latency of a cached image (issue 10): how long `lazyimg mount` takes
# until the mount is live, and then until the first `stat` of a deep path and
# the first 4 KiB read of a file whose contents are not cached.
#
# Image: the >= 1 GiB benchmark image of scripts/build-big-image.sh (Debian
# minbase + 1.3 GiB of libraries, gzip), with its lazyimg index pushed (as
# scripts/bench-lazy.sh does), on the testenv's HTTPS upstream (loopback, TLS,
# token auth). "Cached" means what a second mount on a node finds: the
# manifest, config, chunk maps and tree from a first mount, and no contents.
# So every run starts from a copy of that cache (copied outside the timing):
#   live   `lazyimg -q mount REF MNT` until it returns (the mount is live)
#   stat   + `stat` of /usr/local/cuda/lib64/libcublasLt.so.11
#   read   + the first 4 KiB of that file (from the registry: not cached)
# Medians of RUNS (default 5). With LAZYIMG_BENCH_BASELINE=/path/to/lazyimg
# the same runs are made with that binary too (e.g. a build of an older
# commit), interleaved, so both figures come from the same machine and minute.
# One `lazyimg -v mount` timeline is printed at the end.
#
# Usage: scripts/bench-mount-latency.sh [RUNS]   (as root)
# Environment: LAZYIMG_BIN (else a release build), LAZYIMG_BENCH_BASELINE,
#              LAZYIMG_BENCH_DIR (/var/tmp/lazyimg-bench-latency).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-5}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-latency}
DEEP=/usr/local/cuda/lib64/libcublasLt.so.11

log() { echo "bench-mount-latency: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_setup fusermount3
MNT=$WORK/mnt
unmount() {
  if awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; then
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1" || true
  fi
}
mkdir -p "$WORK" "$MNT"
unmount "$MNT"
trap 'unmount "$MNT"' EXIT

log "building / pushing the big image (cached after the first run)"
bash scripts/build-big-image.sh >"$WORK/image.env"
ref=$(sed -n 's/^ref=//p' "$WORK/image.env")

config() { # CACHE_DIR: a config file for a cache at CACHE_DIR
  cat >"$WORK/$(basename "$1").toml" <<TOML
cache_dir = "$1"
[[registry]]
prefix = "$LAZYIMG_TEST_UPSTREAM"
ca_file = "$LAZYIMG_TEST_CA"
TOML
  echo "$WORK/$(basename "$1").toml"
}
export REGISTRY_AUTH_FILE=$LAZYIMG_TEST_AUTH_FILE

log "lazyimg index --push $ref (once, untimed)"
"$LAZYIMG_BIN" --config "$(config "$WORK/indexer")" -q index --push "$ref" >"$WORK/index.log" 2>&1 ||
  { cat "$WORK/index.log" >&2; exit 1; }

# The cache a second mount finds: a first mount's metadata, no contents.
rm -rf "$WORK/seed"
"$LAZYIMG_BIN" --config "$(config "$WORK/seed")" -q mount "$ref" "$MNT"
unmount "$MNT"
rm -rf "$WORK/seed/logs"

once() { # BINARY LABEL: one timed run; prints "live stat read" in ms
  rm -rf "$WORK/run"
  cp -a "$WORK/seed" "$WORK/run"
  "$(system_python)" - "$1" "$(config "$WORK/run")" "$ref" "$MNT" "$DEEP" <<'PY'
import os, subprocess, sys, time
exe, config, ref, mnt, deep = sys.argv[1:]
t0 = time.perf_counter()
subprocess.run([exe, "--config", config, "-q", "mount", ref, mnt], check=True)
live = time.perf_counter()
os.stat(mnt + deep)
stat = time.perf_counter()
with open(mnt + deep, "rb") as f:
    assert len(f.read(4096)) == 4096
read = time.perf_counter()
print(f"{(live - t0) * 1e3:.1f} {(stat - t0) * 1e3:.1f} {(read - t0) * 1e3:.1f}")
PY
  unmount "$MNT"
}

declare -A results
binaries=("after:$LAZYIMG_BIN")
[[ -n ${LAZYIMG_BENCH_BASELINE:-} ]] && binaries=("before:$LAZYIMG_BENCH_BASELINE" "${binaries[@]}")
for run in $(seq "$RUNS"); do
  for entry in "${binaries[@]}"; do
    label=${entry%%:*}
    line=$(once "${entry#*:}")
    results[$label]+="$line"$'\n'
    log "run $run, $label: live / stat / 4 KiB read (ms since start): $line"
  done
done

column() { awk -v c="$1" 'NF { print $c }' | median; }
echo "cached mount of $ref (medians of $RUNS; ms from the start of \`lazyimg mount\`):"
printf '  %-8s %10s %12s %16s\n' binary live "+ stat deep" "+ 4 KiB read"
for entry in "${binaries[@]}"; do
  label=${entry%%:*}
  r=${results[$label]}
  printf '  %-8s %10s %12s %16s\n' "$label" "$(column 1 <<<"$r")" "$(column 2 <<<"$r")" "$(column 3 <<<"$r")"
done
echo "timeline of one more mount (lazyimg -v mount):"
rm -rf "$WORK/run"
cp -a "$WORK/seed" "$WORK/run"
"$LAZYIMG_BIN" --config "$(config "$WORK/run")" -v mount "$ref" "$MNT" 2>&1 | sed -n 's/^.*timeline: /  /p'
unmount "$MNT"
