#!/usr/bin/env bash
# Whole-system benchmark of a cold sequential read through a lazy mount. The
# acceptance check:
#
#   a cold sequential read of a 300 MiB file through the mount reaches >= 80 % of
#   a plain `curl` of the same blob from the same registry.
#
# Set-up: the testenv registries (scripts/testenv.sh); an image of one gzip layer
# holding /opt/big.bin, 300 MiB of deterministic, poorly compressible data (the
# mix of scripts/build-big-image.sh: per 4 MiB, 3 MiB random, 768 KiB over 16
# letters, 256 KiB of zeros; gzip leaves ~86 %), tarred by GNU tar and gzipped by
# `umoci raw add-layer`, pushed to the HTTPS upstream; then, once, untimed and
# direct, `lazyimg index --push`. Each run, in turn:
#   curl:    a pull token from the token service (untimed), then timed by curl:
#            GET /v2/REPO/blobs/LAYER > /dev/null   (rate: blob bytes / s)
#   lazyimg: empty cache, `lazyimg mount` (untimed: manifest, config, index), then
#            timed by dd: dd if=MNT/opt/big.bin of=/dev/null bs=1M   (rate: file
#            bytes / s); `lazyimg stats --json` is read before the umount.
#   and, for reference only, `curl ... | gzip -dc > /dev/null` (what getting the
#   file's bytes costs without lazyimg; rate: file bytes / s).
# The goal's ratio is file bytes / s over blob bytes / s, as stated; the ratio
# with lazyimg's rate counted in the layer's blob bytes is shown beside it.
# Both read the registry's copy of the blob from the page cache. CPU seconds of
# the lazyimg daemon, curl and the registry during the timed part are shown too:
# on a small machine they say whether the network or the decoding is the limit.
#
# On loopback curl is limited by CPU alone; setting LAZYIMG_BENCH_RTT_MS and/or
# LAZYIMG_BENCH_RATE_MBIT puts one scripts/slow-relay.py (defaults 20 ms, 400
# Mbit/s) in front of the registry for both tools, as scripts/bench-lazy.sh does.
#
# Usage: scripts/bench-cold-read.sh [RUNS]   (as root; RUNS defaults to 3, medians
#        shown). Exits 1 when the goal is missed.
# Environment: LAZYIMG_BENCH_DIR (/var/tmp/lazyimg-bench-cold-read); LAZYIMG_BIN
#              (a built lazyimg to use instead of building one, see scripts/lib.sh);
#              LAZYIMG_BENCH_RTT_MS, LAZYIMG_BENCH_RATE_MBIT (unset: no relay).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
RUNS=${1:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-cold-read}
BUILD_VERSION=2 # bump when the image's content or layout changes
FILE_MIB=300
GOAL=0.80
REPO=bench/cold-read
TAG=1
MNT=$WORK/mnt

