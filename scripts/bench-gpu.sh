#!/usr/bin/env bash
# On a GPU machine: trainer-core's training throughput against PyTorch eager on
# the same GPU, in one run. The bench binary is built elsewhere (no cargo on
# the lent GPU machines) with
#   cargo bench -p trainer-core --bench train_throughput --no-run
# and copied to bench/bin/train_throughput; TORCH_LIB points at the GPU
# machine's torch 2.11.0 lib directory.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
lib=${TORCH_LIB:-$($python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for aug in 1 0; do
    SWEEPFOLD_BENCH_AUGMENT=$aug bench/bin/train_throughput 2>/dev/null | tail -n1
done
for flag in --augment ""; do
    $python bench/train_pytorch.py $flag
done
