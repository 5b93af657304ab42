#!/usr/bin/env bash
# Build a real Debian 12 (bookworm, minbase) image as an OCI image layout, with
# debootstrap + umoci (no docker). The debootstrapped root filesystem is cached
# as a tarball, so only the first run downloads packages (about a minute);
# later runs take seconds.
#
# Usage: build-debian-image.sh OUT_OCI_LAYOUT_DIR TAG   (as root)
#
# Result OUT:TAG, three gzip layers:
#   1. the debootstrap --variant=minbase bookworm root filesystem;
#   2. /etc/lazyimg-test containing "lazyimg debian test image" (mode 0644);
#   3. a whiteout deleting /usr/share/doc/debconf.
# Config: Cmd ["/bin/bash"], Env PATH=<the usual>, LAZYIMG_IMAGE_ENV=from-image,
# WorkingDir /.
#
# Environment:
#   LAZYIMG_CACHE_DEBIAN   cache directory (default /var/tmp/lazyimg-debian)
#   LAZYIMG_DEBIAN_MIRROR  mirror URL (default: the bookworm mirror configured
#                          for apt on this host, else http://deb.debian.org/debian)
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
CACHE=${LAZYIMG_CACHE_DEBIAN:-/var/tmp/lazyimg-debian}
MARKER_CONTENT="lazyimg debian test image"
WHITEOUT=/usr/share/doc/debconf
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
  echo "build-debian-image: $*" >&2
  exit 1
}
log() { echo "build-debian-image: $*" >&2; }

