#!/usr/bin/env bash
# Ensembling time against numpy on the same machine, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
rust=$(cargo bench -q -p coordinator --bench ensemble 2>/dev/null | tail -n1)
py=$(python3 bench/ensemble_numpy.py)
echo "$rust"
echo "$py"
r=$(sed -n 's/.*: \([0-9.]*\) ms.*/\1/p' <<<"$rust")
p=$(sed -n 's/.*: \([0-9.]*\) ms.*/\1/p' <<<"$py")
echo "ratio (rust time / numpy time): $(python3 -c "print(f'{$r / $p:.2f}')")"
