#!/usr/bin/env bash
# Build a >= 1 GiB image whose command reads only a few KiB, and push it to the
# testenv's HTTPS upstream: the image of the lazy-loading benchmark
# (scripts/bench-lazy.sh). It stands for a CUDA application image: a small OS, a
# gigabyte of libraries, and a job that touches little of them at start-up.
#
# Layers (gzip, standard OCI, every tar made by GNU tar):
#   1-3. Debian 12 minbase from scripts/build-debian-image.sh (reusing its cache);
#   4.   /usr/local/cuda/lib64/libcublasLt.so.11 (448 MiB), libcublas.so.11 (160 MiB);
#   5.   /usr/local/cuda/lib64/libcudnn_cnn_infer.so.8 (512 MiB),
#        libcudnn_ops_infer.so.8 (200 MiB);
#   6.   /usr/local/bin/hello: a shell script printing /etc/os-release (a few KiB).
# Config: Cmd ["/usr/local/bin/hello"].
#
# The libraries are deterministic pseudo-random data (seeded by file name) mixed
# like machine code and tables: in each 4 MiB, 3 MiB random, 768 KiB over a
# 16-letter alphabet (gzip gets it to ~57 %) and 256 KiB of zeros (padding), so
# gzip leaves ~86 % and the blobs total ~1.15 GiB. The script checks >= 1 GiB.
#
# The built layout is cached in ${LAZYIMG_CACHE_BIG:-/var/tmp/lazyimg-big} (rebuilt
# only when this script's BUILD_VERSION changes), and pushed only when the
# registry does not already hold the same manifest digest under REF.
#
# Usage: build-big-image.sh [--no-push] [REF]   (as root; REF defaults to
#        $LAZYIMG_TEST_UPSTREAM/testuser/big:1, i.e. 127.0.0.1:15443/testuser/big:1)
# Prints on stdout, one per line: ref=REF (empty with --no-push), digest=sha256:...
# (manifest), config=sha256:... (podman's image ID), blob_bytes=N (layers + config),
# layer_bytes=N, layers=N, layout=DIR:TAG.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_VERSION=1 # bump when the image's content or layout changes
CACHE=${LAZYIMG_CACHE_BIG:-/var/tmp/lazyimg-big}
TAG=1
MIN_BLOB_BYTES=$((1024 * 1024 * 1024))
MTIME=2024-01-01T00:00:00Z # fixed, so the tars (and diff IDs) are reproducible
LIB=usr/local/cuda/lib64

die() {
  echo "build-big-image: $*" >&2
  exit 1
}
log() { echo "build-big-image: $*" >&2; }

push=1
ref=
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-push) push= ; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ; exit 0 ;;
    -*) die "usage: $0 [--no-push] [REF]" ;;
    *) [[ -z $ref ]] || die "usage: $0 [--no-push] [REF]"; ref=$1; shift ;;
  esac
done
[[ $(id -u) -eq 0 ]] || die "run me as root (build-debian-image.sh needs debootstrap)"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need umoci:umoci skopeo:skopeo tar:tar python3:python3 flock:util-linux sha256sum:coreutils

mkdir -p "$CACHE"
exec 8>"$CACHE/lock"
flock 8 # one builder at a time; the others find the cached layout
LAYOUT=$CACHE/oci
STAMP=$CACHE/built

# --- 1. build (once) -----------------------------------------------------------------

if [[ -f $LAYOUT/oci-layout && -f $STAMP && $(<"$STAMP") == "$BUILD_VERSION" ]]; then
  log "using cached $LAYOUT:$TAG"
