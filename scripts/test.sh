#!/usr/bin/env bash
# The test suite: installs what it needs (see scripts/setup.sh), then runs
# every unit and integration test of the workspace. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh -p coordinator`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ $# -eq 0 ]; then set -- --workspace; fi
exec cargo test "$@"
