#!/usr/bin/env bash
# Early stopping on real training (issue 11, benchmark 2), and TPE against
# random search on real training (benchmark 3). The built-in trainer on
# mnist-sketch on this machine's CPU, one agent with one slot per fold so
# that a configuration's folds run side by side:
#
#   random          12 configurations of lr / weight decay / label smoothing
#   random+asha     the same 12 configurations (same seed), early_stopping asha
#   tpe             12 configurations proposed by TPE, 2 in flight
#   tpe+asha        the same with early_stopping asha
#
# For each: the sweep's wall time, the compute spent (the sum of the jobs'
# run times, and the epochs trained: bench/sweep_compute.py), how many
# configurations were stopped, and the best out-of-fold accuracy among the
# first 4, 8 and COUNT configurations (in the order they were drawn or proposed).
#
#     [COUNT=12] bench/asha-mnist.sh [DATASET_DIR [RUNS]]
#     (default: ../shared/datasets/mnist-sketch, else examples/data/mnist-sketch-mini;
#      RUNS: any of random random+asha tpe tpe+asha, default all four)
set -euo pipefail
cd "$(dirname "$0")/.."
default=../shared/datasets/mnist-sketch
[ -d "$default" ] || default=examples/data/mnist-sketch-mini
data_dir=$(realpath "${1:-$default}")
shift || true
runs=("${@:-random random+asha tpe tpe+asha}")
runs=(${runs[*]})
folds=2
count=${COUNT:-12}
source bench/local-cluster.sh
start_local_cluster mnist-sketch "$data_dir" --cpu-slots "$folds"

sweep_file() { # NAME METHOD ASHA(0|1)
    cat <<EOF
name: $1
method: $2
count: $count
seed: 3
$( [ "$2" = tpe ] && echo "parallel: 2" )
kfold: {folds: $folds, seed: 42}
dataset: mnist-sketch
trainer:
  model: small_cnn
  image_size: 16
  epochs: 9
  batch_size: 64
  warmup_epochs: 0.5
  augment:
    hflip: {p: 0.0}
parameters:
  lr: {distribution: log_uniform, min: 1.0e-5, max: 3.0e-2}
  weight_decay: {distribution: log_uniform, min: 1.0e-6, max: 1.0e-1}
  label_smoothing: {distribution: uniform, min: 0.0, max: 0.3}
$( [ "$3" = 1 ] && echo "early_stopping: {method: asha, grace_epochs: 1, reduction_factor: 3}" )
EOF
}

printf "| run | wall | job compute | epochs trained | stopped | best OOF after 4 / 8 / $count |\n|---|---|---|---|---|---|\n" > "$work/table.md"
for run in "${runs[@]}"; do
    case $run in
        random) method=random asha=0 ;;
        random+asha) method=random asha=1 ;;
        tpe) method=tpe asha=0 ;;
        tpe+asha) method=tpe asha=1 ;;
        *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    name=${run/+/-}
    sweep_file "$name" "$method" "$asha" > "$work/$name.yaml"
    start=$(date +%s)
    "$bin/coordinator" submit "$work/$name.yaml" >/dev/null
    until "$bin/coordinator" sweep "$name" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["sweep"]["state"] == "finished" and all(c.get("state") != "scoring" for c in s["configurations"]) else 1)'; do
        sleep 2
    done
    wall=$(( $(date +%s) - start ))
    "$bin/coordinator" leaderboard "$name" --json > "$work/$name-board.json"
    "$bin/coordinator" sweep "$name" --json > "$work/$name-sweep.json"
    python3 bench/sweep_compute.py "$name" "$bin/coordinator" > "$work/$name-compute.json"
    python3 - "$run" "$wall" "$count" "$work/$name-board.json" "$work/$name-sweep.json" "$work/$name-compute.json" >> "$work/table.md" <<'PY'
import json, sys
run, wall, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
board, sweep, spent = (json.load(open(p)) for p in sys.argv[4:7])
rows = board["entries"]
compute, epochs = spent["job_seconds"], spent["epochs"]
stopped = sum(1 for c in sweep["configurations"] if c.get("stopped_at_epoch"))
def best(n):
    scores = [r["oof_accuracy"] for r in rows if r["complete"] and r["config_index"] < n]
    return max(scores, default=0.0)
print(f"| {run} | {wall} s | {compute:.0f} s | {epochs:.0f} | {stopped} of {len(sweep['configurations'])} "
      f"| {best(4):.4f} / {best(8):.4f} / {best(count):.4f} |")
PY
    tail -n 1 "$work/table.md"
done
echo
echo "dataset $data_dir, $count configurations x $folds folds, small_cnn 16 px, 9 epochs, $(nproc) cores, $(date -u +%F)"
cat "$work/table.md"