else
  T0=$(now)
  rm -rf "$LAYOUT" "$STAMP" "$CACHE/work"
  WORK=$CACHE/work
  mkdir -p "$WORK"
  trap 'rm -rf "$WORK"' EXIT
  log "building the Debian base (scripts/build-debian-image.sh)"
  bash scripts/build-debian-image.sh "$WORK/oci" "$TAG" >&2

  # FILE MIB: the pseudo-random library contents described above.
  gen_lib() { "$(system_python)" scripts/gen-library-data.py "$1" "$2"; }
  layer_tar() { # DIR OUT.tar PATH...: just those paths (no parent dirs, which would
    # override layer 1's directory metadata), root-owned, fixed mtime
    local dir=$1 out=$2
    shift 2
    tar -C "$dir" --owner=0 --group=0 --numeric-owner --mtime="$MTIME" --no-recursion \
      -cf "$out" "$@"
  }
  add_layer() { # TAR WHAT: `umoci raw add-layer` gzips it; never `umoci insert`,
    # which writes truncated tars (no final padding or end-of-archive blocks)
    umoci raw add-layer --image "$WORK/oci:$TAG" --history.created_by "lazyimg bench: $2" "$1"
    rm -f "$1"
  }
  libs_layer() { # NAME:MIB...: one layer with these libraries
    local root=$WORK/root spec names=() dirs=()
    rm -rf "$root"
    mkdir -p "$root/$LIB"
    chmod 0755 "$root/usr/local/cuda" "$root/$LIB"
    for spec in "$@"; do
      gen_lib "$root/$LIB/${spec%%:*}" "${spec##*:}"
      chmod 0644 "$root/$LIB/${spec%%:*}"
      names+=("$LIB/${spec%%:*}")
    done
    # The directories go into the first libraries layer only.
    if [[ ! -e $WORK/have-dirs ]]; then
      dirs=(usr/local/cuda "$LIB")
      touch "$WORK/have-dirs"
    fi
    layer_tar "$root" "$WORK/layer.tar" "${dirs[@]}" "${names[@]}"
    rm -rf "$root"
    add_layer "$WORK/layer.tar" "add ${names[*]##*/}"
  }
  log "generating and compressing 1320 MiB of libraries in 2 layers (a few minutes)"
  libs_layer libcublasLt.so.11:448 libcublas.so.11:160
  libs_layer libcudnn_cnn_infer.so.8:512 libcudnn_ops_infer.so.8:200

  mkdir -p "$WORK/root/usr/local/bin"
  cat >"$WORK/root/usr/local/bin/hello" <<'EOF'
#!/bin/sh
# The benchmark job: reads a few KiB of a >= 1 GiB image, as a job's start-up does.
echo "hello from the big image"
cat /etc/os-release
EOF
  chmod 0755 "$WORK/root/usr/local/bin/hello"
  layer_tar "$WORK/root" "$WORK/layer.tar" usr/local/bin/hello
  add_layer "$WORK/layer.tar" "add /usr/local/bin/hello"

  umoci config --image "$WORK/oci:$TAG" --config.cmd /usr/local/bin/hello --author lazyimg
  umoci gc --layout "$WORK/oci"
  mv "$WORK/oci" "$LAYOUT"
  echo "$BUILD_VERSION" >"$STAMP"
  rm -rf "$WORK"
  trap - EXIT
  log "built $LAYOUT:$TAG in $(since "$T0")s"
fi

# --- 2. what it is -----------------------------------------------------------------

# The tag's manifest digest, and the sizes of its blobs, from the layout itself.
read -r digest config layer_bytes config_bytes nlayers _ < <("$(system_python)" scripts/layout-info.py "$LAYOUT" "$TAG")
blob_bytes=$((layer_bytes + config_bytes))
((blob_bytes >= MIN_BLOB_BYTES)) || die "blobs total $blob_bytes bytes, less than 1 GiB"
log "$LAYOUT:$TAG: $nlayers gzip layers, $blob_bytes blob bytes ($(awk -v b="$blob_bytes" 'BEGIN { printf "%.2f", b / 2^30 }') GiB), manifest $digest"

# --- 3. push (unless the registry has it) --------------------------------------------

if [[ -n $push ]]; then
  bash scripts/testenv.sh up >/dev/null
  eval "$(bash scripts/testenv.sh env)"
  ref=${ref:-$LAZYIMG_TEST_UPSTREAM/testuser/big:1}
  remote_args=()
  if [[ ${ref%%/*} == "$LAZYIMG_TEST_UPSTREAM" ]]; then
    remote_args=(--cert-dir "$LAZYIMG_TEST_CERT_DIR" --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN")
  else
    remote_args=(--tls-verify=false)
  fi
  remote=$(skopeo inspect --raw "${remote_args[@]}" "docker://$ref" 2>/dev/null | sha256sum | awk '{print "sha256:" $1}') || true
  if [[ $remote == "$digest" ]]; then
    log "$ref already holds $digest: not pushing"
  else
    log "pushing to $ref"
    T1=$(now)
    if [[ ${ref%%/*} == "$LAZYIMG_TEST_UPSTREAM" ]]; then
      bash scripts/push-oci-layout.sh "$LAYOUT:$TAG" "$ref" \
        --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" >&2
    else
      bash scripts/push-oci-layout.sh "$LAYOUT:$TAG" "$ref" >&2
    fi
    remote=$(skopeo inspect --raw "${remote_args[@]}" "docker://$ref" | sha256sum | awk '{print "sha256:" $1}')
    [[ $remote == "$digest" ]] || die "$ref has digest $remote after the push, not $digest"
    log "pushed in $(since "$T1")s"
  fi
fi

printf 'ref=%s\ndigest=%s\nconfig=%s\nblob_bytes=%s\nlayer_bytes=%s\nlayers=%s\nlayout=%s\n' \
  "${ref:-}" "$digest" "$config" "$blob_bytes" "$layer_bytes" "$nlayers" "$LAYOUT:$TAG"
