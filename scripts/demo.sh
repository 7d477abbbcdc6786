#!/usr/bin/env bash
# The demo: installs what is missing (scripts/setup.sh), builds, starts a
# coordinator on sweepfold-data/demo and a local agent (the GPUs if NVML
# finds any, else the CPU), submits examples/sweeps/demo.yaml (2
# configurations x 5 folds of the built-in trainer on the copy of
# mnist-sketch in examples/data), follows it, and ends with the leaderboard,
# the ensemble's out-of-fold accuracy, submission.csv and report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== building (the first build takes several minutes)"
cargo build --quiet -p coordinator -p agent
bin=target/debug
data=sweepfold-data/demo
rm -rf "$data"
mkdir -p "$data"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source scripts/coordinator.sh
start_coordinator "$bin" "$data" "$data/coordinator.log"
echo "== coordinator on $SWEEPFOLD_COORDINATOR, data in $data"
[ -n "$SWEEPFOLD_DASHBOARD" ] && echo "== dashboard: $SWEEPFOLD_DASHBOARD (open it to watch the sweep live)"

if "$bin/agent" gpus >/dev/null 2>&1; then
    device=(); echo "== agent on this machine's GPUs"; "$bin/agent" gpus
else
    slots=$(( $(nproc) > 1 ? 2 : 1 ))
    device=(--cpu --cpu-slots "$slots"); echo "== no NVIDIA GPU found: the agent runs jobs on the CPU ($slots at a time)"
fi
"$bin/agent" run --coordinator "$SWEEPFOLD_COORDINATOR" --name local --work-dir "$data/agent" \
    "${device[@]}" --dataset mnist-sketch-mini=examples/data/mnist-sketch-mini 2>"$data/agent.log" &
pids+=($!)
registered=
for _ in $(seq 600); do
    if grep -q "registered with the coordinator" "$data/agent.log"; then registered=1; break; fi
    sleep 0.1
done
if [ -z "$registered" ]; then
    echo "the agent did not register within 60 s; its log ($data/agent.log) ends with:" >&2
    tail -n 5 "$data/agent.log" >&2
    exit 1
fi

echo "== submitting examples/sweeps/demo.yaml"
start=$(date +%s)
"$bin/coordinator" submit examples/sweeps/demo.yaml --watch
echo "   (the sweep took $(( $(date +%s) - start )) s)"
for _ in $(seq 300); do
    "$bin/coordinator" sweeps --json | grep -q '"submission"' && break
    sleep 0.2
done

echo; echo "== leaderboard"
"$bin/coordinator" leaderboard demo
echo; echo "== ensembles: out-of-fold accuracy of each method against the best single member"
for method in soft hard weighted stacking; do
    # stacking's second line says whether it beats greedy selection
    lines=1; [ "$method" = stacking ] && lines=2
    "$bin/coordinator" ensemble demo --method "$method" --out "$data/submission-$method.csv" | head -n "$lines"
done
echo "the submission uses greedy selection (Caruana), which keeps a member only if it helps:"
"$bin/coordinator" ensemble demo --method greedy --out "$data/submission.csv"
"$bin/coordinator" report demo --out "$data/report.html"
echo
echo "submission: $PWD/$data/submission.csv ($(($(wc -l < "$data/submission.csv") - 1)) test rows)"
echo "report:     $PWD/$data/report.html"
if [ -n "$SWEEPFOLD_DASHBOARD" ] && [ -t 0 ]; then
    echo "dashboard:  $SWEEPFOLD_DASHBOARD/sweeps/demo"
    read -r -p "press Enter to stop the coordinator (and its dashboard) " _ || true
fi
