#!/usr/bin/env bash
# Local registry topology for lazyimg tests and demos, all on 127.0.0.1.
#
#   token     https://127.0.0.1:15001/token  Docker token service (like ghcr.io's)
#   upstream  https://127.0.0.1:15443        private registry with token auth (plays ghcr.io)
#   proxy     http://127.0.0.1:15002         pull-through cache of upstream (site proxy, pull mode)
#   plain     http://127.0.0.1:15000         open registry (site proxy, push mode)
#
# Usage: testenv.sh up | down [--purge] | status | env
# State (certs, configs, data, logs, pids) lives in ${LAZYIMG_TESTENV:-/tmp/lazyimg-testenv}.
set -euo pipefail

STATE=${LAZYIMG_TESTENV:-/tmp/lazyimg-testenv}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOST=127.0.0.1
TOKEN_PORT=15001
UPSTREAM_PORT=15443
PROXY_PORT=15002
PLAIN_PORT=15000
SERVICES=(token upstream proxy plain) # start order: proxy asks upstream for its realm at startup
ISSUER=lazyimg-testenv-token
AUDIENCE=lazyimg-upstream
START_TIMEOUT=30

die() {
  echo "testenv: $*" >&2
  exit 1
}
log() { echo "testenv: $*" >&2; }

# --- installing what is missing (a fresh machine starts bare) ---------------

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


python_bin() {
  # Prefer the system interpreter: version-manager shims may point at nothing.
  if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3; fi
}

# --- per-service facts -------------------------------------------------------

port_of() {
  case $1 in
    token) echo "$TOKEN_PORT" ;;
    upstream) echo "$UPSTREAM_PORT" ;;
    proxy) echo "$PROXY_PORT" ;;
    plain) echo "$PLAIN_PORT" ;;
  esac
}

url_of() {
  case $1 in
    token) echo "https://$HOST:$TOKEN_PORT/token" ;;
    upstream) echo "https://$HOST:$UPSTREAM_PORT/v2/" ;;
    proxy) echo "http://$HOST:$PROXY_PORT/v2/" ;;
    plain) echo "http://$HOST:$PLAIN_PORT/v2/" ;;
  esac
}

# A word of the command line that identifies our process (guards against pid reuse).
marker_of() {
  case $1 in
    token) echo "token-server.py" ;;
    *) echo "$STATE/$1.yml" ;;
  esac
}

pid_of() {
  local f=$STATE/$1.pid pid
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(marker_of "$1")" || return 1
  echo "$pid"
}

# Answering means /v2/ (or /token without credentials) gives 200 or 401.
answers() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$STATE/ca.crt" "$(url_of "$1")" 2>/dev/null) || true
  [[ $code == 200 || $code == 401 ]]
}

service_ok() { pid_of "$1" >/dev/null && answers "$1"; }

# --- certificates and configs ------------------------------------------------

gen_certs() {
  local d=$STATE
  if [[ ! -s $d/ca.crt || ! -s $d/ca.key ]]; then
    log "generating CA"
    rm -f "$d/server.crt" # a new CA invalidates the old server cert
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=lazyimg testenv CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  fi
  if [[ ! -s $d/server.crt || ! -s $d/server.key ]]; then
    log "generating server certificate"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$d/server.key" \
      -out "$d/server.csr" -subj "/CN=localhost" 2>/dev/null
    # Go and rustls ignore the CN: the SAN is what must match 127.0.0.1.
    cat >"$d/server.ext" <<'EOF'
subjectAltName=IP:127.0.0.1,DNS:localhost
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    openssl x509 -req -sha256 -days 3650 -in "$d/server.csr" -CA "$d/ca.crt" \
      -CAkey "$d/ca.key" -CAcreateserial -extfile "$d/server.ext" \
      -out "$d/server.crt" 2>/dev/null
    rm -f "$d/server.csr"
  fi
  if [[ ! -s $d/token.crt || ! -s $d/token.key ]]; then
    log "generating token signing key"
    # Self-signed: the registry trusts it directly as its rootcertbundle.
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$d/token.key" -out "$d/token.crt" -subj "/CN=lazyimg testenv token signer" 2>/dev/null
  fi
  chmod 600 "$d/ca.key" "$d/server.key" "$d/token.key"
  mkdir -p "$d/certs.d/$HOST:$UPSTREAM_PORT"
  cp "$d/ca.crt" "$d/certs.d/$HOST:$UPSTREAM_PORT/ca.crt"
}

