#!/usr/bin/env bash
# The main job on a demo image, from nothing, on a Debian 12 machine (as root):
# installs what is needed, builds lazyimg, starts a local ghcr.io look-alike
# (HTTPS + token auth) with a demo image in it, pushes a lazyimg index beside it
# (as seeding does on the site), then mounts it lazily (contents fetched when
# read), shows what crossed the network, and runs it with Charliecloud and Podman
# straight from the mount.
#
# Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Headings in bold, unless NO_COLOR is set non-empty (no-color.org).
if [[ -z ${NO_COLOR:-} ]]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi

command -v cargo >/dev/null || {
  echo "demo.sh: cargo is missing: install a Rust toolchain >= 1.89 (rustup) first" >&2
  exit 1
}

step "Installing packages and starting the local registries"
eval "$(bash scripts/setup-runtimes.sh)"
export CONTAINERS_CONF
bash scripts/testenv.sh up
eval "$(bash scripts/testenv.sh env)"

step "Building lazyimg (release)"
cargo build --release --locked
lazyimg=$(realpath "${CARGO_TARGET_DIR:-target}")/release/lazyimg

step "Pushing a demo image to the ghcr.io look-alike at $LAZYIMG_TEST_UPSTREAM"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash scripts/build-demo-image.sh "$work/layout" 1
bash scripts/push-oci-layout.sh "$work/layout:1" "$LAZYIMG_TEST_UPSTREAM/demo/busybox:1" \
  --creds "$LAZYIMG_TEST_USER:$LAZYIMG_TEST_TOKEN" >/dev/null

# As on the site: images are named as on ghcr.io; the config says where they come from.
config=$work/config.toml
cat >"$config" <<TOML
cache_dir = "$work/cache"
[[registry]]
prefix = "ghcr.io"
location = "$LAZYIMG_TEST_UPSTREAM"
ca_file = "$LAZYIMG_TEST_CA"
TOML
sed "s|^cache_dir = .*|cache_dir = \"$work/indexer-cache\"|" "$config" >"$work/indexer.toml"
export LAZYIMG_CONFIG=$config REGISTRY_AUTH_FILE=$LAZYIMG_TEST_AUTH_FILE USER=${USER:-root}
image=ghcr.io/demo/busybox:1

step "lazyimg inspect $image"
"$lazyimg" inspect "$image"

step "lazyimg index --push $image (what seeding does; its own cache, like another machine)"
LAZYIMG_CONFIG=$work/indexer.toml "$lazyimg" index --push "$image"

step "lazyimg mount $image $work/mnt (lazy: only metadata is fetched now)"
mkdir -p "$work/mnt"
"$lazyimg" mount "$image" "$work/mnt"
"$lazyimg" stats "$work/mnt"
ls -la "$work/mnt"
cat "$work/mnt/etc/os-release"
step "lazyimg stats $work/mnt (after reading)"
"$lazyimg" stats "$work/mnt"
"$lazyimg" umount "$work/mnt"

step "lazyimg run --runtime charliecloud $image -- cat /hello.txt"
"$lazyimg" run --runtime charliecloud "$image" -- cat /hello.txt

step "lazyimg run --runtime podman $image -- sh -c 'uname -a; exit 3'"
status=0
"$lazyimg" run --runtime podman "$image" -- sh -c 'uname -a; exit 3' || status=$?
echo "exit status came back: $status"

step "lazyimg cache ls"
"$lazyimg" cache ls
