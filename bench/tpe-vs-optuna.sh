#!/usr/bin/env bash
# Sampler quality side by side (issue 11, benchmark 1): sweepfold's TPE,
# Optuna's TPESampler(constant_liar=True) and random search on Branin,
# Hartmann-6 and a noisy lr / weight-decay / label-smoothing surrogate, the
# same budget and parallelism, 20 seeds each.
#
#     bench/tpe-vs-optuna.sh [BUDGET PARALLEL SEEDS]   (default: 60 4 20)
set -euo pipefail
cd "$(dirname "$0")/.."
args=("${@:-60 4 20}")
python3 -c "import optuna" 2>/dev/null || python3 -m pip install --quiet optuna
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo run --quiet --release -p sweepfold-common --example search_bench -- ${args[*]} > "$out"
python3 bench/tpe_vs_optuna.py "$out" ${args[*]}
