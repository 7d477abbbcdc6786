#!/usr/bin/env bash
# /metrics scrape time with a 10,000-job sweep queued (no agents).
set -euo pipefail
cd "$(dirname "$0")/.."
d=$(mktemp -d)
cargo build --release -q -p coordinator --bin coordinator
bin=${CARGO_TARGET_DIR:-target}/release/coordinator
"$bin" serve --listen 127.0.0.1:0 --http 127.0.0.1:17071 --data-dir "$d/data" 2>"$d/log" &
pid=$!
for i in $(seq 100); do grep -q "coordinator listening" "$d/log" && break; sleep 0.1; done
addr=$(grep -o 'addr=[0-9.:]*' "$d/log" | head -1 | cut -d= -f2)
cat > "$d/big.yaml" <<Y
name: big
kfold: {folds: 5}
dataset: mnist-sketch
command: ["python3", "x.py", "--lr", "{lr}", "--seed", "{seed}"]
parameters:
  lr: {values: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}
  seed: {values: [$(seq -s, 1 200)]}
Y
"$bin" --coordinator "http://$addr" submit "$d/big.yaml" >/dev/null
for i in 1 2 3; do curl -s -o /dev/null http://127.0.0.1:17071/metrics; done
python3 - <<P
import time, urllib.request, statistics
ts=[]
for _ in range(50):
    t=time.perf_counter(); b=urllib.request.urlopen("http://127.0.0.1:17071/metrics").read(); ts.append(time.perf_counter()-t)
ts.sort()
print(f"/metrics with 10,000 queued jobs: {len(b)} bytes, median {statistics.median(ts)*1000:.1f} ms, p90 {ts[44]*1000:.1f} ms, max {ts[-1]*1000:.1f} ms over 50 scrapes")
P
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$d"
