#!/usr/bin/env bash
# Runs lazyimg's whole test suite on a Debian 12 machine, from nothing:
# installs the system packages tests use, starts the local registries on
# 127.0.0.1, runs every test (real registries, real FUSE mounts, real runtimes),
# and stops the registries again if this script started them.
#
# Usage: scripts/test.sh [extra cargo test arguments]      (as root)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || {
  echo "test.sh: cargo is missing: install a Rust toolchain >= 1.89 (rustup) first" >&2
  exit 1
}

# Packages, the test user and this host's containers.conf.
eval "$(bash scripts/setup-runtimes.sh)"
export CONTAINERS_CONF

started_registries=
if ! bash scripts/testenv.sh status >/dev/null 2>&1; then
  started_registries=1
fi
bash scripts/testenv.sh up
# shellcheck disable=SC2317 # called by the EXIT trap
stop_registries() { [[ -z $started_registries ]] || bash scripts/testenv.sh down; }
trap stop_registries EXIT

# One total at the end: cargo prints a result line per test binary.
log=$(mktemp)
set +e
cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
exit "$status"
