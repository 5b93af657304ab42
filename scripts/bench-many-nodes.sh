#!/usr/bin/env bash
# Many GPU nodes starting one image at once, through the blob-range cache that
# `lazyimg nginx-config` writes (Debian's nginx, slice module) in front of the
# registry. Reports what reached the registry (its own access log), the cache's
# hits and misses (nginx's log), and each node's start time against one node
# alone, in the same run.
#
# Set-up: the testenv registries; the >= 1 GiB image of scripts/build-big-image.sh
# on the HTTPS upstream with its lazyimg index pushed (once, untimed); nginx on a
# free port with a fresh cache for each phase. A "node" is one lazyimg mount with
# its own empty cache dir and config mapping the upstream to nginx; it reads the
# image's start-up files (/usr/local/bin/hello, /etc/os-release) and a 64 MiB
# slice of its largest file (dd, 1 MiB blocks from 128 MiB in).
#   alone:  one node, cold nginx cache;
#   many:   N nodes, cold nginx cache, released together at a barrier;
#   direct: N nodes straight to the registry, no cache (the figure to beat).
# Upstream bytes/requests: the registry's GETs of layer blobs during the phase.
#
# Usage: scripts/bench-many-nodes.sh [N]   (as root; N defaults to 8)
# Environment: LAZYIMG_BENCH_DIR (/var/tmp/lazyimg-bench-many-nodes); LAZYIMG_BIN
#              (a built lazyimg, see scripts/lib.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
N=${1:-8}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N]" >&2; exit 2; }
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench-many-nodes}
SLICE_MIB=64
SLICE_SKIP_MIB=128

