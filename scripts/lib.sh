# shellcheck shell=bash
# Shared by the scripts beside this file (source it): installing Debian packages
# only when what they provide is missing, so a fresh machine needs nothing by hand.

APT_UPDATED=
apt_install() { # PACKAGE...
  if [[ -z $APT_UPDATED ]]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  # No service starts during the install (nginx would take port 80): a
  # policy-rc.d that refuses, unless the host has one of its own.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && own_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || status=$?
  [[ -z $own_policy ]] || rm -f "$policy"
  return "$status"
}

# need PROBE:PACKAGE... installs each PACKAGE whose PROBE (a command, or an
# absolute path) is missing.
need() {
  local pair probe missing=()
  for pair in "$@"; do
    probe=${pair%%:*}
    if [[ $probe == /* ]]; then
      [[ -e $probe ]] && continue
    else
      command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
  fi
}

# Timing helpers for the benchmark scripts.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; } # seconds since $1
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# col N: the median of column N of the lines on stdin (blank lines skipped).
col() { awk -v c="$1" 'NF { print $c }' | median; }
# bench_alternate RUNS FIELDS KIND...: runs the caller's `once KIND` for each
# KIND in turn, RUNS times (every side in the same run), keeping each printed
# row in the associative array `rows` (declare it first) and logging it with
# FIELDS, the names of its columns.
bench_alternate() {
  local runs=$1 fields=$2 run kind line
  shift 2
  for run in $(seq "$runs"); do
    for kind in "$@"; do
      line=$(once "$kind")
      rows[$kind]+="$line"$'\n'
      log "run $run, $kind: $fields: $line"
    done
  done
}
# bench_lazy_and_baseline RUNS FIELDS: bench_alternate with `once lazy` and `once baseline`.
bench_lazy_and_baseline() { bench_alternate "$1" "$2" lazy baseline; }
maximum() { sort -g | tail -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# The mount daemon's pid, from the message `lazyimg mount` prints on stderr:
# "mounted REF at DIR (daemon pid PID, log PATH)". Empty when there is none.
daemon_pid() { sed -n 's/.*(daemon pid \([0-9]*\),.*/\1/p' <<<"$1"; }
# peak_rss_mib PID: the process's peak resident set so far (VmHWM in
# /proc/PID/status), in MiB with one decimal. Read it just before unmounting:
# the figure dies with the process.
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# The common start of the benchmark scripts: the local registries (their addresses
# exported as LAZYIMG_TEST_*), the tools the comparison needs, and a release build
# of lazyimg, whose path goes to $LAZYIMG_BIN. A LAZYIMG_BIN already set to an
# executable is used as it is, without building (e.g. while others compile).
bench_setup() { # TOOL...
  bash scripts/testenv.sh up >/dev/null
  eval "$(bash scripts/testenv.sh env)"
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      echo "$tool is missing (scripts/setup-runtimes.sh installs it)" >&2
      exit 1
    }
  done
  if [[ -n ${LAZYIMG_BIN:-} && -x $LAZYIMG_BIN ]]; then
    echo "using $LAZYIMG_BIN as it is (LAZYIMG_BIN)" >&2
    return 0
  fi
  echo "building lazyimg (release)" >&2
  cargo build --release --locked -q --bin lazyimg
  # shellcheck disable=SC2034 # read by the scripts that source this file
  LAZYIMG_BIN=$(realpath "${CARGO_TARGET_DIR:-target}")/release/lazyimg
}

# Prefer the system interpreter: version-manager shims may point at nothing.
system_python() { if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3; fi; }

# The slow-link relay (scripts/slow-relay.py) for the benchmarks and its test.
# relay_start LISTEN TO STATS [RELAY ARGS...] starts it in the background (its log:
# STATS.log) and returns once it listens, with RELAY_PID and RELAY_ADDR (host:port)
# set; LISTEN may be 127.0.0.1:0 for a free port.
relay_start() {
  local listen=$1 to=$2 stats=$3 out i
  shift 3
  out=$(mktemp)
  "$(system_python)" "$(dirname "${BASH_SOURCE[0]}")/slow-relay.py" --listen "$listen" --to "$to" \
    --stats "$stats" "$@" </dev/null >"$out" 2>>"$stats.log" &
  RELAY_PID=$!
  RELAY_ADDR=
  for ((i = 0; i < 100; i++)); do
    RELAY_ADDR=$(head -n1 "$out")
    [[ -n $RELAY_ADDR ]] && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$out"
  if [[ -z $RELAY_ADDR ]]; then
    echo "slow-relay did not start; tail of $stats.log:" >&2
    tail -n 5 "$stats.log" >&2
    return 1
  fi
}
# relay_field STATS FIELD: a top-level field of the relay's stats, once settled
# (it writes at most every 100 ms after a change).
relay_field() {
  sleep 0.25
  "$(system_python)" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}
# relay_reset STATS: zero the relay's counters (SIGUSR1) and wait until it has.
relay_reset() {
  local before i
  before=$(relay_field "$1" resets)
  kill -USR1 "$RELAY_PID"
  for ((i = 0; i < 50; i++)); do
    (($(relay_field "$1" resets) > before)) && return 0
  done
  echo "slow-relay did not reset its counters" >&2
  return 1
}
relay_stop() {
  [[ -n ${RELAY_PID:-} ]] || return 0
  kill -TERM "$RELAY_PID" 2>/dev/null || true
  wait "$RELAY_PID" 2>/dev/null || true
  RELAY_PID=
}

# bench_big_image WORK: the >= 1 GiB image of scripts/build-big-image.sh on the
# plain registry (the site proxy's role), its lazyimg index pushed (untimed; the
# log in WORK/index.log). Sets BIG_PATH (repository:tag, to be prefixed with the
# registry or relay address) and BIG_BLOB_BYTES (layers + config).
bench_big_image() {
  local work=$1
  BIG_PATH=bench/big:1
  bash scripts/build-big-image.sh "$LAZYIMG_TEST_PLAIN/$BIG_PATH" >"$work/image.env"
  BIG_BLOB_BYTES=$(sed -n 's/^blob_bytes=//p' "$work/image.env")
  printf 'cache_dir = "%s"\n[[registry]]\nprefix = "%s"\ninsecure = true\n' \
    "$work/indexer" "$LAZYIMG_TEST_PLAIN" >"$work/indexer.toml"
  "$LAZYIMG_BIN" --config "$work/indexer.toml" -q index --push "$LAZYIMG_TEST_PLAIN/$BIG_PATH" \
    >"$work/index.log" 2>&1 || { cat "$work/index.log" >&2; return 1; }
}
