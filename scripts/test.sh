#!/usr/bin/env bash
# Install everything the full test suite needs, then run it. Run as root (CI does):
# the system tests start journald, boot containers with systemd-nspawn and build
# Debian root filesystems with debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_cmd=$( [ "$(id -u)" = 0 ] || echo sudo )
packages=$(grep -v '^\s*#' .ci/apt-packages.txt | tr '\n' ' ')
if [ -n "${packages// }" ]; then
    echo "== apt: $packages"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $packages >/dev/null
fi
echo "== venv"
bash scripts/setup-venv.sh "${PYTHON:-python3}" "${VENV:-.venv}" "test,metrics,journald"
echo "== lint"
.venv/bin/ruff check pi_daemon tests deploy benchmarks
.venv/bin/ruff format --check pi_daemon tests deploy benchmarks
(cd ansible && PATH="$PWD/../.venv/bin:$PATH" ../.venv/bin/ansible-lint --profile production --offline -q)
echo "== tests"
exec .venv/bin/python -m pytest "$@"
