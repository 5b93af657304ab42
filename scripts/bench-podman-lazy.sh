#!/usr/bin/env bash
# A desktop VM's cold start through Podman (issue 11, acceptance 6): the
# >= 1 GiB image of scripts/build-big-image.sh (gzip, its lazyimg index pushed)
# on the plain registry (the site proxy's role), reached through one
# scripts/slow-relay.py link (default 20 ms RTT, 400 Mbit/s), empty caches
# every run:
#   lazy      Podman with `lazyimg layer-store` as its additional layer store:
#             `podman pull` + `podman run --rm IMAGE true`
#   baseline  Podman alone (layers downloaded and unpacked): the same commands
# Each run uses a fresh Podman store (--root/--runroot under WORK) and, for
# lazy, a fresh layer store and lazyimg cache. Reports medians of RUNS
# (default 3) of the wall time (pull, run, total), the bytes the relay carried
# down (and as a share of the image's blob bytes), the speed-up, and the layer
# store daemon's peak RSS (VmHWM).
#
# Usage: scripts/bench-podman-lazy.sh [RUNS]   (as root)
# Environment: LAZYIMG_BIN (else a release build), LAZYIMG_BENCH_RTT_MS (20),
#              LAZYIMG_BENCH_RATE_MBIT (400), LAZYIMG_BENCH_DIR
#              (/var/tmp/lazyimg-bench-podman).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-3}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-podman}
RTT=${LAZYIMG_BENCH_RTT_MS:-20}
RATE=${LAZYIMG_BENCH_RATE_MBIT:-400}

log() { echo "bench-podman-lazy: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bench_setup podman skopeo
CONTAINERS_CONF=$(bash scripts/setup-runtimes.sh)
CONTAINERS_CONF=${CONTAINERS_CONF#export CONTAINERS_CONF=}
export CONTAINERS_CONF
mkdir -p "$WORK"

STORE_PID=
podman_() { podman --root "$WORK/n/root" --runroot "$WORK/n/run" --storage-driver overlay "$@"; }
stop_all() {
  if [[ -d $WORK/n/root ]]; then
    podman_ rm --all --force >/dev/null 2>&1 || true
    podman_ rmi --all --force >/dev/null 2>&1 || true
  fi
  if [[ -n $STORE_PID ]]; then
    kill "$STORE_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$STORE_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  STORE_PID=
  if [[ -d $WORK/n ]]; then
    awk -v p="$WORK/n/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
  fi
  rm -rf "$WORK/n"
}
trap 'stop_all; relay_stop' EXIT

log "building / pushing the big image and its index (cached after the first run)"
bench_big_image "$WORK"
relay_start 127.0.0.1:0 "$LAZYIMG_TEST_PLAIN" "$WORK/relay.json" --rtt-ms "$RTT" --rate-mbit "$RATE"
ref=$RELAY_ADDR/$BIG_PATH
log "image $ref through slow-relay ($RTT ms RTT, $RATE Mbit/s), $BIG_BLOB_BYTES blob bytes"

once() { # lazy|baseline: prints "pull_s run_s total_s down_bytes store_rss_mib"
  local kind=$1 t0 t1 t2 down store_rss=- opts=()
  stop_all
  mkdir -p "$WORK/n/als"
  if [[ $kind == lazy ]]; then
    printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\ninsecure = true\n' \
      "$WORK/n/cache" "$RELAY_ADDR" >"$WORK/n/lazyimg.toml"
    STORE_PID=$(daemon_pid "$("$LAZYIMG_BIN" --config "$WORK/n/lazyimg.toml" layer-store "$WORK/n/als" 2>&1)")
    [[ -n $STORE_PID ]] || { log "the layer store did not start"; exit 1; }
    opts=(--storage-opt "overlay.additionallayerstore=$WORK/n/als:ref")
  fi
  relay_reset "$WORK/relay.json"
  t0=$(now)
  podman_ "${opts[@]}" pull -q --tls-verify=false "$ref" >/dev/null
  t1=$(now)
  podman_ "${opts[@]}" run --rm --runtime runc "$ref" true
  t2=$(now)
  down=$(relay_field "$WORK/relay.json" down_bytes)
  [[ $kind == lazy ]] && store_rss=$(peak_rss_mib "$STORE_PID")
  local row
  row=$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$down" -v s="$store_rss" \
    'BEGIN { printf "%.3f %.3f %.3f %d %s\n", b - a, c - b, c - a, d, s }')
  # This runs in a command substitution: the store daemon's pid dies with it,
  # so the daemon is stopped here, not by the next run.
  stop_all
  echo "$row"
}

declare -A rows
bench_lazy_and_baseline "$RUNS" "pull / run / total s, relay down bytes, store RSS MiB"
stop_all

echo "Podman cold start of $ref ($RTT ms RTT, $RATE Mbit/s; $BIG_BLOB_BYTES blob bytes; medians of $RUNS):"
printf '  %-9s %8s %8s %8s %14s %8s %10s\n' "" "pull s" "run s" "total s" "relay down B" "% blobs" "store MiB"
for kind in lazy baseline; do
  r=${rows[$kind]}
  down=$(col 4 <<<"$r")
  printf '  %-9s %8s %8s %8s %14s %8s %10s\n' "$kind" "$(col 1 <<<"$r")" "$(col 2 <<<"$r")" "$(col 3 <<<"$r")" \
    "$down" "$(awk -v d="$down" -v b="$BIG_BLOB_BYTES" 'BEGIN { printf "%.2f", 100 * d / b }')" "$(col 5 <<<"$r")"
done
echo "  speed-up (baseline total / lazy total): $(ratio "$(col 3 <<<"${rows[baseline]}")" "$(col 3 <<<"${rows[lazy]}")")x"
