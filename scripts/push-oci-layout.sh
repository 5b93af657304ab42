#!/usr/bin/env bash
# Push an OCI image layout to a registry: a thin wrapper over
#   skopeo copy --all --preserve-digests oci:SRC docker://DEST
# that knows the testenv topology (see testenv.sh):
#   127.0.0.1:15000 / :15002 (and any localhost:PORT other than 15443) are plain
#   HTTP, so TLS verification is turned off; 127.0.0.1:15443 is HTTPS with the
#   testenv CA, whose cert dir and auth.json are used unless given explicitly.
#
# Usage: push-oci-layout.sh SRC_OCI_LAYOUT_DIR[:TAG] DEST_REF
#            [--creds U:T] [--cert-dir DIR] [--format oci|v2s2] [-- SKOPEO_ARGS...]
# DEST_REF is host:port/name[:tag|@digest], with or without docker://.
set -euo pipefail

die() {
  echo "push-oci-layout: $*" >&2
  exit 1
}
usage() { die "usage: $0 SRC_OCI_LAYOUT_DIR[:TAG] DEST_REF [--creds U:T] [--cert-dir DIR] [--format oci|v2s2] [-- SKOPEO_ARGS...]"; }

STATE=${LAZYIMG_TESTENV:-/tmp/lazyimg-testenv}
UPSTREAM=127.0.0.1:15443

[[ $# -ge 2 ]] || usage
SRC=$1
DEST=${2#docker://}
shift 2
CREDS="" CERT_DIR="" FORMAT=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --creds) CREDS=${2:?--creds needs U:T}; shift 2 ;;
    --cert-dir) CERT_DIR=${2:?--cert-dir needs DIR}; shift 2 ;;
    --format) FORMAT=${2:?--format needs oci or v2s2}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage ;;
  esac
done
[[ -z $FORMAT || $FORMAT == oci || $FORMAT == v2s2 ]] || die "--format must be oci or v2s2"

if ! command -v skopeo >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null
fi

# SRC may carry :TAG; a colon followed by a path part belongs to the path.
LAYOUT=$SRC TAG=
if [[ $SRC == *:* && ${SRC##*:} != */* ]]; then
  LAYOUT=${SRC%:*}
  TAG=${SRC##*:}
fi
[[ -f $LAYOUT/oci-layout ]] || die "$LAYOUT is not an OCI image layout"

HOSTPORT=${DEST%%/*}
[[ $DEST == */* ]] || die "DEST_REF must be host:port/name[:tag]"

args=(copy --all)
# --preserve-digests refuses a manifest conversion, so only without v2s2.
# Converting OCI gzip layers to v2s2 does not recompress them either: layer
# digests stay, only the manifest and its digest change.
if [[ $FORMAT == v2s2 ]]; then
  args+=(--format v2s2)
else
  args+=(--preserve-digests)
  [[ -n $FORMAT ]] && args+=(--format "$FORMAT")
fi

if [[ $HOSTPORT == "$UPSTREAM" || $HOSTPORT == localhost:15443 ]]; then
  [[ -n $CERT_DIR ]] || CERT_DIR=$STATE/certs.d/$UPSTREAM
  if [[ -z $CREDS && -f $STATE/auth.json ]]; then
    args+=(--dest-authfile "$STATE/auth.json")
  fi
elif [[ $HOSTPORT == 127.0.0.1:* || $HOSTPORT == localhost:* ]] && [[ -z $CERT_DIR ]]; then
  args+=(--dest-tls-verify=false)
fi
[[ -n $CERT_DIR ]] && args+=(--dest-cert-dir "$CERT_DIR")
[[ -n $CREDS ]] && args+=(--dest-creds "$CREDS")

exec skopeo "${args[@]}" "${EXTRA[@]}" "oci:$LAYOUT${TAG:+:$TAG}" "docker://$DEST"
