#!/usr/bin/env bash
# Builds the web dashboard (dashboard/ -> dashboard/dist/) that the
# coordinator's build.rs bundles into its binary. Installs the pinned npm
# packages (dashboard/package-lock.json) from the npm registry if missing;
# if Node.js itself is missing it installs Debian's nodejs and npm when it
# may (root with apt-get), else says what to do. Nothing is fetched when the
# coordinator runs.
#
#   scripts/build-dashboard.sh           build if dist/ is older than the sources
#   scripts/build-dashboard.sh --force   build anyway
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root/dashboard"

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build-dashboard: installing Debian's nodejs and npm" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "build-dashboard: Node.js and npm are needed to build the dashboard (e.g. apt-get install nodejs npm); the coordinator builds without it and its pages say so" >&2
        exit 1
    fi
fi

if [ ! -d node_modules/echarts ] || [ ! -d node_modules/esbuild ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "build-dashboard: npm ci (the versions in package-lock.json)" >&2
    npm ci --no-audit --no-fund --loglevel=error
fi

stale=1
if [ "${1:-}" != "--force" ] && [ -f dist/index.html ]; then
    newer=$(find src build.mjs package-lock.json -newer dist/index.html -print -quit)
    [ -z "$newer" ] && stale=0
fi
if [ "$stale" -eq 1 ]; then
    npm run --silent build
fi
