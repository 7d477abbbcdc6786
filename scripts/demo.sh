#!/usr/bin/env bash
# The demo: builds the coordinator, starts it on a local data dir, submits the
# contract sweep (examples/sweeps/resnet-lr-ls.yaml: 2 x 2 configurations x 5
# folds = 20 jobs), lists the queued jobs, kills the coordinator with SIGKILL,
# restarts it on the same data dir and shows that every job is still there.
#
# This stage of sweepfold has no agents yet: jobs are queued, not trained.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p coordinator
bin=target/debug/coordinator
data=sweepfold-data/demo
rm -rf "$data"
mkdir -p "$data"
log="$data/coordinator.log"

start_coordinator() {
    "$bin" serve --listen "127.0.0.1:${port:-0}" --data-dir "$data" 2>>"$log" &
    pid=$!
    for _ in $(seq 200); do
        addr=$(sed -n 's/.*coordinator listening addr=\([^ ]*\).*/\1/p' "$log" | tail -n1)
        if [ -n "$addr" ] && [ "$addr" != "${prev_addr:-}" ]; then break; fi
        sleep 0.05
    done
    prev_addr=$addr
    port=${addr##*:}
    export SWEEPFOLD_COORDINATOR="http://$addr"
}
trap 'kill "$pid" 2>/dev/null || true' EXIT

start_coordinator
echo "== coordinator listening on $SWEEPFOLD_COORDINATOR (data dir $data)"
echo "== dry run of examples/sweeps/resnet-lr-ls.yaml"
"$bin" submit examples/sweeps/resnet-lr-ls.yaml --dry-run
echo "== submit"
"$bin" submit examples/sweeps/resnet-lr-ls.yaml
"$bin" sweeps
"$bin" jobs resnet-lr-ls | head -n 8
echo "   ..."
echo "== kill -9 the coordinator and restart it on the same data dir"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
start_coordinator
"$bin" sweeps
echo "== still $("$bin" jobs resnet-lr-ls --json | grep -c '"state": "queued"') queued jobs after the restart"
