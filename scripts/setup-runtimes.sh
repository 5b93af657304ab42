#!/usr/bin/env bash
# Prepare this host for running lazyimg images with container runtimes.
#
#   * installs (only when missing) podman, runc, charliecloud-runtime (ch-run),
#     fuse3, uidmap, debootstrap, umoci, skopeo, squashfuse, squashfs-tools, attr,
#     nginx-light (the blob-range cache tests; its service is not started),
#     containerd (1.6.20; the snapshotter tests start their own, never the
#     service) and stargz-snapshotter (only its `ctr-remote` client),
#     man-db and groff-base (the generated man pages must render);
#   * writes $STATE/containers.conf for this host: runc (crun fails on hybrid
#     cgroup hosts: "cgroups in hybrid mode not supported") and no default
#     ulimits (runc cannot setrlimit them inside some sandboxes);
#   * creates the unprivileged test user lazyimg-test (home dir, subuid/subgid
#     ranges so rootless podman could work) if missing.
#
# Apptainer is not packaged for Debian 12: lazyimg builds its command line, but
# it is not installed (nor tested) here.
#
# Usage: setup-runtimes.sh        (as root)
# Prints `export CONTAINERS_CONF=...` on stdout; progress goes to stderr.
# Idempotent, and safe to run concurrently (one run at a time, via flock).
set -euo pipefail

STATE=${LAZYIMG_TESTENV:-/tmp/lazyimg-testenv}
TEST_USER=lazyimg-test
CONF=$STATE/containers.conf

die() {
  echo "setup-runtimes: $*" >&2
  exit 1
}
log() { echo "setup-runtimes: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "run me as root (installs packages, creates a user)"

mkdir -p "$STATE"
exec 9>"$STATE/setup-runtimes.lock"
flock 9

# --- packages ------------------------------------------------------------------

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need podman:podman runc:runc ch-run:charliecloud-runtime fusermount3:fuse3 newuidmap:uidmap \
  debootstrap:debootstrap umoci:umoci skopeo:skopeo squashfuse:squashfuse \
  mksquashfs:squashfs-tools getfattr:attr nginx:nginx-light containerd:containerd \
  ctr-remote:stargz-snapshotter man:man-db groff:groff-base
for c in podman runc ch-run newuidmap debootstrap umoci skopeo squashfuse mksquashfs getfattr fusermount3 nginx \
  containerd ctr ctr-remote man groff; do
  command -v "$c" >/dev/null 2>&1 || die "$c is still missing after installing packages"
done

# --- containers.conf ------------------------------------------------------------

tmp=$(mktemp "$CONF.XXXXXX")
cat >"$tmp" <<'EOF'
# Written by lazyimg scripts/setup-runtimes.sh for this host.
[containers]
# runc fails on setrlimit for podman's default nofile/nproc ulimits here.
default_ulimits = []

[engine]
# crun: "cgroups in hybrid mode not supported" on this host.
runtime = "runc"
EOF
chmod 0644 "$tmp"
if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
  rm -f "$tmp"
else
  mv -f "$tmp" "$CONF"
  log "wrote $CONF"
fi
got=$(CONTAINERS_CONF=$CONF podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null) ||
  die "podman info fails with CONTAINERS_CONF=$CONF"
[[ $got == runc ]] || die "podman ignores [engine] runtime in $CONF (uses $got)"

# --- unprivileged test user -----------------------------------------------------------

if ! id -u "$TEST_USER" >/dev/null 2>&1; then
  log "creating user $TEST_USER"
  useradd --create-home --shell /bin/bash --user-group "$TEST_USER"
fi
home=$(getent passwd "$TEST_USER" | cut -d: -f6)
[[ -d $home ]] || install -d -m 0750 -o "$TEST_USER" -g "$TEST_USER" "$home"

# useradd allocates subordinate ids itself on Debian 12 (SUB_UID_* in login.defs),
# but not for users made by other means: give them a free 65536 range if missing.
# Prints the first id after every range already in FILE (at least 100000).
next_free_sub() {
  awk -F: 'BEGIN { n = 100000 } NF == 3 && $2 + $3 > n { n = $2 + $3 } END { print n }' "$1" 2>/dev/null ||
    echo 100000
}
touch /etc/subuid /etc/subgid
if ! grep -q "^$TEST_USER:" /etc/subuid; then
  start=$(next_free_sub /etc/subuid)
  usermod --add-subuids "$start-$((start + 65535))" "$TEST_USER"
  log "gave $TEST_USER subuids $start-$((start + 65535))"
fi
if ! grep -q "^$TEST_USER:" /etc/subgid; then
  start=$(next_free_sub /etc/subgid)
  usermod --add-subgids "$start-$((start + 65535))" "$TEST_USER"
  log "gave $TEST_USER subgids $start-$((start + 65535))"
fi

# Unprivileged FUSE mounts open /dev/fuse themselves. Debian's udev makes it
# 0666; containers without udev often leave it 0600, so restore the stock mode.
if [[ -c /dev/fuse && $(stat -c %a /dev/fuse) != 666 ]]; then
  log "making /dev/fuse 0666, as Debian's udev rules do"
  chmod 0666 /dev/fuse
fi

echo "export CONTAINERS_CONF=$CONF"
