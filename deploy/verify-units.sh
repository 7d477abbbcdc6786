#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify`, pointing ExecStart at
# the freshly built binaries. systemd-analyze exits 0 on unknown keys and bad
# values (it only warns), so any output at all counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
profile_dir=${1:-target/debug}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in deploy/*.service; do
    sed -e "s#/usr/local/bin/coordinator#$PWD/$profile_dir/coordinator#" \
        -e "s#/usr/local/bin/agent#$PWD/$profile_dir/agent#" \
        "$unit" > "$tmp/$(basename "$unit")"
done
out=$(systemd-analyze verify "$tmp"/*.service 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "systemd-analyze verify reported problems:"
    echo "$out"
    exit 1
fi
echo "systemd units OK: $(cd deploy && ls *.service | tr '\n' ' ')"
