# shellcheck shell=bash
# Shared by the scripts beside this file (source it): installing Debian packages
# only when what they provide is missing, so a fresh machine needs nothing by hand.

APT_UPDATED=
apt_install() { # PACKAGE...
  if [[ -z $APT_UPDATED ]]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# The common start of the benchmark scripts: the local registries (their addresses
# exported as LAZYIMG_TEST_*), the tools the comparison needs, and a release build
# of lazyimg, whose path goes to $LAZYIMG_BIN.
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
  echo "building lazyimg (release)" >&2
  cargo build --release --locked -q --bin lazyimg
  # shellcheck disable=SC2034 # read by the scripts that source this file
  LAZYIMG_BIN=$(realpath "${CARGO_TARGET_DIR:-target}")/release/lazyimg
}
