#!/usr/bin/env bash
# On a GPU machine: trainer-core's training throughput against PyTorch eager
# on the same GPU, in one run. ResNet-50, 224 px, batch 128, channels-last,
# fp16 (autocast + dynamic loss scaling) and bf16, each with and without
# augmentation; sweepfold through the real `train_fold` path (uint8 batches
# gathered on the host, pinned, copied, augmented on the GPU), PyTorch with
# its data already on the GPU (no loader: an upper bound for PyTorch).
#
# The bench binary is built elsewhere (no cargo on the lent GPU machines) by
# `scripts/gpu-acceptance.sh prepare` into dist/ (BIN overrides). TORCH_LIB
# points at that machine's torch 2.11.0 lib directory (default: python3's).
#
#   scripts/bench-gpu.sh [OUT_DIR]   (writes bench-gpu.txt and the runs' logs there)
#   BENCH_PRECISIONS="fp16" scripts/bench-gpu.sh   (fp16 only; default "fp16 bf16")
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
bin=${BIN:-dist}
dir=${1:-$(mktemp -d)}
mkdir -p "$dir"
out=$dir/bench-gpu.txt
err=$dir/bench-gpu-stderr.log
lib=${TORCH_LIB:-$($python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
echo "GPU: ${gpu:-none}; $(date -u +%Y-%m-%dT%H:%MZ)" | tee -a "$out"
rate() { sed -n 's/.*: \([0-9.]*\) images\/s$/\1/p' | tail -n1; }
printf '%-6s %-8s %14s %14s %7s\n' precision augment "sweepfold/s" "pytorch/s" ratio | tee -a "$out"
for precision in ${BENCH_PRECISIONS:-fp16 bf16}; do
    for aug in 1 0; do
        flag=; [ "$aug" = 1 ] && flag=--augment
        t=$(SWEEPFOLD_BENCH_PRECISION=$precision SWEEPFOLD_BENCH_AUGMENT=$aug \
            "$bin/train_throughput" 2>>"$err" | rate)
        p=$($python bench/train_pytorch.py $flag --precision "$precision" 2>>"$err" | rate)
        ratio=$($python -c "import sys; t, p = sys.argv[1:]; print(f'{float(t) / float(p):.2f}' if t and p else 'n/a')" "${t:-}" "${p:-}")
        printf '%-9s %-8s %14s %14s %7s\n' "$precision" "$aug" "${t:-failed}" "${p:-failed}" "$ratio" | tee -a "$out"
    done
done
