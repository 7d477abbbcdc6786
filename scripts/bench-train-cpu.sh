#!/usr/bin/env bash
# The built-in trainer against a plain PyTorch/torchvision script doing the
# same work on the CPU, in one run: ResNet-18 at 32 px, 4 epochs, batch 64,
# AdamW, label smoothing 0.1, a random affine augmentation on every image,
# 5 folds (scikit-learn's StratifiedKFold, seed 42) x 2 learning rates, one
# job at a time with every core (2 threads on the 2-core bench machine). Both train on mnist-sketch less 1,000
# held-out rows (stratified) and are scored on those rows: the mean of the
# ten fold models' probabilities.
#
#     scripts/bench-train-cpu.sh [DATASET_DIR]   (default: ../shared/datasets/mnist-sketch)
#
# Environment: EPOCHS (4), LRS ("0.001 0.003"), FOLDS (5).
# Prints each side's wall time, training images per second (mean over the
# folds' epochs) and held-out accuracy, and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
data_src=$(realpath "${1:-../shared/datasets/mnist-sketch}")
epochs=${EPOCHS:-4}
lrs=${LRS:-"0.001 0.003"}
folds=${FOLDS:-5}
# One job at a time: the agent gives it every core, and so does PyTorch here.
threads=$(nproc)

# The held-out copy: train.csv without 1,000 stratified rows, test.csv those
# rows (images read from the original train/ through a link).
data=$PWD/sweepfold-data/bench-train-cpu
rm -rf "$data"
mkdir -p "$(dirname "$data")"
python3 - "$data_src" "$data" <<'PY'
import csv, os, sys
import numpy as np
from sklearn.model_selection import train_test_split
src, dst = sys.argv[1:]
os.makedirs(dst)
rows = list(csv.DictReader(open(os.path.join(src, "train.csv"))))
targets = [int(r["target"]) for r in rows]
keep, held = train_test_split(np.arange(len(rows)), test_size=1000, stratify=targets, random_state=0)
keep, held = sorted(keep), sorted(held)
os.symlink(os.path.join(src, "train"), os.path.join(dst, "train"))
os.symlink(os.path.join(src, "train"), os.path.join(dst, "test"))
with open(os.path.join(dst, "train.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, ["class_name", "image_path", "target"])
    w.writeheader()
    for i in keep:
        w.writerow(rows[i])
with open(os.path.join(dst, "test.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_path"])
    for i in held:
        w.writerow([rows[i]["image_path"]])
np.save(dst + ".heldout_targets.npy", np.array([targets[i] for i in held]))
print(f"{len(keep)} training rows, {len(held)} held-out rows")
PY
held=$data.heldout_targets.npy
source bench/local-cluster.sh
start_local_cluster bench-data "$data" --cpu-slots 1

lr_list=$(echo "$lrs" | sed 's/ /, /g')
cat >"$work/sweep.yaml" <<EOF
name: cpu-bench
method: grid
kfold: {folds: $folds, seed: 42, split: sklearn}
dataset: bench-data
trainer:
  model: resnet18
  image_size: 32
  epochs: $epochs
  batch_size: 64
  optimizer: adamw
  weight_decay: 0.05
  label_smoothing: 0.1
  warmup_epochs: 1
  augment:                 # the affine resampling on every image, nothing else
    hflip: {p: 0.0}
    affine: {p: 1.0, shift: 0.0625, scale: 0.1, degrees: 15, shear: 5}
    erode: {p: 0.0, size: 3}
    dilate: {p: 0.0, size: 3}
    noise: {p: 0.0, std: 0.05}
    motion_blur: {p: 0.0, size: 5}
    coarse_dropout: {p: 0.0, holes: 4, size: 0.1}
    brightness_contrast: {p: 0.0, brightness: 0.2, contrast: 0.2}
    elastic: {p: 0.0, alpha: 0.03, sigma: 0.08}
    text: {p: 0.0, opacity_min: 0.3, opacity_max: 0.8, max_chars: 8}
parameters:
  lr: {values: [$lr_list]}
EOF

echo "== sweepfold: $folds folds x $(echo $lrs | wc -w) learning rates, one job at a time, $threads threads"
start=$(date +%s.%N)
"$bin/coordinator" submit "$work/sweep.yaml" --watch >/dev/null
sf_wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
"$bin/coordinator" ensemble cpu-bench --method soft --out "$work/sf.csv" >/dev/null
sf=$(python3 - "$work" "$bin/coordinator" "$held" <<'PY'
import json, subprocess, sys
import numpy as np
work, coord, held = sys.argv[1:]
held = np.load(held)
probs = np.load(f"{work}/sf_probabilities.npy")
acc = (probs.argmax(1) == held).mean()
jobs = json.loads(subprocess.check_output([coord, "jobs", "cpu-bench", "--json"]))
rates = []
for j in jobs:
    d = json.loads(subprocess.check_output([coord, "job", str(j["id"]), "--json"]))
    rates += [m["images_per_second"] for m in d["metrics"]]
print(f"{np.mean(rates):.1f} {acc:.4f}")
PY
)
echo "   wall $sf_wall s, train images/s ${sf% *}, held-out accuracy ${sf#* }"

echo "== PyTorch $(python3 -c 'import torch; print(torch.__version__)'): the same work"
start=$(date +%s.%N)
python3 bench/train_cpu_pytorch.py "$data" "$work/pt" --epochs "$epochs" --lrs $lrs --folds "$folds" \
    --threads "$threads" | tee "$work/pt.log" | sed 's/^/   /'
pt_wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
pt=$(python3 - "$work" "$held" <<'PY'
import re, sys
import numpy as np
work, held = sys.argv[1:]
held = np.load(held)
probs = np.load(f"{work}/pt/test_probabilities.npy")
rates = [float(m) for m in re.findall(r"best val accuracy [0-9.]+, ([0-9.]+) train images/s", open(f"{work}/pt.log").read())]
print(f"{np.mean(rates):.1f} {(probs.argmax(1) == held).mean():.4f}")
PY
)
echo "   wall $pt_wall s, train images/s ${pt% *}, held-out accuracy ${pt#* }"

echo
python3 - "$sf_wall" "${sf% *}" "${sf#* }" "$pt_wall" "${pt% *}" "${pt#* }" <<'PY'
import sys
sw, sr, sa, pw, pr, pa = map(float, sys.argv[1:])
print(f"{'':12}{'wall s':>10}{'train img/s':>14}{'held-out acc':>14}")
print(f"{'sweepfold':12}{sw:>10.1f}{sr:>14.1f}{sa:>14.4f}")
print(f"{'pytorch':12}{pw:>10.1f}{pr:>14.1f}{pa:>14.4f}")
print(f"sweepfold / pytorch: {sr / pr:.2f}x images/s, {pw / sw:.2f}x wall-clock speed, accuracy {sa - pa:+.4f}")
PY
