#!/usr/bin/env bash
# Whole-system benchmark of lazy loading over a slow link. The acceptance check:
#
#   mount + run a >= 1 GiB image with ch-run through a link slowed to 20 ms RTT and
#   400 Mbit/s fetches <= 3 % of the image's blob bytes (counted by the relay) and
#   is >= 30x faster than `podman pull` + `podman run` of the same image through
#   the same link, in the same run.
#
# Set-up: the testenv registries (scripts/testenv.sh), the image from
# scripts/build-big-image.sh (Debian minbase + 1.3 GiB of libraries in gzip
# layers; its command /usr/local/bin/hello reads a few KiB) on the HTTPS upstream,
# and ONE scripts/slow-relay.py in front of the upstream's port. Both tools pull
# through the relay; the token service stays direct (a few small requests, the
# same for both). Each run, in turn:
#   podman:  image removed from podman's store, relay counters reset, then timed:
#            podman pull RELAY/testuser/big:1 + podman run --rm ... hello
#   lazyimg: empty lazyimg cache, relay counters reset, then timed:
#            lazyimg mount RELAY/testuser/big:1 MNT + ch-run MNT -- hello
#            + lazyimg umount MNT   (`lazyimg stats MNT --json` and the daemon's
#            peak RSS, VmHWM from /proc/PID/status, are read before the umount,
#            outside the timing)
# Once, before the lazyimg runs and not through the relay: `lazyimg index
# UPSTREAM/testuser/big:1 --push` (publishes the index a lazy mount reads).
#
# Usage: scripts/bench-lazy.sh [--only podman|lazyimg] [RUNS]   (as root; RUNS
#        defaults to 1, medians shown). Exits 1 if a goal is missed (both halves run).
# Environment: LAZYIMG_BENCH_RTT_MS (20), LAZYIMG_BENCH_RATE_MBIT (400),
#              LAZYIMG_BENCH_DIR (/var/tmp/lazyimg-bench-lazy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

only=
while [[ $# -gt 0 ]]; do
  case $1 in
    --only)
      only=${2:-}
      [[ $only == podman || $only == lazyimg ]] || { echo "usage: $0 [--only podman|lazyimg] [RUNS]" >&2; exit 2; }
      shift 2
      ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
RUNS=${1:-1}
RTT_MS=${LAZYIMG_BENCH_RTT_MS:-20}
RATE_MBIT=${LAZYIMG_BENCH_RATE_MBIT:-400}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-lazy}
GOAL_PERCENT=3
GOAL_RATIO=30
HELLO_TEXT="hello from the big image" # what /usr/local/bin/hello prints first