log() { echo "bench-many-nodes: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[[ $(id -u) -eq 0 ]] || die "run me as root (FUSE mounts, nginx)"
eval "$(bash scripts/setup-runtimes.sh)" # installs nginx-light among others
bench_setup fusermount3 nginx
mkdir -p "$WORK"

log "building / pushing the big image (cached after the first run)"
bash scripts/build-big-image.sh >"$WORK/image.env"
ref=$(sed -n 's/^ref=//p' "$WORK/image.env")
repo_tag=${ref#*/}
lz_direct() {
  REGISTRY_AUTH_FILE=$LAZYIMG_TEST_AUTH_FILE "$LAZYIMG_BIN" --config "$WORK/direct.toml" "$@"
}
printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\nca_file = "%s"\n' \
  "$WORK/direct-cache" "$LAZYIMG_TEST_UPSTREAM" "$LAZYIMG_TEST_CA" >"$WORK/direct.toml"
log "lazyimg index --push $ref (once, untimed)"
lz_direct -q index "$ref" --push >/dev/null
largest=$(lz_direct find "$ref" --type f --size +$((SLICE_SKIP_MIB + SLICE_MIB))M | sed -n 1p)
[[ -n $largest ]] || die "no file of $((SLICE_SKIP_MIB + SLICE_MIB)) MiB in the image"

# --- nginx ------------------------------------------------------------------------
NGINX_DIR=$WORK/nginx
nginx_stop() {
  if [[ -f $NGINX_DIR/nginx.conf ]]; then
    nginx -s stop -c "$NGINX_DIR/nginx.conf" 2>/dev/null || true
  fi
  for _ in $(seq 50); do [[ -f $NGINX_DIR/nginx.pid ]] || break; sleep 0.1; done
}
nginx_start() { # a fresh, empty cache
  nginx_stop
  rm -rf "$NGINX_DIR"
  mkdir -p "$NGINX_DIR"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  NGINX_ADDR=127.0.0.1:$port
  "$LAZYIMG_BIN" nginx-config --upstream "https://$LAZYIMG_TEST_UPSTREAM" --listen "$NGINX_ADDR" \
    --cache-dir "$NGINX_DIR" >"$NGINX_DIR/nginx.conf"
  nginx -c "$NGINX_DIR/nginx.conf"
  # Credentials are looked up by the host a node talks to: the cache.
  local auth
  auth=$(printf '%s:%s' "$LAZYIMG_TEST_USER" "$LAZYIMG_TEST_TOKEN" | base64 -w0)
  printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$NGINX_ADDR" "$auth" >"$WORK/nodes-auth.json"
  NODES_AUTH=$WORK/nodes-auth.json
}

# --- nodes ------------------------------------------------------------------------
unmount() {
  if awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; then
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1" || true
  fi
}
cleanup() {
  for d in "$WORK"/node-*/mnt; do [[ -d $d ]] && unmount "$d"; done
  nginx_stop
}
trap cleanup EXIT

node_prepare() { # I [direct]: an empty cache and a config that reaches the upstream through nginx
  local dir=$WORK/node-$1
  unmount "$dir/mnt"
  rm -rf "$dir"
  mkdir -p "$dir/mnt"
  if [[ ${2:-} == direct ]]; then
    printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\nca_file = "%s"\n' \
      "$dir/cache" "$LAZYIMG_TEST_UPSTREAM" "$LAZYIMG_TEST_CA" >"$dir/config.toml"
    return
  fi
  # ca_file: the token service (the upstream's realm) speaks TLS with the test CA.
  printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\nlocation = "%s"\ninsecure = true\nca_file = "%s"\n' \
    "$dir/cache" "$LAZYIMG_TEST_UPSTREAM" "$NGINX_ADDR" "$LAZYIMG_TEST_CA" >"$dir/config.toml"
}
node_run() { # I [BARRIER]: mount, read the start-up files and the slice; seconds to $dir/secs
  local dir=$WORK/node-$1 barrier=${2:-}
  if [[ -n $barrier ]]; then
    while [[ ! -e $barrier ]]; do sleep 0.01; done
  fi
  local t0
  t0=$(now)
  REGISTRY_AUTH_FILE=$NODES_AUTH "$LAZYIMG_BIN" --config "$dir/config.toml" -q \
    mount "$LAZYIMG_TEST_UPSTREAM/$repo_tag" "$dir/mnt" 2>"$dir/mount.err"
  cat "$dir/mnt/usr/local/bin/hello" "$dir/mnt/etc/os-release" >/dev/null
  dd if="$dir/mnt$largest" of=/dev/null bs=1M skip=$SLICE_SKIP_MIB count=$SLICE_MIB 2>/dev/null
  since "$t0" >"$dir/secs"
  "$LAZYIMG_BIN" --config "$dir/config.toml" stats --json "$dir/mnt" >"$dir/stats.json"
  "$LAZYIMG_BIN" --config "$dir/config.toml" umount "$dir/mnt"
}

# Layer-blob GETs that reached the registry after log byte offset $1: "REQUESTS BYTES".
upstream_since() {
  tail -c +$(($1 + 1)) "$LAZYIMG_TEST_UPSTREAM_LOG" |
    awk '/"GET \/v2\/.*\/blobs\/sha256:/ { n++; b += $10 } END { printf "%d %d\n", n, b }'
}
log_size() { stat -c %s "$LAZYIMG_TEST_UPSTREAM_LOG"; }
# The distinct 1 MiB slices (digest, slice number) the nodes' blob requests in
# nginx's log touch: with a fresh cache each must reach the registry once, so
# more upstream blob requests than this means a slice was fetched twice.
SLICE=$((1 << 20))
unique_slices() {
  "$(system_python)" - "$NGINX_DIR/access.log" "$SLICE" <<'PY'
import re, sys
slice_size = int(sys.argv[2])
seen = set()
line_re = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) [^"]*" (\d+) (\d+) range="([^"]*)"')
for line in open(sys.argv[1]):
    m = line_re.search(line)
    if not m:
        continue
    digest, status, sent, wanted = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    r = re.fullmatch(r"bytes=(\d+)-(\d+)", wanted)
    if r:
        first, last = int(r.group(1)), int(r.group(2))
    elif status == 200 and sent > 0:
        first, last = 0, sent - 1
    else:
        continue
    seen.update((digest, k) for k in range(first // slice_size, last // slice_size + 1))
print(len(seen))
PY
}
cache_counts() { # "HIT MISS" in nginx's log
  awk '/cache=HIT/ { h++ } /cache=MISS/ { m++ } END { printf "%d %d\n", h, m }' "$NGINX_DIR/access.log"
}

# --- alone --------------------------------------------------------------------------
nginx_start
node_prepare 0
mark=$(log_size)
node_run 0
read -r alone_requests alone_bytes < <(upstream_since "$mark")
alone_secs=$(<"$WORK/node-0/secs")
alone_fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_fetched"])' "$WORK/node-0/stats.json")
log "one node: ${alone_secs}s, upstream $alone_requests requests, $alone_bytes bytes"

# --- many ---------------------------------------------------------------------------
many_at_once() { # [direct]: N nodes released together; their upstream figures on stdout
  local i barrier=$WORK/go mark pids=()
  for i in $(seq 1 "$N"); do node_prepare "$i" "${1:-}"; done
  rm -f "$barrier"
  mark=$(log_size)
  for i in $(seq 1 "$N"); do
    node_run "$i" "$barrier" &
    pids+=($!)
  done
  sleep 0.5
  touch "$barrier"
  for pid in "${pids[@]}"; do wait "$pid" || die "a node failed (see $WORK/node-*/mount.err)"; done
  upstream_since "$mark"
}
NODES_AUTH=$LAZYIMG_TEST_AUTH_FILE
read -r direct_requests direct_bytes < <(many_at_once direct)
nginx_start
read -r many_requests many_bytes < <(many_at_once)
read -r hits misses < <(cache_counts)
slices=$(unique_slices)
secs=$(for i in $(seq 1 "$N"); do cat "$WORK/node-$i/secs"; echo; done)
p50=$(median <<<"$secs")
p99=$(maximum <<<"$secs") # with N <= 100 nodes, p99 is the slowest
fetched_total=$(for i in $(seq 1 "$N"); do
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_fetched"])' "$WORK/node-$i/stats.json"
done | awk '{ s += $1 } END { print s }')

echo "many-nodes benchmark: $N nodes at once vs one alone, through nginx (lazyimg nginx-config) to $LAZYIMG_TEST_UPSTREAM"
echo "  image $ref; each node: mount, start-up files, ${SLICE_MIB} MiB of $largest"
printf '  one node alone                 %6.3f s   upstream %d requests, %d bytes (the node fetched %d)\n' \
  "$alone_secs" "$alone_requests" "$alone_bytes" "$alone_fetched"
printf '  %2d nodes, start p50 / slowest  %6.3f s / %.3f s   (%.2fx / %.2fx one alone)\n' \
  "$N" "$p50" "$p99" "$(ratio "$p50" "$alone_secs")" "$(ratio "$p99" "$alone_secs")"
printf '  upstream for %2d nodes           %d requests, %d bytes: %.2fx one node alone (nodes fetched %d bytes from nginx)\n' \
  "$N" "$many_requests" "$many_bytes" "$(ratio "$many_bytes" "$alone_bytes")" "$fetched_total"
printf '  nginx cache                    %d hits, %d misses\n' "$hits" "$misses"
printf '  without the cache, %2d nodes     %d requests, %d bytes upstream: %.2fx one node alone\n' \
  "$N" "$direct_requests" "$direct_bytes" "$(ratio "$direct_bytes" "$alone_bytes")"
duplicates=$((many_requests - slices))
if ((duplicates > 0)); then
  printf '  slices fetched upstream twice  %d (of %d distinct slices the nodes touched): FAIL\n' "$duplicates" "$slices"
else
  printf '  slices fetched upstream twice  0 (%d upstream blob requests for %d distinct slices the nodes touched)\n' \
    "$many_requests" "$slices"
fi
