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
