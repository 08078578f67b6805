#!/usr/bin/env bash
# Create the project venv and install pi-daemon with the given extras, installing the
# Debian packages that needs first (as root, or through sudo when not root).
# Usage: setup-venv.sh PYTHON VENV EXTRAS
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
extras=${3:-metrics,journald}
cd "$(dirname "$0")/.."
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "pi-daemon needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
    exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    bash scripts/apt-install.sh python3-venv
fi
# systemd-python builds from source against libsystemd and the Python headers.
if [[ ",$extras," == *",journald,"* ]] && ! pkg-config --exists libsystemd 2>/dev/null; then
    bash scripts/apt-install.sh libsystemd-dev pkg-config gcc python3-dev
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[${extras}]"
