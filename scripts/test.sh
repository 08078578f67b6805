#!/usr/bin/env bash
# Install everything the full test suite needs, then run it (CI runs this as root).
# The system tests start journald, boot containers with systemd-nspawn and build Debian
# root filesystems with debootstrap, so the test run itself needs root: as a sudoer, only
# the apt step and the pytest run go through sudo; the venv stays yours.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t packages < <(grep -v '^\s*#' .ci/apt-packages.txt | grep -v '^\s*$')
bash scripts/apt-install.sh "${packages[@]}"
echo "== venv"
bash scripts/setup-venv.sh "${PYTHON:-python3}" "${VENV:-.venv}" "test,metrics,journald,mqtt"
echo "== lint"
.venv/bin/ruff check pi_daemon tests deploy benchmarks scripts ansible/filter_plugins
.venv/bin/ruff format --check pi_daemon tests deploy benchmarks scripts ansible/filter_plugins
.venv/bin/mypy
(cd ansible && PATH="$PWD/../.venv/bin:$PATH" ../.venv/bin/ansible-lint --profile production --offline -q)
echo "== tests"
if [ "$(id -u)" = 0 ]; then
    exec .venv/bin/python -m pytest "$@"
elif command -v sudo >/dev/null 2>&1; then
    exec sudo -E .venv/bin/python -m pytest "$@"
else
    echo "pi-daemon: not root and no sudo: the system tests will fail (they need root)" >&2
    exec .venv/bin/python -m pytest "$@"
fi