# The part of a distribution config the three registries share; the caller
# appends more (an upstream's tls lines continue its http section).
registry_config() { # NAME PORT HTTP_SECRET
  cat <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $STATE/$1-data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $HOST:$2
  secret: $3
EOF
}

write_files() {
  local d=$STATE
  [[ -s $d/users ]] || printf '%s\n' testuser:testtoken:rw reader:readtoken:ro nopkg:nopkgtoken:none >"$d/users"
  chmod 600 "$d/users"
  (
    umask 077
    printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$HOST:$UPSTREAM_PORT" "$(printf 'testuser:testtoken' | base64 -w0)" >"$d/auth.json"
  )
  chmod 600 "$d/auth.json"
  [[ -s $d/http-secret ]] || (umask 077 && openssl rand -hex 32 >"$d/http-secret")
  mkdir -p "$d/upstream-data" "$d/proxy-data" "$d/plain-data"
  local secret
  secret=$(<"$d/http-secret")

  # No http.debug section: the debug server stays off.
  {
    registry_config upstream "$UPSTREAM_PORT" "$secret"
    cat <<EOF
  tls:
    certificate: $d/server.crt
    key: $d/server.key
auth:
  token:
    realm: https://$HOST:$TOKEN_PORT/token
    service: $AUDIENCE
    issuer: $ISSUER
    rootcertbundle: $d/token.crt
EOF
  } >"$d/upstream.yml"

  # distribution 2.8 proxies authenticate upstream with Bearer tokens only.
  {
    registry_config proxy "$PROXY_PORT" "$secret"
    cat <<EOF
proxy:
  remoteurl: https://$HOST:$UPSTREAM_PORT
  username: testuser
  password: testtoken
EOF
  } >"$d/proxy.yml"
  chmod 600 "$d/proxy.yml"

  registry_config plain "$PLAIN_PORT" "$secret" >"$d/plain.yml"
  print_env >"$d/env"
}

print_env() {
  local kv
  for kv in \
    "LAZYIMG_TEST_STATE=$STATE" \
    "LAZYIMG_TEST_UPSTREAM=$HOST:$UPSTREAM_PORT" \
    "LAZYIMG_TEST_UPSTREAM_DATA=$STATE/upstream-data" \
    "LAZYIMG_TEST_UPSTREAM_LOG=$STATE/upstream.log" \
    "LAZYIMG_TEST_CA=$STATE/ca.crt" \
    "LAZYIMG_TEST_CERT_DIR=$STATE/certs.d/$HOST:$UPSTREAM_PORT" \
    "LAZYIMG_TEST_USER=testuser" \
    "LAZYIMG_TEST_TOKEN=testtoken" \
    "LAZYIMG_TEST_AUTH_FILE=$STATE/auth.json" \
    "LAZYIMG_TEST_USERS_FILE=$STATE/users" \
    "LAZYIMG_TEST_TOKEN_REALM=https://$HOST:$TOKEN_PORT/token" \
    "LAZYIMG_TEST_TOKEN_LOG=$STATE/token.log" \
    "LAZYIMG_TEST_PROXY=$HOST:$PROXY_PORT" \
    "LAZYIMG_TEST_PROXY_DATA=$STATE/proxy-data" \
    "LAZYIMG_TEST_PROXY_LOG=$STATE/proxy.log" \
    "LAZYIMG_TEST_PLAIN=$HOST:$PLAIN_PORT" \
    "LAZYIMG_TEST_PLAIN_DATA=$STATE/plain-data" \
    "LAZYIMG_TEST_PLAIN_LOG=$STATE/plain.log"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
}

# --- process control ---------------------------------------------------------

stop_service() {
  local name=$1 pid i
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -e /proc/$pid ]] || break
      sleep 0.1
    done
    if [[ -e /proc/$pid ]]; then
      log "$name (pid $pid) ignored TERM, killing"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$STATE/$name.pid"
}

