#!/usr/bin/env bash
# A GPU node's cold start through containerd (issue 12, acceptance 7): the
# >= 1 GiB image of scripts/build-big-image.sh (Debian minbase + 1.3 GiB of
# libraries, gzip, its lazyimg index pushed) on the plain registry (the site
# proxy's role), reached through one scripts/slow-relay.py link (default 20 ms
# RTT, 400 Mbit/s), empty caches every run:
#   lazy      containerd + `lazyimg snapshotter`: `ctr-remote image rpull
#             --snapshotter lazyimg` + `ctr run --snapshotter lazyimg IMAGE id true`
#   baseline  containerd alone: `ctr image pull` (overlayfs snapshotter, layers
#             downloaded and unpacked) + `ctr run IMAGE id true`
# Each run starts a fresh containerd (root, state, socket under WORK) and, for
# lazy, a fresh snapshotter and lazyimg cache. Reports medians of RUNS (default
# 3) of the wall time (pull, run, total), the bytes the relay carried down
# (and as a share of the image's blob bytes), the speed-up, and peak RSS
# (VmHWM) of containerd, the snapshotter and its layer store daemon.
#
# Usage: scripts/bench-containerd-lazy.sh [RUNS]   (as root)
# Environment: LAZYIMG_BIN (else a release build), LAZYIMG_BENCH_RTT_MS (20),
#              LAZYIMG_BENCH_RATE_MBIT (400), LAZYIMG_BENCH_DIR
#              (/var/tmp/lazyimg-bench-containerd).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-3}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-containerd}
RTT=${LAZYIMG_BENCH_RTT_MS:-20}
RATE=${LAZYIMG_BENCH_RATE_MBIT:-400}

