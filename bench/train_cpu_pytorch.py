#!/usr/bin/env python3
"""The plain PyTorch/torchvision script that does what one sweepfold sweep of
the built-in trainer does, for scripts/bench-train-cpu.sh: K stratified folds
(scikit-learn's StratifiedKFold, as `kfold.split: sklearn`) x learning rates,
one fold at a time, on the CPU with a fixed number of threads.

Per fold: torchvision ResNet-18 with the data's class count, AdamW
(weight decay 0.05), label smoothing, a per-step learning rate (1 epoch of
linear warm-up, then cosine to 0), shuffled whole batches, a random affine
augmentation on every image (rotation, scale, shear, shift in one
resampling of the ink, as trainer-core's), ImageNet normalisation;
validation after every epoch, the best epoch's weights kept, then the
validation and test logits. Images go through bench/preprocess_pillow.py
(the same preprocessing as trainer-core) once, before the first fold.

    python3 bench/train_cpu_pytorch.py DATA_DIR OUT_DIR [--size 32] [--epochs 4]
        [--batch 64] [--lrs 0.001 0.003] [--folds 5] [--seed 42] [--threads 2]

Writes OUT_DIR/test_probabilities.npy (mean softmax of every fold model),
OUT_DIR/oof_probabilities_lrN.npy and prints one line per fold and a
`total` line: seconds, training images per second.
"""
import argparse
import copy
import csv
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preprocess_pillow import preprocess  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(data, size):
    with open(os.path.join(data, "train.csv")) as f:
        train = list(csv.DictReader(f))
    with open(os.path.join(data, "test.csv")) as f:
        test = list(csv.DictReader(f))

    def stack(rows, sub):
        return torch.from_numpy(np.stack([preprocess(os.path.join(data, sub, r["image_path"]), size) for r in rows]))

    return stack(train, "train"), torch.tensor([int(r["target"]) for r in train]), stack(test, "test")


def lr_at(base, step, spe, epochs, warmup=1.0):
    warm = round(warmup * spe)
    if step < warm:
        return base * (step + 1) / warm
    progress = min((step - warm) / max(epochs * spe - warm, 1), 1.0)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def affine(x, g, shift=0.0625, scale=0.1, degrees=15.0, shear=5.0):
    """trainer-core's affine (p = 1): output pixel -> input pixel."""
    b = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(b, generator=g) * (hi - lo) + lo

    deg = math.pi / 180
    angle = uniform(-degrees, degrees) * deg
    inv_s = 1 / (uniform(-scale, scale) + 1)
    sh = uniform(-shear, shear) * deg
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)
    theta = torch.stack([
        torch.stack([angle.cos() * inv_s, (-angle.sin() + sh.tan()) * inv_s, tx], 1),
        torch.stack([angle.sin() * inv_s, angle.cos() * inv_s, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return 1 - F.grid_sample(1 - x, grid, align_corners=False)


def unit(batch):
    return batch.permute(0, 3, 1, 2).float() / 255


def predict(model, images, rows, batch):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            out.append(model((unit(images[rows[i:i + batch]]) - MEAN) / STD))
    return torch.cat(out)


def train_fold(images, targets, test, train_rows, val_rows, classes, lr, args, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    spe = max(len(train_rows) // args.batch, 1)
    val_targets = targets[val_rows]
    best, best_acc, seen, train_s = None, -1.0, 0, 0.0
    for epoch in range(args.epochs):
        model.train()
        order = train_rows[torch.randperm(len(train_rows), generator=g)]
        start = time.perf_counter()
        for i in range(spe):
            rows = order[i * args.batch:(i + 1) * args.batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(lr, epoch * spe + i, spe, args.epochs)
            x = (affine(unit(images[rows]), g) - MEAN) / STD
            loss = F.cross_entropy(model(x), targets[rows], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(rows)
        train_s += time.perf_counter() - start
        acc = (predict(model, images, val_rows, args.batch * 2).argmax(1) == val_targets).float().mean().item()
        if acc > best_acc:
            best_acc, best = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    val = predict(model, images, val_rows, args.batch * 2)
    out = predict(model, test, torch.arange(len(test)), args.batch * 2)
    return val, out, best_acc, seen / train_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    images, targets, test = load(args.data, args.size)
    classes = int(targets.max()) + 1
    print(f"preprocessed {len(images)} train and {len(test)} test images in {time.perf_counter() - t0:.1f} s", flush=True)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(np.zeros(len(targets)), targets.numpy()))
    test_sum = torch.zeros(len(test), classes)
    rates = []
    for li, lr in enumerate(args.lrs):
        oof = torch.zeros(len(images), classes)
        for k, (tr, va) in enumerate(folds):
            start = time.perf_counter()
            tr, va = torch.from_numpy(tr), torch.from_numpy(va)
            val, out, acc, rate = train_fold(images, targets, test, tr, va, classes, lr, args, args.seed + 1000 * li + k)
            oof[va] = val.softmax(1)
            test_sum += out.softmax(1)
            rates.append(rate)
            print(f"lr {lr} fold {k}: {time.perf_counter() - start:.1f} s, best val accuracy {acc:.4f}, {rate:.0f} train images/s", flush=True)
        np.save(os.path.join(args.out, f"oof_probabilities_lr{li}.npy"), oof.numpy())
        print(f"lr {lr}: oof accuracy {(oof.argmax(1) == targets).float().mean().item():.4f}", flush=True)
    np.save(os.path.join(args.out, "test_probabilities.npy"), (test_sum / (len(args.lrs) * len(folds))).numpy())
    print(f"total: {time.perf_counter() - t0:.1f} s, {np.mean(rates):.0f} train images/s (mean over folds)")


if __name__ == "__main__":
    main()
