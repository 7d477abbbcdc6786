#!/usr/bin/env bash
# The dashboard's benchmarks (BENCHMARKS.md, "The dashboard"):
#  1. a sweep page with 2,000 jobs and 100 configurations: server time of
#     /api/sweeps/ID (20 requests) and page load in Chromium (5 loads);
#  2. the scale bench's coordinator (50 simulated agents, 5,000 jobs),
#     run twice: alone, then with 50 dashboards open on it (clients.mjs):
#     scheduler latency, assignment rate and coordinator CPU side by side;
#  3. the GPU usage history after a simulated week of 4 agents;
#  4. the static report at the competition's size (500 classes, 15k/10k
#     rows, 4 configurations x 5 folds): render time in the coordinator
#     and time to drawn charts in Chromium (5 loads).
# Needs scripts/build-dashboard.sh (node_modules) and /usr/bin/chromium.
# PARTS="2 3" runs only those parts.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$d"' EXIT
cargo build --release -q -p coordinator --bin coordinator --benches
bin=${CARGO_TARGET_DIR:-target}/release/coordinator
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

parts=" ${PARTS:-1 2 3 4} "
if [[ $parts == *" 1 "* ]]; then
echo "== 1. a sweep page with 2,000 jobs and 100 configurations"
DASHBOARD_FIXTURE_DIR="$d/data" cargo bench -q -p coordinator --bench dashboard_fixture
http=127.0.0.1:$(port)
SWEEPFOLD_COORDINATOR_HTTP=$http "$bin" serve --listen 127.0.0.1:0 --data-dir "$d/data" 2>"$d/log" &
for i in $(seq 100); do curl -sf "http://$http/api/session" >/dev/null && break; sleep 0.1; done
python3 - "$http" <<'P'
import sys, time, urllib.request, statistics
base = f"http://{sys.argv[1]}/api/sweeps/1"
urllib.request.urlopen(base).read()  # the first request also fills the leaderboard cache
ts = []
for _ in range(20):
    t = time.perf_counter(); body = urllib.request.urlopen(base).read(); ts.append(time.perf_counter() - t)
ts.sort()
print(f"/api/sweeps/1 (2,000 jobs, 100 configurations, learning curves): {len(body)/1024:.0f} KiB of JSON, median {statistics.median(ts)*1000:.1f} ms, p90 {ts[17]*1000:.1f} ms, max {ts[-1]*1000:.1f} ms over 20 requests")
P
(cd dashboard && BASE="http://$http" SWEEP=1 node bench/load.mjs)
kill %1; wait %1 2>/dev/null || true
fi

if [[ $parts == *" 2 "* ]]; then
echo "== 2. scheduler with and without 50 dashboards open"
for clients in 0 50; do
    http=127.0.0.1:$(port)
    if [ "$clients" -gt 0 ]; then
        (cd dashboard && BASE="http://$http" CLIENTS=$clients exec node bench/clients.mjs) > "$d/clients.out" &
        cpid=$!
    fi
    echo "-- $clients dashboards"
    SCALE_HTTP=$http SCALE_AGENTS=50 SCALE_JOBS=5000 cargo bench -q -p coordinator --bench scale 2>/dev/null | grep -E "submit-to-start|all .* assignments|coordinator CPU|heartbeats handled"
    if [ "$clients" -gt 0 ]; then
        kill -TERM $cpid; wait $cpid 2>/dev/null || true
        cat "$d/clients.out"
    fi
done

fi

if [[ $parts == *" 3 "* ]]; then
echo "== 3. usage history after a simulated week"
cargo bench -q -p coordinator --bench usage_week
fi

if [[ $parts == *" 4 "* ]]; then
echo "== 4. the static report with 500 classes"
REPORT_OUT="$d/report-500.html" cargo bench -q -p coordinator --bench report_500
(cd dashboard && REPORT="$d/report-500.html" SHOT="$root/target/report-500.png" node bench/report.mjs)
fi
