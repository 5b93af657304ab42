#!/usr/bin/env bash
# Whole-system benchmark of a cold sequential read through a lazy mount. The
# acceptance check:
#
#   a cold sequential read of a 300 MiB file through the mount reaches >= 80 % of
#   a plain `curl` of the same blob from the same registry.
#
# Set-up: the testenv registries (scripts/testenv.sh); an image of one gzip layer
# holding /opt/big.bin, 300 MiB of deterministic, poorly compressible data of the
# kind LAZYIMG_BENCH_CONTENT names (scripts/gen-library-data.py):
#   library (default): the mix of scripts/build-big-image.sh: per 4 MiB, 3 MiB
#            random, 768 KiB over 16 letters, 256 KiB of zeros; gzip leaves ~86 %;
#   weights: float16-like values, as in model weights; `gzip -6` leaves ~90 %,
#            umoci's gzip stores it (the layer is ~100 % of the file);
# tarred by GNU tar and gzipped by `umoci raw add-layer`, pushed to the HTTPS
# upstream (tag: the kind); then, once, untimed and direct, `lazyimg index
# --push`. Each run, in turn:
#   curl:    a pull token from the token service (untimed), then timed by curl:
#            GET /v2/REPO/blobs/LAYER > /dev/null   (rate: blob bytes / s)
#   lazyimg: per engine setting in LAZYIMG_WORKERS (default: the engine's own):
#            empty cache, `lazyimg mount` (untimed: manifest, config, index), then
#            timed by dd: dd if=MNT/opt/big.bin of=/dev/null bs=1M   (rate: file
#            bytes / s); `lazyimg stats --json` and the daemon's peak RSS (VmHWM
#            from /proc/PID/status) are read before the umount.
#   and, for reference only, `curl ... | gzip -dc > /dev/null` (what getting the
#   file's bytes costs without lazyimg; rate: file bytes / s), and `sha256sum`
#   of the same file from the page cache (one core hashing each byte once: the
#   floor a reader that verifies what it serves has to beat with more cores).
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
#        shown). Exits 1 when the goal is missed (judged on the engine default, or
#        on the first setting when `default` is not among them).
# Environment: LAZYIMG_BENCH_DIR (/var/tmp/lazyimg-bench-cold-read); LAZYIMG_BIN
#              (a built lazyimg to use instead of building one, see scripts/lib.sh);
#              LAZYIMG_BENCH_RTT_MS, LAZYIMG_BENCH_RATE_MBIT (unset: no relay);
#              LAZYIMG_BENCH_CONTENT: library (default) or weights;
#              LAZYIMG_WORKERS: engine worker counts to compare, space-separated,
#              each written to the daemon's config as `[lazy] workers = N`, and
#              `default` for no such key, e.g. LAZYIMG_WORKERS="1 default"
#              (unset: `default` alone).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
RUNS=${1:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-cold-read}
BUILD_VERSION=3 # bump when the image's content or layout changes
FILE_MIB=300
GOAL=0.80
REPO=bench/cold-read
CONTENT=${LAZYIMG_BENCH_CONTENT:-library}
TAG=$CONTENT
MNT=$WORK/mnt
read -r -a WORKERS <<<"${LAZYIMG_WORKERS:-default}"

