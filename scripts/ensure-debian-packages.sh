#!/usr/bin/env bash
# Install the named Debian packages when they are missing, saying what it does at each step and
# showing apt's own progress lines (Get:, Unpacking, Setting up). apt-get needs root: the script
# runs it directly as root, else through sudo (which may ask for a password); with neither it
# names the command to run as root and fails.
#
# A package counts as present when dpkg has it installed, or when what it provides is already
# on this machine from elsewhere (node and npm from NodeSource, which conflicts with Debian's
# npm package; a Python whose venv has ensurepip; openssl, softhsm2-util, strace on the PATH).
set -euo pipefail

say() { echo "ensure-debian-packages: $*"; }

provided() {
  case "$1" in
    python3-venv) python3 -c 'import ensurepip, venv' 2>/dev/null ;;
    nodejs) command -v node >/dev/null ;;
    npm) command -v npm >/dev/null ;;
    softhsm2) command -v softhsm2-util >/dev/null ;;
    openssl | strace) command -v "$1" >/dev/null ;;
    *) false ;;
  esac
}

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "$@"; do
  if { command -v dpkg-query >/dev/null && installed "$pkg"; } || provided "$pkg"; then
    continue
  fi
  missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  say "all present: $*"
  exit 0
fi
say "missing: ${missing[*]}"

if ! command -v apt-get >/dev/null; then
  say "no apt-get here (not Debian or Ubuntu): install ${missing[*]} with this system's tools"
  exit 1
fi
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    say "installing needs root and sudo is not installed; as root, run:"
    say "  apt-get update && apt-get install --no-install-recommends ${missing[*]}"
    exit 1
  fi
  say "not root: apt-get runs through sudo"
  as_root=(sudo)
fi
# Through env, not export: sudo resets the environment.
apt=(${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0)

say "step 1 of 2: apt-get update (the package lists)"
"${apt[@]}" update
say "step 2 of 2: apt-get install ${missing[*]}"
"${apt[@]}" install -y --no-install-recommends "${missing[@]}"

still=()
for pkg in "${missing[@]}"; do
  installed "$pkg" || provided "$pkg" || still+=("$pkg")
done
if ((${#still[@]})); then
  say "still missing after apt-get: ${still[*]}"
  exit 1
fi
say "installed: ${missing[*]}"