start_service() {
  local name=$1 port listener
  port=$(port_of "$name")
  listener=$(ss -ltnpH "sport = :$port" 2>/dev/null || true)
  if [[ -n $listener ]]; then
    die "port $port (needed by $name) is already used by another process: $listener"
  fi
  local cmd=()
  case $name in
    token)
      cmd=("$(python_bin)" "$SCRIPT_DIR/token-server.py" --listen "$HOST:$TOKEN_PORT"
        --tls-cert "$STATE/server.crt" --tls-key "$STATE/server.key"
        --sign-key "$STATE/token.key" --sign-cert "$STATE/token.crt"
        --users "$STATE/users" --issuer "$ISSUER" --service "$AUDIENCE")
      ;;
    *) cmd=(docker-registry serve "$STATE/$name.yml") ;;
  esac
  rm -f "$STATE/$name.pid"
  echo "=== $(date -Is) starting $name" >>"$STATE/$name.log"
  # The child writes its own pid and execs, so the pid is right whether or not
  # setsid forks. It closes every fd above 2 first: an inherited lock fd would
  # hold $STATE/lock forever, an inherited pipe would keep a caller waiting.
  # stdio goes to the log for the same reason.
  # shellcheck disable=SC2016 # expanded by the inner bash
  SSL_CERT_FILE=$STATE/ca.crt setsid -f bash -c '
    echo $$ >"$1"; shift
    for f in /proc/$$/fd/*; do
      fd=${f##*/}
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec "$@"' bash "$STATE/$name.pid" "${cmd[@]}" </dev/null >>"$STATE/$name.log" 2>&1
  wait_up "$name"
}

wait_up() {
  local name=$1 deadline=$((SECONDS + START_TIMEOUT)) why="not answering after ${START_TIMEOUT}s"
  while ((SECONDS < deadline)); do
    if answers "$name"; then
      pid_of "$name" >/dev/null && return 0
    fi
    # The process died: no point waiting out the timeout. By existence, not by
    # pid_of: while the child execs, its /proc cmdline can read empty for a moment.
    if [[ -s $STATE/$name.pid ]] && ! kill -0 "$(<"$STATE/$name.pid")" 2>/dev/null; then
      why="process exited"
      break
    fi
    sleep 0.2
  done
  echo "testenv: $name did not come up on $(url_of "$name") ($why); tail of $STATE/$name.log:" >&2
  # Only this attempt's lines: the log is appended to across restarts.
  awk '/^=== .* starting /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' \
    "$STATE/$name.log" | tail -n 25 >&2 || true
  exit 1
}

take_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock -w 120 9 || die "could not lock $STATE/lock within 120s"
}

# --- subcommands -------------------------------------------------------------

cmd_up() {
  need curl:curl openssl:openssl python3:python3 docker-registry:docker-registry \
    flock:util-linux setsid:util-linux ss:iproute2 base64:coreutils
  take_lock
  local s all_ok=1
  for s in "${SERVICES[@]}"; do
    service_ok "$s" || {
      all_ok=
      break
    }
  done
  [[ -n $all_ok ]] && return 0

  # Refuse before starting anything if a foreign process holds one of our ports.
  local listener
  for s in "${SERVICES[@]}"; do
    pid_of "$s" >/dev/null && continue
    listener=$(ss -ltnpH "sport = :$(port_of "$s")" 2>/dev/null || true)
    [[ -z $listener ]] || die "port $(port_of "$s") (needed by $s) is already used by another process: $listener"
  done

  chmod 700 "$STATE"
  gen_certs
  write_files
  local restart=
  for s in "${SERVICES[@]}"; do
    # A (re)started upstream means the proxy must rediscover its realm.
    if [[ -n $restart && $s == proxy ]] || ! service_ok "$s"; then
      stop_service "$s"
      log "starting $s"
      start_service "$s"
      [[ $s == upstream ]] && restart=1
    fi
  done
  log "all services up (state in $STATE)"
}

cmd_down() {
  local purge=
  [[ ${1:-} == --purge ]] && purge=1
  [[ -d $STATE ]] || return 0
  take_lock
  local s
  for s in proxy plain upstream token; do
    stop_service "$s"
  done
  if [[ -n $purge ]]; then
    # Keep the lock file: other callers may be waiting on it.
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name lock -exec rm -rf {} +
    log "stopped and purged $STATE"
  else
    log "stopped (data kept in $STATE)"
  fi
}

cmd_status() {
  local s pid rc=0
  for s in "${SERVICES[@]}"; do
    if pid=$(pid_of "$s") && answers "$s"; then
      printf '%-9s %-34s up (pid %s)\n' "$s" "$(url_of "$s")" "$pid"
    elif pid=$(pid_of "$s"); then
      printf '%-9s %-34s NOT ANSWERING (pid %s)\n' "$s" "$(url_of "$s")" "$pid"
      rc=1
    else
      printf '%-9s %-34s down\n' "$s" "$(url_of "$s")"
      rc=1
    fi
  done
  return "$rc"
}

case ${1:-} in
  up) cmd_up ;;
  down)
    shift
    cmd_down "$@"
    ;;
  status) cmd_status ;;
  env) print_env ;;
  *)
    echo "usage: $0 up | down [--purge] | status | env" >&2
    exit 2
    ;;
esac