log() { echo "bench-cold-read: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[[ $(id -u) -eq 0 ]] || die "run me as root (FUSE mounts)"
[[ $CONTENT == library || $CONTENT == weights ]] ||
  die "LAZYIMG_BENCH_CONTENT must be library or weights, not $CONTENT"
((${#WORKERS[@]})) || die "LAZYIMG_WORKERS is empty"
for workers in "${WORKERS[@]}"; do
  [[ $workers == default || $workers =~ ^[1-9][0-9]*$ ]] ||
    die "LAZYIMG_WORKERS: $workers is neither a worker count nor default"
done

bench_setup umoci skopeo curl fusermount3 dd tar sha256sum
mkdir -p "$WORK"
unmount() { # by /proc/mounts: `mountpoint` fails on a dead daemon's mount (ENOTCONN)
  if awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; then
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1" || true
  fi
}
unmount "$MNT"
mkdir -p "$MNT"
trap 'unmount "$MNT"; relay_stop' EXIT

# --- the image (built once per kind, kept in $WORK/CONTENT) ------------------------

BUILT=$WORK/$CONTENT
LAYOUT=$BUILT/oci
FILE=$BUILT/root/opt/big.bin # kept for sha256sum
if [[ -f $LAYOUT/oci-layout && -f $FILE && $(cat "$BUILT/built" 2>/dev/null) == "$BUILD_VERSION" ]]; then
  log "using cached $LAYOUT:$TAG"
else
  log "building the image ($FILE_MIB MiB file of $CONTENT data, one gzip layer)"
  t0=$(now)
  rm -rf "$BUILT"
  mkdir -p "$BUILT/root/opt"
  "$(system_python)" scripts/gen-library-data.py "$FILE" "$FILE_MIB" --seed 300 --kind "$CONTENT"
  tar -C "$BUILT/root" --owner=0 --group=0 --numeric-owner --mtime=2024-01-01T00:00:00Z \
    -cf "$BUILT/layer.tar" opt
  umoci init --layout "$LAYOUT"
  umoci new --image "$LAYOUT:$TAG"
  umoci raw add-layer --image "$LAYOUT:$TAG" "$BUILT/layer.tar"
  rm -f "$BUILT/layer.tar"
  echo "$BUILD_VERSION" >"$BUILT/built"
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
# One config per engine setting: the shared one, plus `[lazy] workers = N`.
# (A lazyimg that predates the [lazy] table refuses such a config: the mount
# then fails with its message.)
for workers in "${WORKERS[@]}"; do
  cp "$WORK/config.toml" "$WORK/config-$workers.toml"
  if [[ $workers != default ]]; then
    printf '[lazy]\nworkers = %s\n' "$workers" >>"$WORK/config-$workers.toml"
  fi
done
# lazyimg with the shared config, or with $LZ_CONFIG when set.
lz() { REGISTRY_AUTH_FILE=$WORK/auth.json "$LAZYIMG_BIN" --config "${LZ_CONFIG:-$WORK/config.toml}" "$@"; }
log "lazyimg index --push $image (once, untimed, direct)"
rm -rf "$WORK/cache"
lz -q index "$image" --push >/dev/null
mounted=$registry/$REPO:$TAG

# CPU seconds (user + system) a process has used so far, all threads.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
registry_pid=$(<"$LAZYIMG_TEST_STATE/upstream.pid")

# Per engine setting, each run's figures, space-separated.
declare -A lz_mibs=() lz_cpu=() lz_reg_cpu=() lz_rss=()
lazyimg_once() { # WORKERS: an entry of $LAZYIMG_WORKERS
  local workers=$1 LZ_CONFIG=$WORK/config-$1.toml
  unmount "$MNT"
  rm -rf "$WORK/cache"
  local out pid cpu0 reg0 line mibs cpu reg_cpu rss
  out=$(lz mount "$mounted" "$MNT" 2>&1 >/dev/null) || die "lazyimg mount failed: $out"
  pid=$(daemon_pid "$out")
  [[ -n $pid ]] || die "no daemon pid in: $out"
  cpu0=$(cpu_of "$pid") reg0=$(cpu_of "$registry_pid")
  # dd's own clock: from the first read to the last, without its start-up.
  line=$(dd if="$MNT/opt/big.bin" of=/dev/null bs=1M 2>&1 | grep copied) || die "dd failed"
  cpu=$(minus "$(cpu_of "$pid")" "$cpu0")
  reg_cpu=$(minus "$(cpu_of "$registry_pid")" "$reg0")
  [[ ${line%% *} == "$file_bytes" ]] || die "dd read ${line%% *} bytes, not $file_bytes"
  mibs=$(awk '{ printf "%.1f", $1 / 1048576 / $(NF-3) }' <<<"$line")
  lz stats --json "$MNT" >"$WORK/stats-$workers.json"
  rss=$(peak_rss_mib "$pid")
  lz umount "$MNT"
  lz_mibs[$workers]+=" $mibs" lz_cpu[$workers]+=" $cpu" lz_reg_cpu[$workers]+=" $reg_cpu"
  lz_rss[$workers]+=" $rss"
  log "lazyimg (workers: $workers): $mibs MiB/s, daemon $cpu s CPU, peak RSS $rss MiB, registry $reg_cpu s CPU"
}

# --- sha256sum: one core hashing the file once ---------------------------------------

sha_mibs=()
sha256_once() {
  local timing
  cat "$FILE" >/dev/null # from the page cache, as the registry's copy is
  timing=$( { TIMEFORMAT='%R'; time sha256sum "$FILE" >/dev/null; } 2>&1)
  sha_mibs+=("$(awk -v b="$file_bytes" '{ printf "%.1f", b / 1048576 / $1 }' <<<"$timing")")
  log "sha256sum: ${sha_mibs[-1]} MiB/s of file"
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
  sha256_once
  for workers in "${WORKERS[@]}"; do
    lazyimg_once "$workers"
  done
done
med() { printf '%s\n' "$@" | median; }
# med_of "A B C" / max_of "A B C": of a setting's space-separated figures.
med_of() { local -a v; read -r -a v <<<"$1"; med "${v[@]}"; }
max_of() { local -a v; read -r -a v <<<"$1"; printf '%s\n' "${v[@]}" | maximum; }
# The goal is judged on the engine's default, or on the first setting without it.
goal_workers=${WORKERS[0]}
for workers in "${WORKERS[@]}"; do
  [[ $workers == default ]] && goal_workers=default
done
lz_med=$(med_of "${lz_mibs[$goal_workers]}")
curl_med=$(med "${curl_mibs[@]}")
sha_med=$(med "${sha_mibs[@]}")
r=$(ratio "$lz_med" "$curl_med")
verdict=$(awk -v r="$r" -v g="$GOAL" 'BEGIN { print (r >= g) ? "PASS" : "FAIL" }')
stats=$("$(system_python)" -c '
import json, sys
s = json.load(open(sys.argv[1]))
keys = ("bytes_fetched", "requests", "chunks_fetched", "cache_hits", "verification_failures", "whole_blob_fallbacks")
p50, p99 = s["fetch_latency_ms"]["p50"], s["fetch_latency_ms"]["p99"]
print(", ".join(f"{k} {s[k]}" for k in keys) + f"; fetch latency p50 {p50} ms, p99 {p99} ms")' \
  "$WORK/stats-$goal_workers.json")
setting() { if [[ $1 == default ]]; then echo "engine default workers"; else echo "[lazy] workers = $1"; fi; }

cat <<REPORT
cold sequential read benchmark ($RUNS run(s), medians; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))
  $image: one gzip layer, $layer_bytes blob bytes, file /opt/big.bin $file_bytes bytes of $CONTENT data
  link: $link
  curl of the layer blob                 $curl_med MiB/s of blob   (CPU: curl $(med "${curl_cpu[@]}") s, registry $(med "${curl_reg_cpu[@]}") s)
  curl | gzip -dc (reference only)       $(med "${gunzip_mibs[@]}") MiB/s of file
  sha256sum of the file (one core)       $sha_med MiB/s of file
REPORT
for workers in "${WORKERS[@]}"; do
  w_med=$(med_of "${lz_mibs[$workers]}")
  printf '  lazyimg mount, dd of the file (cold)   %s MiB/s of file   (%s; CPU: daemon %s s, registry %s s)\n' \
    "$w_med" "$(setting "$workers")" "$(med_of "${lz_cpu[$workers]}")" "$(med_of "${lz_reg_cpu[$workers]}")"
  echo "    daemon peak RSS (VmHWM)              $(max_of "${lz_rss[$workers]}") MiB   (read before the umount; highest of the runs)"
  echo "    ratio to sha256sum                   $(ratio "$w_med" "$sha_med")"
  if [[ $workers != "$goal_workers" ]]; then
    echo "    ratio $(setting "$goal_workers") / this   $(ratio "$lz_med" "$w_med")"
  fi
done
cat <<REPORT
    lazyimg stats --json (last run)      $stats   ($(setting "$goal_workers"))
  ratio lazyimg / curl                   ${r}   (goal >= $GOAL; $(setting "$goal_workers"))   $verdict
    the same, lazyimg in blob bytes      $(awk -v l="$lz_med" -v c="$curl_med" -v b="$layer_bytes" -v f="$file_bytes" 'BEGIN { printf "%.2f", l * b / f / c }')   (the layer's blob bytes per second of the read)
REPORT
[[ $verdict == PASS ]]