[[ $# -eq 2 ]] || die "usage: $0 OUT_OCI_LAYOUT_DIR TAG"
OUT=$1
TAG=$2
[[ $(id -u) -eq 0 ]] || die "run me as root (debootstrap needs it)"

T0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need debootstrap:debootstrap umoci:umoci tar:tar flock:util-linux \
  /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring

# The bookworm mirror apt uses here: deb822 *.sources stanzas, then one-line lists.
configured_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
          if ($i ~ /^Enabled:[ \t]*no/) { ok = 0; break }
        }
        if (ok && uris != "") { print uris; exit }
      }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v suite="$SUITE" '$1 == "deb" {
        i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' || true
}
MIRROR=${LAZYIMG_DEBIAN_MIRROR:-$(configured_mirror | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ARCH=$(dpkg --print-architecture)
ROOTFS_TAR=$CACHE/$SUITE-$VARIANT-$ARCH.tar

# --- 1. the cached debootstrap root filesystem -------------------------------------

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9 # one builder at a time; the others then find the tarball
if [[ ! -s $ROOTFS_TAR ]]; then
  log "debootstrap --variant=$VARIANT $SUITE from $MIRROR (first run only)"
  BUILD=$(mktemp -d "$CACHE/build.XXXXXX")
  cleanup_build() {
    # debootstrap mounts proc/sys inside the target; never leave them behind.
    local m
    awk -v p="$BUILD/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$BUILD"
  }
  trap cleanup_build EXIT
  T1=$EPOCHREALTIME
  if ! debootstrap --variant="$VARIANT" --arch="$ARCH" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$BUILD/root" "$MIRROR" >"$BUILD/debootstrap.log" 2>&1; then
    tail -n 30 "$BUILD/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  R=$BUILD/root
  # Make it look like a container image rather than a copy of this host:
  # no host name/resolver/apt lists/caches, empty /dev, /proc, /sys, /run, /tmp.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
  : >"$R/etc/resolv.conf"
  rm -f "$R/etc/hostname" "$R"/var/cache/apt/*.bin "$R"/var/cache/debconf/*-old \
    "$R"/var/log/bootstrap.log
  find "$R/var/lib/apt/lists" -mindepth 1 -maxdepth 1 ! -name partial ! -name lock -exec rm -rf {} +
  for d in dev proc sys run tmp; do
    find "$R/$d" -xdev -mindepth 1 -delete 2>/dev/null || true
  done
  chmod 1777 "$R/tmp"
  chmod 0644 "$R/etc/hosts" "$R/etc/resolv.conf"
  # Member names without a "./" prefix, as docker/buildah write them.
  mapfile -t top < <(cd "$R" && LC_ALL=C ls -A)
  tar -C "$R" --numeric-owner --sort=name -cf "$BUILD/rootfs.tar" -- "${top[@]}"
  mv -f "$BUILD/rootfs.tar" "$ROOTFS_TAR"
  cleanup_build
  trap - EXIT
  log "debootstrap + tarball took $(elapsed "$T1") -> $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
else
  log "using cached $ROOTFS_TAR"
fi
flock -u 9

# --- 2. the OCI image layout -------------------------------------------------------

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
T2=$EPOCHREALTIME

if [[ ! -f $OUT/oci-layout ]]; then
  [[ ! -e $OUT || -z $(ls -A "$OUT") ]] || die "$OUT exists and is not an OCI layout"
  umoci init --layout "$OUT"
fi
if umoci ls --layout "$OUT" | grep -qxF -- "$TAG"; then
  umoci rm --image "$OUT:$TAG"
fi
umoci new --image "$OUT:$TAG"

# Layer 1: the root filesystem, verbatim (umoci gzips it).
umoci raw add-layer --image "$OUT:$TAG" \
  --history.created_by "debootstrap --variant=$VARIANT $SUITE $MIRROR" "$ROOTFS_TAR"

# Layers 2 and 3 are tars made by GNU tar and added verbatim: `umoci insert`
# (0.4.7) writes a file's tar without its final padding and end-of-archive
# blocks, a truncated tar that strict readers (lazyimg, GNU tar) rightly refuse.
layer_tar() { # DIR OUT.tar PATH...: just those paths of DIR (no parent dirs, which
  # would override layer 1's directory metadata), owned by root
  local dir=$1 out=$2
  shift 2
  tar -C "$dir" --owner=0 --group=0 --numeric-owner --no-recursion -cf "$out" "$@"
}

# Layer 2: a marker file with known content.
mkdir -p "$WORK/layer2/etc"
printf '%s\n' "$MARKER_CONTENT" >"$WORK/layer2/etc/lazyimg-test"
chmod 0644 "$WORK/layer2/etc/lazyimg-test"
layer_tar "$WORK/layer2" "$WORK/layer2.tar" etc/lazyimg-test
umoci raw add-layer --image "$OUT:$TAG" --history.created_by "lazyimg: add /etc/lazyimg-test" \
  "$WORK/layer2.tar"

# Layer 3: a whiteout removing a directory of layer 1.
tar -tf "$ROOTFS_TAR" "${WHITEOUT#/}" >/dev/null 2>&1 || die "$WHITEOUT is not in the root filesystem"
mkdir -p "$WORK/layer3/$(dirname "${WHITEOUT#/}")"
whiteout_entry="$(dirname "${WHITEOUT#/}")/.wh.$(basename "$WHITEOUT")"
touch "$WORK/layer3/$whiteout_entry"
layer_tar "$WORK/layer3" "$WORK/layer3.tar" "$whiteout_entry"
umoci raw add-layer --image "$OUT:$TAG" --history.created_by "lazyimg: rm -r $WHITEOUT" \
  "$WORK/layer3.tar"

umoci config --image "$OUT:$TAG" \
  --config.cmd /bin/bash \
  --config.env "PATH=$IMAGE_PATH" \
  --config.env LAZYIMG_IMAGE_ENV=from-image \
  --config.workingdir / \
  --author lazyimg
umoci gc --layout "$OUT"

log "OCI layout took $(elapsed "$T2")"

# --- 3. check it with an independent reader ---------------------------------------

if command -v skopeo >/dev/null 2>&1; then
  layers=$(skopeo inspect --format '{{len .Layers}}' "oci:$OUT:$TAG") ||
    die "skopeo cannot read oci:$OUT:$TAG"
  [[ $layers == 3 ]] || die "expected 3 layers in oci:$OUT:$TAG, skopeo sees $layers"
else
  log "skopeo not installed: skipping the check"
fi
log "built $OUT:$TAG in $(elapsed "$T0")"
