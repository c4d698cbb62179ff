#!/usr/bin/env bash
# Set up a fresh machine for Parcours: Debian packages, a virtualenv, the Python packages.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
# Debian packages: chromium for the dashboard's browser tests (Playwright drives this one; it
# downloads no browser of its own).
DEBIAN_PACKAGES=(${PARCOURS_DEBIAN_PACKAGES:-chromium})

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "setup: Parcours needs Python >= 3.11 as '$PYTHON' (set PYTHON=... to choose one)." >&2
  exit 1
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
  apt_install python3-venv
fi
if [ ${#DEBIAN_PACKAGES[@]} -gt 0 ]; then
  apt_install "${DEBIAN_PACKAGES[@]}"
fi

stamp="$VENV/.parcours-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Parcours and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
echo "setup: ready ($("$VENV/bin/python" --version), $VENV)"
