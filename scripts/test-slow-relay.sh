#!/usr/bin/env bash
# Checks scripts/slow-relay.py against what the benchmarks rely on, with real
# traffic on 127.0.0.1 (python3 -m http.server behind it, curl in front):
#   * latency: a request on a new connection costs 2 RTT (handshake + request),
#     one on a kept-alive connection 1 RTT;
#   * rate: a SIZE_MIB download and a SIZE_MIB/2 upload each achieve the link
#     rate within 15 %; two parallel downloads share it (aggregate within 15 %);
#   * half-close passes through (the upload's sink answers after EOF);
#   * stats: bytes per direction and connections counted, SIGUSR1 resets them,
#     SIGTERM writes them and exits 0 promptly.
#
# Usage: scripts/test-slow-relay.sh [SIZE_MIB] [RTT_MS] [RATE_MBIT]   (default 500 20 400)
# Exits 1 if a check fails. Files live in ${LAZYIMG_RELAY_TEST_DIR:-/var/tmp/lazyimg-relay-test}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZE_MIB=${1:-500}
RTT_MS=${2:-20}
RATE_MBIT=${3:-400}
WORK=${LAZYIMG_RELAY_TEST_DIR:-/var/tmp/lazyimg-relay-test}
TOLERANCE=0.15

log() { echo "test-slow-relay: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need curl:curl python3:python3
PY=$(system_python)

failures=0
check() { # NAME OK(0/1) DETAIL
  if [[ $2 == 1 ]]; then
    printf '  ok    %-44s %s\n' "$1" "$3"
  else
    printf '  FAIL  %-44s %s\n' "$1" "$3"
    failures=$((failures + 1))
  fi
}
within() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { print (x >= lo && x <= hi) ? 1 : 0 }'; }
rate_err() { # BYTES SECONDS -> relative error of the achieved rate vs RATE_MBIT
  awk -v b="$1" -v s="$2" -v r="$RATE_MBIT" 'BEGIN { e = (b / s) / (r * 1e6 / 8) - 1; printf "%.4f", e < 0 ? -e : e }'
}
mbit() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }'; }
ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }

mkdir -p "$WORK"
# Random data (incompressible, though nothing here compresses), made once.
make_file() { # NAME MIB
  local f=$WORK/$1
  [[ -f $f && $(stat -c %s "$f") == $(($2 * 1048576)) ]] || head -c "$(($2 * 1048576))" /dev/urandom >"$f"
}
make_file big.bin "$SIZE_MIB"
make_file half.bin "$((SIZE_MIB / 2))" # rounded down, as half_mib below
echo hello >"$WORK/small.txt"
big_bytes=$((SIZE_MIB * 1048576))
half_mib=$((SIZE_MIB / 2))
half_bytes=$((half_mib * 1048576))