log() { echo "bench-cold-read: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[[ $(id -u) -eq 0 ]] || die "run me as root (FUSE mounts)"

bench_setup umoci skopeo curl fusermount3 dd tar
mkdir -p "$WORK"
unmount() { # by /proc/mounts: `mountpoint` fails on a dead daemon's mount (ENOTCONN)
  if awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; then
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1" || true
  fi
}
unmount "$MNT"
mkdir -p "$MNT"
trap 'unmount "$MNT"; relay_stop' EXIT

# --- the image (built once, kept in $WORK/oci) ------------------------------------

LAYOUT=$WORK/oci
if [[ -f $LAYOUT/oci-layout && $(cat "$WORK/built" 2>/dev/null) == "$BUILD_VERSION" ]]; then
  log "using cached $LAYOUT:$TAG"
else
  log "building the image ($FILE_MIB MiB file, one gzip layer)"
  t0=$(now)
  rm -rf "$LAYOUT" "$WORK/built" "$WORK/root"
  mkdir -p "$WORK/root/opt"
  "$(system_python)" scripts/gen-library-data.py "$WORK/root/opt/big.bin" "$FILE_MIB" --seed 300
  tar -C "$WORK/root" --owner=0 --group=0 --numeric-owner --mtime=2024-01-01T00:00:00Z \
    -cf "$WORK/layer.tar" opt
  rm -rf "$WORK/root"
  umoci init --layout "$LAYOUT"
  umoci new --image "$LAYOUT:$TAG"
  umoci raw add-layer --image "$LAYOUT:$TAG" "$WORK/layer.tar"
  rm -f "$WORK/layer.tar"
  echo "$BUILD_VERSION" >"$WORK/built"
  log "built in $(since "$t0")s"
fi
# The layer's digest and size, from the layout.
read -r _ _ layer_bytes _ nlayers layer < <("$(system_python)" scripts/layout-info.py "$LAYOUT" "$TAG")
((nlayers == 1)) || die "expected one layer in $LAYOUT:$TAG, found $nlayers"
file_bytes=$((FILE_MIB << 20))
image=$LAZYIMG_TEST_UPSTREAM/$REPO:$TAG
log "pushing to $image (blobs the registry has are skipped)"
out=$(bash scripts/push-oci-layout.sh "$LAYOUT:$TAG" "$image" \
  --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" 2>&1) || die "pushing failed: $out"

# --- the link: loopback, or one slow relay for both tools ---------------------------

registry=$LAZYIMG_TEST_UPSTREAM link="loopback"
if [[ -n ${LAZYIMG_BENCH_RTT_MS:-}${LAZYIMG_BENCH_RATE_MBIT:-} ]]; then
  rtt=${LAZYIMG_BENCH_RTT_MS:-20} rate=${LAZYIMG_BENCH_RATE_MBIT:-400}
  relay_start 127.0.0.1:0 "$LAZYIMG_TEST_UPSTREAM" "$WORK/relay.json" --rtt-ms "$rtt" --rate-mbit "$rate"
  registry=$RELAY_ADDR link="slow-relay $RELAY_ADDR: $rtt ms RTT, $rate Mbit/s"
fi

# --- lazyimg ------------------------------------------------------------------------

cat >"$WORK/config.toml" <<TOML
cache_dir = "$WORK/cache"
[[registry]]
prefix = "$LAZYIMG_TEST_UPSTREAM"
ca_file = "$LAZYIMG_TEST_CA"
TOML
# The relay is another host:port to lazyimg: its own entry and credentials.
auth=$(printf '%s:%s' "$LAZYIMG_TEST_USER" "$LAZYIMG_TEST_TOKEN" | base64 -w0)
(
  umask 077
  printf '{"auths":{"%s":{"auth":"%s"},"%s":{"auth":"%s"}}}\n' \
    "$LAZYIMG_TEST_UPSTREAM" "$auth" "$registry" "$auth" >"$WORK/auth.json"
)
if [[ $registry != "$LAZYIMG_TEST_UPSTREAM" ]]; then
  printf '[[registry]]\nprefix = "%s"\nca_file = "%s"\n' "$registry" "$LAZYIMG_TEST_CA" >>"$WORK/config.toml"
fi
lz() { REGISTRY_AUTH_FILE=$WORK/auth.json "$LAZYIMG_BIN" --config "$WORK/config.toml" "$@"; }
log "lazyimg index --push $image (once, untimed, direct)"
rm -rf "$WORK/cache"
lz -q index "$image" --push >/dev/null
mounted=$registry/$REPO:$TAG

# CPU seconds (user + system) a process has used so far, all threads.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
registry_pid=$(<"$LAZYIMG_TEST_STATE/upstream.pid")

lz_mibs=() lz_cpu=() lz_reg_cpu=()
lazyimg_once() {
  unmount "$MNT"
  rm -rf "$WORK/cache"
  local out pid cpu0 reg0 line
  out=$(lz mount "$mounted" "$MNT" 2>&1 >/dev/null) || die "lazyimg mount failed: $out"
  pid=$(sed -n 's/.*(daemon pid \([0-9]*\),.*/\1/p' <<<"$out")
  [[ -n $pid ]] || die "no daemon pid in: $out"
  cpu0=$(cpu_of "$pid") reg0=$(cpu_of "$registry_pid")
  # dd's own clock: from the first read to the last, without its start-up.
  line=$(dd if="$MNT/opt/big.bin" of=/dev/null bs=1M 2>&1 | grep copied) || die "dd failed"
  lz_cpu+=("$(minus "$(cpu_of "$pid")" "$cpu0")")
  lz_reg_cpu+=("$(minus "$(cpu_of "$registry_pid")" "$reg0")")
  [[ ${line%% *} == "$file_bytes" ]] || die "dd read ${line%% *} bytes, not $file_bytes"
  lz_mibs+=("$(awk '{ printf "%.1f", $1 / 1048576 / $(NF-3) }' <<<"$line")")
  lz stats --json "$MNT" >"$WORK/stats.json"
  lz umount "$MNT"
  log "lazyimg: ${lz_mibs[-1]} MiB/s, daemon ${lz_cpu[-1]} s CPU, registry ${lz_reg_cpu[-1]} s CPU"
}

# --- curl ---------------------------------------------------------------------------

blob_url=https://$registry/v2/$REPO/blobs/$layer
# The token service and its name for the registry, from the registry's challenge,
# as a client finds them.
challenge=$(curl -sS --cacert "$LAZYIMG_TEST_CA" -o /dev/null -D - "$blob_url" | tr -d '\r' |
  sed -n 's/^[Ww]ww-[Aa]uthenticate: Bearer //p')
realm=$(sed -n 's/.*realm="\([^"]*\)".*/\1/p' <<<"$challenge")
service=$(sed -n 's/.*service="\([^"]*\)".*/\1/p' <<<"$challenge")
[[ -n $realm && -n $service ]] || die "no bearer challenge from $blob_url: $challenge"

pull_token() {
  curl -sS --fail --cacert "$LAZYIMG_TEST_CA" -u "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" \
    -G --data-urlencode "service=$service" --data-urlencode "scope=repository:$REPO:pull" "$realm" |
    "$(system_python)" -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}
get_blob() { # TOKEN [CURL ARGS...]: the layer blob to stdout
  local token=$1
  shift
  curl -sS --fail --cacert "$LAZYIMG_TEST_CA" -H "Authorization: Bearer $token" "$@" "$blob_url"
}

curl_mibs=() curl_cpu=() curl_reg_cpu=() gunzip_mibs=()
curl_once() {
  local token out reg0 timing
  token=$(pull_token)
  reg0=$(cpu_of "$registry_pid")
  # curl's own clock (time_total), and its CPU from bash's `time`.
  timing=$( { TIMEFORMAT='%U %S'; time get_blob "$token" -o /dev/null \
    -w '%{size_download} %{time_total}\n'; } 2>&1)
  curl_reg_cpu+=("$(minus "$(cpu_of "$registry_pid")" "$reg0")")
  read -r out _ <<<"$timing"
  [[ $out == "$layer_bytes" ]] || die "curl got $out bytes, not $layer_bytes: $timing"
  curl_mibs+=("$(awk 'NR == 1 { printf "%.1f", $1 / 1048576 / $2 }' <<<"$timing")")
  curl_cpu+=("$(awk 'NR == 2 { printf "%.2f", $1 + $2 }' <<<"$timing")")
  log "curl: ${curl_mibs[-1]} MiB/s, curl ${curl_cpu[-1]} s CPU, registry ${curl_reg_cpu[-1]} s CPU"
  token=$(pull_token)
  timing=$( { TIMEFORMAT='%R'; time get_blob "$token" | gzip -dc >/dev/null; } 2>&1)
  gunzip_mibs+=("$(awk -v b="$file_bytes" '{ printf "%.1f", b / 1048576 / $1 }' <<<"$timing")")
  log "curl | gzip -dc: ${gunzip_mibs[-1]} MiB/s of file"
}

# --- the runs -----------------------------------------------------------------------

for run in $(seq "$RUNS"); do
  log "run $run of $RUNS"
  curl_once
  lazyimg_once
done
med() { printf '%s\n' "$@" | median; }
lz_med=$(med "${lz_mibs[@]}")
curl_med=$(med "${curl_mibs[@]}")
r=$(ratio "$lz_med" "$curl_med")
verdict=$(awk -v r="$r" -v g="$GOAL" 'BEGIN { print (r >= g) ? "PASS" : "FAIL" }')
stats=$("$(system_python)" -c '
import json, sys
s = json.load(open(sys.argv[1]))
keys = ("bytes_fetched", "requests", "chunks_fetched", "cache_hits", "verification_failures", "whole_blob_fallbacks")
p50, p99 = s["fetch_latency_ms"]["p50"], s["fetch_latency_ms"]["p99"]
print(", ".join(f"{k} {s[k]}" for k in keys) + f"; fetch latency p50 {p50} ms, p99 {p99} ms")' \
  "$WORK/stats.json")

cat <<REPORT
cold sequential read benchmark ($RUNS run(s), medians; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))
  $image: one gzip layer, $layer_bytes blob bytes, file /opt/big.bin $file_bytes bytes
  link: $link
  curl of the layer blob                 $curl_med MiB/s of blob   (CPU: curl $(med "${curl_cpu[@]}") s, registry $(med "${curl_reg_cpu[@]}") s)
  curl | gzip -dc (reference only)       $(med "${gunzip_mibs[@]}") MiB/s of file
  lazyimg mount, dd of the file (cold)   $lz_med MiB/s of file   (CPU: daemon $(med "${lz_cpu[@]}") s, registry $(med "${lz_reg_cpu[@]}") s)
    lazyimg stats --json (last run)      $stats
  ratio lazyimg / curl                   ${r}   (goal >= $GOAL)   $verdict
    the same, lazyimg in blob bytes      $(awk -v l="$lz_med" -v c="$curl_med" -v b="$layer_bytes" -v f="$file_bytes" 'BEGIN { printf "%.2f", l * b / f / c }')   (the layer's blob bytes per second of the read)
REPORT
[[ $verdict == PASS ]]
