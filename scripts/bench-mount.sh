#!/usr/bin/env bash
# Whole-system benchmark of `lazyimg mount` against what users would otherwise do,
# same image, same run:
#   1. mount + first `cat /etc/os-release` of a cached Debian image   vs  umoci unpack
#   2. `find MNT -type f | xargs stat` over the whole tree             vs  squashfuse
#   3. sequential read of a 300 MiB file, cold (first) and warm        vs  squashfuse
# The image is Debian 12 minbase (debootstrap) plus a layer with a 300 MiB file.
#
# Usage: scripts/bench-mount.sh [RUNS]     (as root; RUNS defaults to 3, medians shown)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-3}
WORK=${LAZYIMG_BENCH_DIR:-/var/tmp/lazyimg-bench}

log() { echo "bench-mount: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
unmount() { fusermount3 -u "$1" 2>/dev/null || true; }

eval "$(bash scripts/setup-runtimes.sh)"
bench_setup mksquashfs squashfuse umoci

mkdir -p "$WORK"
for m in mnt sq; do unmount "$WORK/$m"; done
rm -rf "$WORK/oci" "$WORK/cache" "$WORK/bundle" "$WORK/big" "$WORK/img.sqfs"
mkdir -p "$WORK/mnt" "$WORK/sq" "$WORK/big/opt"

log "building the image (Debian 12 minbase + 300 MiB file)"
bash scripts/build-debian-image.sh "$WORK/oci" 12 >/dev/null 2>&1
head -c 300M /dev/urandom >"$WORK/big/opt/big.bin"
tar -C "$WORK/big" --owner=0 --group=0 --numeric-owner -cf "$WORK/big.tar" opt/big.bin
umoci raw add-layer --image "$WORK/oci:12" "$WORK/big.tar"
rm -f "$WORK/big.tar"
bash scripts/push-oci-layout.sh "$WORK/oci:12" "$LAZYIMG_TEST_UPSTREAM/bench/debian:big" \
  --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" >/dev/null 2>&1

cat >"$WORK/config.toml" <<TOML
cache_dir = "$WORK/cache"
[[registry]]
prefix = "$LAZYIMG_TEST_UPSTREAM"
ca_file = "$LAZYIMG_TEST_CA"
TOML
export LAZYIMG_CONFIG=$WORK/config.toml REGISTRY_AUTH_FILE=$LAZYIMG_TEST_AUTH_FILE
image=$LAZYIMG_TEST_UPSTREAM/bench/debian:big
t0=$(now)
"$LAZYIMG_BIN" -q pull "$image" >/dev/null
pull=$(since "$t0")

# 1. mount + first read. `lazyimg pull` already unpacked and indexed the layers, so
#    the first mount and later ones do the same work: open the cached tree.
mount_once() {
  local t0
  t0=$(now)
  "$LAZYIMG_BIN" -q mount --pull never "$image" "$WORK/mnt"
  cat "$WORK/mnt/etc/os-release" >/dev/null
  since "$t0"
  unmount "$WORK/mnt"
}
first_mount=$(mount_once)
warm_mount=$(for _ in $(seq "$RUNS"); do mount_once; done | median)
unpack=$(for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/bundle"
  t0=$(now)
  umoci unpack --image "$WORK/oci:12" "$WORK/bundle" >/dev/null
  since "$t0"
done | median)

# The same tree under squashfuse, from umoci's unpack.
mksquashfs "$WORK/bundle/rootfs" "$WORK/img.sqfs" -noappend -quiet -no-progress >/dev/null

# 2. stat of every file, on a fresh mount each run (no attribute cache carried over).
stat_walk() { # DIR: seconds to stat every file below DIR
  local dir=$1 t0
  t0=$(now)
  find "$dir" -type f -print0 | xargs -0 stat >/dev/null
  since "$t0"
}
mount_lazyimg() { "$LAZYIMG_BIN" -q mount --pull never "$image" "$WORK/mnt"; }
mount_squash() { squashfuse "$WORK/img.sqfs" "$WORK/sq"; }
lz_stat=$(for _ in $(seq "$RUNS"); do mount_lazyimg; stat_walk "$WORK/mnt"; unmount "$WORK/mnt"; done | median)
sq_stat=$(for _ in $(seq "$RUNS"); do mount_squash; stat_walk "$WORK/sq"; unmount "$WORK/sq"; done | median)
files=$(find "$WORK/bundle/rootfs" -type f | wc -l)

# 3. sequential read of the 300 MiB file: first read on a fresh mount, then again.
read_mibs() { # FILE -> MiB/s, as dd times it (warm reads take ~50 ms: spawning a
  # timer around dd would be a large part of that)
  dd if="$1" of=/dev/null bs=1M 2>&1 | awk '/copied/ {printf "%.0f", $1 / 1048576 / $(NF-3)}'
}
warm_mibs() { # FILE -> median MiB/s of 5 reads from the page cache
  for _ in 1 2 3 4 5; do read_mibs "$1"; echo; done | median
}
lz_cold=() lz_warm=() sq_cold=() sq_warm=()
for _ in $(seq "$RUNS"); do
  mount_lazyimg
  lz_cold+=("$(read_mibs "$WORK/mnt/opt/big.bin")")
  lz_warm+=("$(warm_mibs "$WORK/mnt/opt/big.bin")")
  unmount "$WORK/mnt"
  mount_squash
  sq_cold+=("$(read_mibs "$WORK/sq/opt/big.bin")")
  sq_warm+=("$(warm_mibs "$WORK/sq/opt/big.bin")")
  unmount "$WORK/sq"
done
med() { printf '%s\n' "$@" | median; }

cat <<REPORT
lazyimg mount benchmark ($RUNS runs each, medians; image: Debian 12 minbase + 300 MiB file, $files files)
  pull into the cache (informational)        ${pull}s
  1. mount + first cat, first mount           ${first_mount}s
     mount + first cat, cached tree           ${warm_mount}s
     umoci unpack                             ${unpack}s
     ratio unpack / mount (cached tree)       $(ratio "$unpack" "$warm_mount")x   (goal >= 20x)
     ratio unpack / first mount               $(ratio "$unpack" "$first_mount")x
  2. stat walk, lazyimg                       ${lz_stat}s
     stat walk, squashfuse                    ${sq_stat}s
     ratio squashfuse / lazyimg               $(ratio "$sq_stat" "$lz_stat")x   (goal >= 1)
  3. 300 MiB read, first, lazyimg             $(med "${lz_cold[@]}") MiB/s
     300 MiB read, first, squashfuse          $(med "${sq_cold[@]}") MiB/s
     300 MiB read, again, lazyimg             $(med "${lz_warm[@]}") MiB/s
     300 MiB read, again, squashfuse          $(med "${sq_warm[@]}") MiB/s
     ratio warm lazyimg / squashfuse          $(ratio "$(med "${lz_warm[@]}")" "$(med "${sq_warm[@]}")")x   (goal >= 1)
REPORT