log() { echo "bench-lazy: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[[ $(id -u) -eq 0 ]] || die "run me as root (podman's store, FUSE mounts)"

run_podman=1 run_lazyimg=1
[[ $only == lazyimg ]] && run_podman=
[[ $only == podman ]] && run_lazyimg=

# podman with runc and no default ulimits (crun fails on this host's cgroups).
eval "$(bash scripts/setup-runtimes.sh)"
export CONTAINERS_CONF
if [[ -n $run_lazyimg ]]; then
  bench_setup podman ch-run fusermount3 # also builds lazyimg (release) into $LAZYIMG_BIN
else
  bash scripts/testenv.sh up >/dev/null
  eval "$(bash scripts/testenv.sh env)"
fi
export USER=${USER:-root} # ch-run will not start without it

mkdir -p "$WORK"
MNT=$WORK/mnt
unmount() { # by /proc/mounts: `mountpoint` fails on a dead daemon's mount (ENOTCONN)
  if awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; then
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1" || true
  fi
}
unmount "$MNT"
mkdir -p "$MNT"

# --- the image ---------------------------------------------------------------------

log "building / pushing the big image (cached after the first run)"
bash scripts/build-big-image.sh >"$WORK/image.env"
field() { sed -n "s/^$1=//p" "$WORK/image.env"; }
upstream_ref=$(field ref)
config_digest=$(field config)
blob_bytes=$(field blob_bytes)
nlayers=$(field layers)
repo_tag=${upstream_ref#*/} # testuser/big:1

# --- the slow link -----------------------------------------------------------------

STATS=$WORK/relay.json
rm -f "$STATS" "$STATS.log"
cleanup() {
  unmount "$MNT"
  relay_stop
}
trap cleanup EXIT
relay_start 127.0.0.1:0 "$LAZYIMG_TEST_UPSTREAM" "$STATS" --rtt-ms "$RTT_MS" --rate-mbit "$RATE_MBIT"
relay_ref=$RELAY_ADDR/$repo_tag
log "relay $RELAY_ADDR -> $LAZYIMG_TEST_UPSTREAM: ${RTT_MS} ms RTT, ${RATE_MBIT} Mbit/s (stats: $STATS)"

percent() { awk -v a="$1" -v b="$blob_bytes" 'BEGIN { printf "%.2f", 100 * a / b }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f MiB", a / 1048576 }'; }

# --- (a) podman pull + run --------------------------------------------------------

podman_once() {
  # Start from nothing: podman would skip blobs of an image it already holds.
  podman rmi -f "${config_digest#sha256:}" >/dev/null 2>&1 || true
  relay_reset "$STATS"
  local t0 t1 secs out
  t0=$(now)
  # --cert-dir trusts the testenv CA for the relay's host:port without touching
  # /etc/containers/certs.d (the server certificate names 127.0.0.1, any port).
  podman pull -q --cert-dir "$LAZYIMG_TEST_CERT_DIR" \
    --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" "$relay_ref" >/dev/null
  t1=$(now)
  out=$(podman run --rm --network host "$relay_ref" /usr/local/bin/hello)
  secs=$(since "$t0")
  [[ $out == *"$HELLO_TEXT"* ]] || die "podman run printed no greeting: $out"
  podman_secs+=("$secs")
  podman_run+=("$(since "$t1")")
  podman_down+=("$(relay_field "$STATS" down_bytes)")
  podman_up+=("$(relay_field "$STATS" up_bytes)")
  podman_rmi_after
  log "podman: ${secs}s, $(mib "${podman_down[-1]}") down through the relay"
}
# Leave podman's store as it was (the image takes 1.3 GiB there).
podman_rmi_after() { podman rmi -f "${config_digest#sha256:}" >/dev/null 2>&1 || true; }

# --- (b) lazyimg mount + ch-run + umount -----------------------------------------------

LZ_CONFIG=$WORK/lazyimg.toml
LZ_AUTH=$WORK/auth.json
write_lazyimg_config() {
  cat >"$LZ_CONFIG" <<TOML
cache_dir = "$WORK/cache"
[[registry]]
prefix = "$RELAY_ADDR"
ca_file = "$LAZYIMG_TEST_CA"
[[registry]]
prefix = "$LAZYIMG_TEST_UPSTREAM"
ca_file = "$LAZYIMG_TEST_CA"
TOML
  # The credentials under both names: the relay is another host:port to lazyimg.
  (
    umask 077
    local auth
    auth=$(printf '%s:%s' "$LAZYIMG_TEST_USER" "$LAZYIMG_TEST_TOKEN" | base64 -w0)
    printf '{"auths":{"%s":{"auth":"%s"},"%s":{"auth":"%s"}}}\n' \
      "$RELAY_ADDR" "$auth" "$LAZYIMG_TEST_UPSTREAM" "$auth" >"$LZ_AUTH"
  )
}
lz() { REGISTRY_AUTH_FILE=$LZ_AUTH "$LAZYIMG_BIN" --config "$LZ_CONFIG" "$@"; }

# The line of a command's stderr that says what went wrong (clap puts usage after it).
first_error() { awk '/[Ee]rror/ { print; found = 1; exit } END { if (!found) print "(no message)" }' | cut -c1-200; }

index_note="not run"
lazyimg_index() {
  local t0 err
  t0=$(now)
  if err=$(lz -q index "$upstream_ref" --push 2>&1 >/dev/null); then
    index_note="ok ($(since "$t0")s, not timed, not through the relay)"
  else
    index_note="FAILED: $(first_error <<<"$err")"
    log "lazyimg index $upstream_ref --push failed, continuing without an index: $err"
  fi
}

stats_note="not read"
lazyimg_once() {
  unmount "$MNT"
  rm -rf "$WORK/cache"
  relay_reset "$STATS"
  local t0 t1 secs umount_secs out pid
  t0=$(now)
  out=$(lz -q mount "$relay_ref" "$MNT" 2>&1 >/dev/null) || die "lazyimg mount failed: $out"
  t1=$(now)
  pid=$(daemon_pid "$out")
  [[ -n $pid ]] || die "no daemon pid in: $out"
  out=$(ch-run "$MNT" -- /usr/local/bin/hello)
  secs=$(since "$t0")
  lz_run+=("$(since "$t1")")
  # Outside the timing: the mount's own counters.
  if lz stats "$MNT" --json >"$WORK/lazyimg-stats.json" 2>"$WORK/lazyimg-stats.err"; then
    stats_note=$("$(system_python)" -c '
import json, sys
s = json.load(open(sys.argv[1]))
keys = ("bytes_fetched", "requests", "chunks_fetched", "bytes_served", "whole_blob_fallbacks", "fetch_failures")
print(", ".join(f"{k} {s[k]}" for k in keys if k in s))' "$WORK/lazyimg-stats.json" 2>/dev/null) ||
      stats_note="unreadable JSON in $WORK/lazyimg-stats.json"
  else
    stats_note="unavailable: $(first_error <"$WORK/lazyimg-stats.err")"
  fi
  lz_rss+=("$(peak_rss_mib "$pid")")
  t1=$(now)
  lz umount "$MNT"
  umount_secs=$(since "$t1")
  [[ $out == *"$HELLO_TEXT"* ]] || die "ch-run printed no greeting: $out"
  lz_secs+=("$(awk -v a="$secs" -v b="$umount_secs" 'BEGIN { printf "%.3f", a + b }')")
  lz_umount+=("$umount_secs")
  lz_down+=("$(relay_field "$STATS" down_bytes)")
  lz_up+=("$(relay_field "$STATS" up_bytes)")
  lz_conns+=("$(relay_field "$STATS" connections)")
  log "lazyimg: ${lz_secs[-1]}s, $(mib "${lz_down[-1]}") down through the relay"
}

# --- the runs ---------------------------------------------------------------------

podman_secs=() podman_run=() podman_down=() podman_up=()
lz_secs=() lz_run=() lz_umount=() lz_down=() lz_up=() lz_rss=() lz_conns=()
if [[ -n $run_lazyimg ]]; then
  write_lazyimg_config
  log "lazyimg index $upstream_ref --push (once, untimed, direct)"
  lazyimg_index
fi
for run in $(seq "$RUNS"); do
  if [[ -n $run_podman ]]; then
    log "run $run: podman pull + run"
    podman_once
  fi
  if [[ -n $run_lazyimg ]]; then
    log "run $run: lazyimg mount + ch-run + umount"
    lazyimg_once
  fi
done
med() { printf '%s\n' "$@" | median; }
med_int() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%.0f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# --- report -----------------------------------------------------------------------

echo "lazy-loading benchmark ($RUNS run(s), medians; relay bytes = registry to client):"
echo "  $upstream_ref via $RELAY_ADDR at ${RTT_MS} ms RTT, ${RATE_MBIT} Mbit/s;"
echo "  image: $nlayers gzip layers, $blob_bytes blob bytes ($(mib "$blob_bytes"))"
if [[ -n $run_podman ]]; then
  pd=$(med_int "${podman_down[@]}")
  printf '  podman pull + run                      %8ss   %s bytes down (%s, %s %% of blob bytes), %s up\n' \
    "$(med "${podman_secs[@]}")" "$pd" "$(mib "$pd")" "$(percent "$pd")" "$(med_int "${podman_up[@]}")"
  echo "    of which podman run                $(med "${podman_run[@]}")s"
  if ((pd < blob_bytes * 95 / 100)); then
    echo "  note: podman fetched less than the image: its store already held some layers (shared with other images)"
  fi
fi
if [[ -n $run_lazyimg ]]; then
  ld=$(med_int "${lz_down[@]}")
  printf '  lazyimg mount + ch-run + umount        %8ss   %s bytes down (%s, %s %% of blob bytes), %s up\n' \
    "$(med "${lz_secs[@]}")" "$ld" "$(mib "$ld")" "$(percent "$ld")" "$(med_int "${lz_up[@]}")"
  echo "    of which ch-run                    $(med "${lz_run[@]}")s, umount $(med "${lz_umount[@]}")s"
  echo "    connections through the relay      $(med_int "${lz_conns[@]}")   (TLS: the relay cannot count requests; \`lazyimg -v mount\` does)"
  echo "    daemon peak RSS (VmHWM)            $(printf '%s\n' "${lz_rss[@]}" | maximum) MiB   (read before the umount; highest of the runs)"
  echo "    lazyimg stats --json (last run)    $stats_note"
  echo "    lazyimg index --push               $index_note"
fi
if [[ -n $run_podman && -n $run_lazyimg ]]; then
  r=$(ratio "$(med "${podman_secs[@]}")" "$(med "${lz_secs[@]}")")
  p=$(percent "$ld")
  ok_ratio=$(awk -v r="$r" -v g="$GOAL_RATIO" 'BEGIN { print (r >= g) ? "PASS" : "FAIL" }')
  ok_bytes=$(awk -v p="$p" -v g="$GOAL_PERCENT" 'BEGIN { print (p <= g) ? "PASS" : "FAIL" }')
  echo "  ratio podman / lazyimg                 ${r}x   (goal >= ${GOAL_RATIO}x)   $ok_ratio"
  echo "  lazyimg fetched                        ${p} %   (goal <= ${GOAL_PERCENT} %)   $ok_bytes"
  [[ $ok_ratio == PASS && $ok_bytes == PASS ]] || exit 1
fi
