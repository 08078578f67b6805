#!/usr/bin/env bash
# Install the Debian packages named as arguments that are not installed yet.
# As root it runs apt-get itself; otherwise through sudo when sudo exists. Nothing missing:
# no apt-get, no root needed. Usage: apt-install.sh PACKAGE...
set -euo pipefail
missing=()
for package in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "pi-daemon: these packages are missing and installing them needs root (or sudo): ${missing[*]}" >&2
    exit 1
fi
echo "== apt: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
