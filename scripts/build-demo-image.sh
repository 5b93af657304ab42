#!/usr/bin/env bash
# Build a tiny real image (busybox + a second layer with /hello.txt) as an OCI
# image layout, without docker: apt-get download + dpkg-deb + umoci.
#
# Usage: build-demo-image.sh OUT_OCI_LAYOUT_DIR TAG
# Result: OUT:TAG, two gzip layers, cmd /bin/sh. Push it with push-oci-layout.sh.
set -euo pipefail

die() {
  echo "build-demo-image: $*" >&2
  exit 1
}

[[ $# -eq 2 ]] || die "usage: $0 OUT_OCI_LAYOUT_DIR TAG"
OUT=$1
TAG=$2

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need umoci:umoci dpkg-deb:dpkg

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# apt-get download needs package lists; a fresh machine may have none yet.
(cd "$WORK" && apt-get download -qq busybox-static 2>/dev/null) || {
  apt-get update -qq
  APT_UPDATED=1
  (cd "$WORK" && apt-get download -qq busybox-static)
}
dpkg-deb -x "$WORK"/busybox-static_*.deb "$WORK/deb"
BB=$WORK/deb/bin/busybox
[[ -x $BB ]] || die "busybox-static did not contain bin/busybox"

# Layout: create if missing; replace the tag if it exists (rebuilds are fine).
if [[ ! -f $OUT/oci-layout ]]; then
  [[ ! -e $OUT || -z $(ls -A "$OUT") ]] || die "$OUT exists and is not an OCI layout"
  umoci init --layout "$OUT"
fi
if umoci ls --layout "$OUT" | grep -qxF -- "$TAG"; then
  umoci rm --image "$OUT:$TAG"
fi
umoci new --image "$OUT:$TAG"

# Layer 1: busybox, its applet symlinks, os-release. Running as root, so a
# plain (not --rootless) unpack keeps ownership as root:root in the layer.
umoci unpack --image "$OUT:$TAG" "$WORK/bundle" >/dev/null
ROOT=$WORK/bundle/rootfs
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev}
chmod 1777 "$ROOT/tmp"
install -m 0755 "$BB" "$ROOT/bin/busybox"
# Equivalent of `busybox --install -s`: one symlink per applet, at its usual path.
if "$BB" --list-full >/dev/null 2>&1; then
  applets=$("$BB" --list-full)
else
  applets=$("$BB" --list | sed 's|^|bin/|')
fi
while read -r path; do
  [[ -n $path && $path != bin/busybox ]] || continue
  mkdir -p "$ROOT/$(dirname "$path")"
  [[ -e $ROOT/$path ]] || ln -s /bin/busybox "$ROOT/$path"
done <<<"$applets"
cat >"$ROOT/etc/os-release" <<'EOF'
NAME="lazyimg demo"
ID=lazyimg-demo
PRETTY_NAME="lazyimg demo (busybox)"
EOF
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
umoci repack --image "$OUT:$TAG" "$WORK/bundle"

# Layer 2: just /hello.txt, so the image has more than one layer. Not with
# `umoci insert`: 0.4.7 writes that layer's tar without its final padding and
# end-of-archive blocks, a truncated tar that strict readers rightly refuse.
rm -rf "$WORK/bundle"
umoci unpack --image "$OUT:$TAG" "$WORK/bundle" >/dev/null
printf 'hello from lazyimg\n' >"$WORK/bundle/rootfs/hello.txt"
chmod 0644 "$WORK/bundle/rootfs/hello.txt"
umoci repack --image "$OUT:$TAG" "$WORK/bundle"

umoci config --image "$OUT:$TAG" --config.cmd /bin/sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci gc --layout "$OUT" # drop the intermediate manifests/configs
echo "built $OUT:$TAG" >&2