pids=()
cleanup() {
  relay_stop
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# An HTTP/1.1 server (keep-alive; `python3 -m http.server` speaks 1.0) on a free
# port, which it prints. TCP_NODELAY as registries (Go) set it: with Nagle, its
# body write after the headers would wait out a 40 ms delayed ACK.
"$PY" -u -c '
import functools, http.server, sys
http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
http.server.SimpleHTTPRequestHandler.disable_nagle_algorithm = True
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
' "$WORK" >"$WORK/http.out" 2>/dev/null &
pids+=($!)
# A TCP sink: reads to EOF, then answers with the byte count and closes.
"$PY" -u -c '
import socket, threading
s = socket.create_server(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
def serve(c):
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    c.sendall(b"%d\n" % n)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
' >"$WORK/sink.out" &
pids+=($!)
for _ in $(seq 50); do
  http_port=$(head -n1 "$WORK/http.out")
  sink_port=$(head -n1 "$WORK/sink.out")
  [[ -n $http_port && -n $sink_port ]] && break
  sleep 0.1
done
[[ -n $http_port && -n $sink_port ]] || { log "the HTTP server or the sink did not start"; exit 1; }

STATS=$WORK/stats.json
rm -f "$STATS" "$STATS.log"
relay_start 127.0.0.1:0 "127.0.0.1:$http_port" "$STATS" --rtt-ms "$RTT_MS" --rate-mbit "$RATE_MBIT"
url=http://$RELAY_ADDR
rtt=$(awk -v r="$RTT_MS" 'BEGIN { print r / 1000 }')
echo "slow-relay checks: rtt ${RTT_MS} ms, ${RATE_MBIT} Mbit/s, ${SIZE_MIB} MiB, relay on $RELAY_ADDR"

# --- latency -------------------------------------------------------------------
fresh=$(for _ in 1 2 3 4 5; do curl -sf -o /dev/null -w '%{time_total}\n' "$url/small.txt"; done | median)
check "new connection + GET: 2 RTT" "$(within "$fresh" "$(awk -v r="$rtt" 'BEGIN{print 2*r}')" \
  "$(awk -v r="$rtt" 'BEGIN{print 2*r + 0.025}')")" "$(ms "$fresh") ms"
# curl reuses the connection for a second URL: that GET costs one RTT.
again=$(for _ in 1 2 3 4 5; do
  curl -sf -o /dev/null -o /dev/null -w '%{time_total}\n' "$url/small.txt" "$url/small.txt" | tail -n1
done | median)
check "GET on a kept-alive connection: 1 RTT" "$(within "$again" "$rtt" \
  "$(awk -v r="$rtt" 'BEGIN{print r + 0.015}')")" "$(ms "$again") ms"

# --- rate --------------------------------------------------------------------------
relay_reset "$STATS"
secs=$(curl -sf -o /dev/null -w '%{time_total}' "$url/big.bin")
err=$(rate_err "$big_bytes" "$secs")
check "download ${SIZE_MIB} MiB at the link rate" "$(within "$err" 0 "$TOLERANCE")" \
  "${secs}s = $(mbit "$big_bytes" "$secs") Mbit/s (error $(awk -v e="$err" 'BEGIN{printf "%.1f", e*100}') %)"
down=$(relay_field "$STATS" down_bytes)
up=$(relay_field "$STATS" up_bytes)
conns=$(relay_field "$STATS" connections)
check "stats count the download" "$([[ $down -ge $big_bytes && $down -lt $((big_bytes + 4096)) && $up -gt 0 && $up -lt 4096 && $conns == 1 ]] && echo 1 || echo 0)" \
  "down $down, up $up, connections $conns"

t0=$(now)
curls=()
for _ in 1 2; do
  curl -sf -o /dev/null "$url/half.bin" &
  curls+=($!)
done
wait "${curls[@]}"
secs=$(since "$t0")
err=$(rate_err "$((2 * half_bytes))" "$secs")
check "2 parallel downloads share the link" "$(within "$err" 0 "$TOLERANCE")" \
  "2 x $((SIZE_MIB / 2)) MiB in ${secs}s = $(mbit "$((2 * half_bytes))" "$secs") Mbit/s in all"

# Connections end when their clients go: politely (curl above), with a reset in
# the middle of a transfer, or at once after a request (so the answer draws a
# reset from the client's kernel, as TLS clients closing with close_notify do).
"$PY" -c '
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
s.close()
s = socket.create_connection((host, int(port)))
s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
got = 0
while got < (1 << 20):
    got += len(s.recv(1 << 16))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
' "$RELAY_ADDR"
active=
for _ in $(seq 8); do
  active=$(relay_field "$STATS" active)
  [[ $active == 0 ]] && break
done
check "connections close when clients go" "$([[ $active == 0 ]] && echo 1 || echo 0)" "$active still open"
check "no errors in the relay's log" "$(grep -q Traceback "$STATS.log" && echo 0 || echo 1)" "$STATS.log"

relay_reset "$STATS"
down=$(relay_field "$STATS" down_bytes)
check "SIGUSR1 resets the counters" "$([[ $down == 0 && $(relay_field "$STATS" connections) == 0 ]] && echo 1 || echo 0)" \
  "down $down after reset"

# Upload through a second relay in front of the sink; the sink's answer after our
# EOF shows half-close passes through.
relay_stop
relay_start 127.0.0.1:0 "127.0.0.1:$sink_port" "$STATS" --rtt-ms "$RTT_MS" --rate-mbit "$RATE_MBIT"
read -r got secs < <("$PY" -c '
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
block = open(sys.argv[3], "rb").read(1 << 20)
t0 = time.monotonic()
s = socket.create_connection((host, int(port)))
sent = 0
while sent < n:
    sent += s.send(block[: min(len(block), n - sent)])
s.shutdown(socket.SHUT_WR)
reply = s.makefile().readline().strip()
print(reply or -1, "%.3f" % (time.monotonic() - t0))
' "$RELAY_ADDR" "$half_bytes" "$WORK/half.bin")
check "half-close: the sink answers after EOF" "$([[ $got == "$half_bytes" ]] && echo 1 || echo 0)" "sink got $got bytes"
err=$(rate_err "$half_bytes" "$secs")
check "upload $((SIZE_MIB / 2)) MiB at the link rate" "$(within "$err" 0 "$TOLERANCE")" \
  "${secs}s = $(mbit "$half_bytes" "$secs") Mbit/s (error $(awk -v e="$err" 'BEGIN{printf "%.1f", e*100}') %)"
up=$(relay_field "$STATS" up_bytes)
check "stats count the upload" "$([[ $up == "$half_bytes" ]] && echo 1 || echo 0)" "up $up"

# --- shutdown ------------------------------------------------------------------
t0=$(now)
kill -TERM "$RELAY_PID"
set +e
wait "$RELAY_PID"
rc=$?
set -e
RELAY_PID=
secs=$(since "$t0")
check "SIGTERM: exit 0 within 2 s" "$([[ $rc == 0 ]] && within "$secs" 0 2 || echo 0)" "status $rc after ${secs}s"
"$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$STATS" 2>/dev/null && ok=1 || ok=0
check "stats file is valid JSON at exit" "$ok" "$STATS"

check "no errors in the relay's log at the end" "$(grep -q Traceback "$STATS.log" && echo 0 || echo 1)" "$STATS.log"

if ((failures)); then
  echo "slow-relay: $failures check(s) failed (relay log: $STATS.log)"
  exit 1
fi
echo "slow-relay: all checks passed"