log() { echo "bench-containerd-lazy: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_setup containerd ctr ctr-remote skopeo
mkdir -p "$WORK"

CTD_PID= SN_PID=
stop_all() {
  [[ -z $SN_PID ]] || { kill "$SN_PID" 2>/dev/null || true; wait "$SN_PID" 2>/dev/null || true; }
  [[ -z $CTD_PID ]] || {
    for t in $(ctr -a "$WORK/n/c.sock" task ls -q 2>/dev/null); do ctr -a "$WORK/n/c.sock" task delete -f "$t" >/dev/null 2>&1 || true; done
    kill "$CTD_PID" 2>/dev/null || true
    wait "$CTD_PID" 2>/dev/null || true
  }
  CTD_PID= SN_PID=
  # Whatever is still mounted under the node's dir (overlay snapshots, the layer store).
  if [[ -d $WORK/n ]]; then
    awk -v p="$WORK/n/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
  fi
  rm -rf "$WORK/n"
}
trap 'stop_all; relay_stop' EXIT

log "building / pushing the big image and its index (cached after the first run)"
bench_big_image "$WORK"
blob_bytes=$BIG_BLOB_BYTES path=$BIG_PATH

config() { # CACHE_DIR REGISTRY: a lazyimg config for a cache at CACHE_DIR, plain HTTP to REGISTRY
  printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\ninsecure = true\n' "$1" "$2" >"$1.toml"
  echo "$1.toml"
}

relay_start 127.0.0.1:0 "$LAZYIMG_TEST_PLAIN" "$WORK/relay.json" --rtt-ms "$RTT" --rate-mbit "$RATE"
ref=$RELAY_ADDR/$path
log "image $ref through slow-relay ($RTT ms RTT, $RATE Mbit/s), $blob_bytes blob bytes"

start_node() { # lazy|baseline: a fresh containerd (and for lazy, snapshotter + cache)
  stop_all
  mkdir -p "$WORK/n"
  local extra=
  if [[ $1 == lazy ]]; then
    "$LAZYIMG_BIN" --config "$(config "$WORK/n/cache" "$RELAY_ADDR")" snapshotter \
      --socket "$WORK/n/sn.sock" --root "$WORK/n/sn" >"$WORK/n/sn.log" 2>&1 &
    SN_PID=$!
    for _ in $(seq 300); do [[ -S $WORK/n/sn.sock ]] && break; sleep 0.1; done
    [[ -S $WORK/n/sn.sock ]] || { cat "$WORK/n/sn.log" >&2; exit 1; }
    extra=$("$LAZYIMG_BIN" snapshotter --print-config --socket "$WORK/n/sn.sock")
  fi
  printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/c.sock"\n%s\n' \
    "$WORK/n" "$WORK/n" "$WORK/n" "$extra" >"$WORK/n/containerd.toml"
  containerd --config "$WORK/n/containerd.toml" >"$WORK/n/containerd.log" 2>&1 &
  CTD_PID=$!
  for _ in $(seq 300); do ctr -a "$WORK/n/c.sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  cat "$WORK/n/containerd.log" >&2
  exit 1
}

once() { # lazy|baseline: prints "pull_s run_s total_s down_bytes ctd_rss_mib sn_rss_mib store_rss_mib"
  local kind=$1 t0 t1 t2 id=bench-$RANDOM sn_rss=- store_rss=- store_pid
  start_node "$kind"
  relay_reset "$WORK/relay.json"
  local c=(ctr -a "$WORK/n/c.sock")
  t0=$(now)
  if [[ $kind == lazy ]]; then
    ctr-remote -a "$WORK/n/c.sock" image rpull --plain-http --snapshotter lazyimg "$ref" >/dev/null
    t1=$(now)
    "${c[@]}" run --rm --snapshotter lazyimg "$ref" "$id" true
  else
    "${c[@]}" image pull --plain-http "$ref" >/dev/null
    t1=$(now)
    "${c[@]}" run --rm "$ref" "$id" true
  fi
  t2=$(now)
  local down
  down=$(relay_field "$WORK/relay.json" down_bytes)
  if [[ $kind == lazy ]]; then
    sn_rss=$(peak_rss_mib "$SN_PID")
    store_pid=$(daemon_pid "$(cat "$WORK/n/sn.log")")
    store_rss=$(peak_rss_mib "$store_pid")
  fi
  local row
  row=$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$down" -v r="$(peak_rss_mib "$CTD_PID")" \
    -v s="$sn_rss" -v l="$store_rss" 'BEGIN { printf "%.3f %.3f %.3f %d %s %s %s\n", b - a, c - b, c - a, d, r, s, l }')
  # This runs in a command substitution: its daemons' pids die with it, so
  # they are stopped here, not by the next run.
  stop_all
  echo "$row"
}

declare -A rows
bench_lazy_and_baseline "$RUNS" "pull / run / total s, relay down bytes, RSS MiB (containerd, snapshotter, store)"
stop_all

echo "containerd cold start of $ref ($RTT ms RTT, $RATE Mbit/s; $blob_bytes blob bytes; medians of $RUNS):"
printf '  %-9s %8s %8s %8s %14s %8s %10s %12s %10s\n' "" "pull s" "run s" "total s" "relay down B" "% blobs" \
  "ctd MiB" "snapsh. MiB" "store MiB"
for kind in lazy baseline; do
  r=${rows[$kind]}
  down=$(col 4 <<<"$r")
  printf '  %-9s %8s %8s %8s %14s %8s %10s %12s %10s\n' "$kind" "$(col 1 <<<"$r")" "$(col 2 <<<"$r")" \
    "$(col 3 <<<"$r")" "$down" "$(awk -v d="$down" -v b="$blob_bytes" 'BEGIN { printf "%.2f", 100 * d / b }')" \
    "$(col 5 <<<"$r")" "$(col 6 <<<"$r")" "$(col 7 <<<"$r")"
done
echo "  speed-up (baseline total / lazy total): $(ratio "$(col 3 <<<"${rows[baseline]}")" "$(col 3 <<<"${rows[lazy]}")")x"
