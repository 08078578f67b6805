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
pytest_as_root() {
    if [ "$(id -u)" = 0 ]; then
        .venv/bin/python -m pytest "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E .venv/bin/python -m pytest "$@"
    else
        echo "pi-daemon: not root and no sudo: the system tests will fail (they need root)" >&2
        .venv/bin/python -m pytest "$@"
    fi
}
# With arguments: one pytest run of exactly those.
if [ "$#" -gt 0 ]; then
    pytest_as_root "$@"
    exit
fi
# The whole suite as five pytest runs at once, because most of the system tests' time is
# spent waiting (apt, debootstrap downloads, boots, health checks, keep-alives) and the arm64
# tests' is qemu's: one after the other they took 50 minutes of a 2-vCPU CI machine. They
# share nothing but the read-only checkout and .cache/ (whose root filesystem tarballs and
# wheel are built under file locks); containers carry their run's pid in their cgroup and
# network namespace names. The main amd64 system tests print as they go; the other runs are
# printed whole when they end, and the exit status is the first failing run's.
logs=$(mktemp -d)
declare -A pids=()
side_runs=()
side_files=()
trap 'kill ${pids[*]} 2>/dev/null || true; rm -rf "$logs"' EXIT
durations=(--durations=12 --durations-min=20)
side() {  # side NAME PYTEST-ARGS...: one pytest run in the background, logged to NAME.log
    local name=$1
    shift
    pytest_as_root -p no:cacheprovider "${durations[@]}" "$@" >"$logs/$name.log" 2>&1 &
    pids[$name]=$!
    side_runs+=("$name")
}
# A sudoer types the password once, before the runs start.
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo -v; fi
side_system() {  # side_system NAME FILE...: system test files the main run leaves out
    side_files+=("${@:2}")
    side "$@"
}
side_system arm64 tests/system/test_arm64.py
side_system trixie tests/system/test_trixie.py
side_system fleet tests/system/test_fleet_collector.py tests/system/test_ansible_collector.py
side unit -m "not system" tests
status=0
echo "-- system tests (amd64); the ${side_runs[*]} tests run beside them"
pytest_as_root "${durations[@]}" tests/system "${side_files[@]/#/--ignore=}" || status=$?
for run in "${side_runs[@]}"; do
    code=0
    wait "${pids[$run]}" || code=$?
    echo "-- $run tests (exit $code)"
    cat "$logs/$run.log"
    [ "$status" != 0 ] || status=$code
done
exit "$status"
