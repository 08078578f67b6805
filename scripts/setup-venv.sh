#!/usr/bin/env bash
# Create the project venv and install pi-daemon with the given extras.
# Usage: setup-venv.sh PYTHON VENV EXTRAS
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
extras=${3:-test,metrics}
cd "$(dirname "$0")/.."
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "pi-daemon needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
    exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    echo "installing python3-venv (needs root)" >&2
    ${SUDO:-$( [ "$(id -u)" = 0 ] || echo sudo )} apt-get install -y python3-venv
fi
# systemd-python builds from source against libsystemd.
if [[ ",$extras," == *",journald,"* ]] && ! pkg-config --exists libsystemd 2>/dev/null; then
    echo "installing libsystemd-dev, pkg-config and gcc for systemd-python (needs root)" >&2
    sudo_cmd=$( [ "$(id -u)" = 0 ] || echo sudo )
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq libsystemd-dev pkg-config gcc >/dev/null
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[${extras}]"
