#!/bin/sh
# The README's first step on a fresh Debian/Ubuntu: make and a Python able to make venvs.
# Works as root (no sudo needed: containers, CI images, new cloud VMs) and as a sudoer.
set -eu
cd "$(dirname "$0")/.."
command -v bash >/dev/null 2>&1 || { echo "pi-daemon: bash is needed" >&2; exit 1; }
exec bash scripts/apt-install.sh make python3 python3-venv
