#!/usr/bin/env bash
# Stacking against greedy selection on real models and real data: four
# scikit-learn models (tests/python/notebook_model.py: logistic regression
# on 8x8 and 16x16 thumbnails, k-NN, a random forest) trained with
# StratifiedKFold(5, shuffle=True, random_state=42) on mnist-sketch, imported
# with `coordinator import`, then ensembled by every method.
#
#     bench/stacking-mnist.sh [DATASET_DIR]   (default: ../shared/datasets/mnist-sketch)
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=$(realpath "${1:-../shared/datasets/mnist-sketch}")
source bench/local-cluster.sh
start_local_cluster mnist-sketch "$data_dir"
members=()
for spec in "8 logreg" "16 logreg" "8 knn" "12 forest"; do
    set -- $spec
    name="nb-$2-$1"
    start=$(date +%s)
    python3 tests/python/notebook_model.py "$data_dir" "$work/$name" 5 42 "$1" "$2" >/dev/null
    "$bin/coordinator" import "$name" --dataset mnist-sketch --data "$data_dir" --folds 5 --seed 42 \
        --split sklearn --oof "$work/$name/oof_fold{fold}.csv" --test "$work/$name/test_fold{fold}.npy" \
        --params "model=$2" "size=$1"
    echo "  (trained in $(( $(date +%s) - start )) s)"
    members+=("$name")
done
echo
"$bin/coordinator" leaderboard "${members[@]}"
for method in soft weighted greedy stacking; do
    start=$(date +%s%N)
    "$bin/coordinator" ensemble "${members[@]}" --method "$method" --out "$work/$method.csv" | head -n 2 | grep -v "^MEMBER"
    echo "  $method took $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
