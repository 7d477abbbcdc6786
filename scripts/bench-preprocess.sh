#!/usr/bin/env bash
# Preprocessing images per second per core: trainer-core against Pillow +
# torchvision doing the same steps on the same images, in one run.
# Needs torchvision 0.26.0 (pip install --no-deps torchvision==0.26.0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
size=${1:-224}
data=${SWEEPFOLD_MNIST_SKETCH:-../shared/datasets/mnist-sketch}
n=$(($(wc -l < "$data/train.csv") - 1))
rust=$(SWEEPFOLD_BENCH_SIZE=$size SWEEPFOLD_BENCH_IMAGES=$n cargo bench -q -p trainer-core --bench preprocess 2>/dev/null | tail -n1)
py=$(python3 bench/preprocess_pillow.py "$data" "$size" "$n")
echo "$rust"
echo "$py"
r=$(sed -n 's/.*: \([0-9]*\) images\/s/\1/p' <<<"$rust")
p=$(sed -n 's/.*: \([0-9]*\) images\/s/\1/p' <<<"$py")
echo "ratio (rust / pillow+torchvision): $(python3 -c "print(f'{$r / $p:.2f}')")"
