#!/usr/bin/env python3
"""An example user command for sweepfold: the job-process protocol in ~150 lines.

Use it from a sweep file instead of `trainer:`:

    command: ["python3", "examples/train_example.py", "--lr", "{lr}", "--epochs", "{epochs}"]

What the agent gives the process (see docs/job-protocol.md):
  SWEEPFOLD_JOB_FILE       job.json: parameters, fold, folds, dataset, ...
  SWEEPFOLD_DATA_DIR       the dataset (train.csv, test.csv, train/, test/)
  SWEEPFOLD_TRAIN_INDICES  int64 .npy: rows of train.csv to train on
  SWEEPFOLD_VAL_INDICES    int64 .npy: rows of train.csv of this fold
  SWEEPFOLD_OUTPUT_DIR     where to leave val_logits.npy and test_logits.npy
  SWEEPFOLD_NUM_CLASSES, SWEEPFOLD_FOLD, SWEEPFOLD_FOLDS, SWEEPFOLD_DEVICE, ...
What it reports: JSON lines on stdout, e.g. {"event": "epoch", "epoch": 1, ...}.
What it leaves: val_logits.npy (float32, one row per validation index, same order)
and test_logits.npy (float32, one row per line of test.csv), then exits 0.
Finish now: when early stopping stops the configuration, the agent creates the
file SWEEPFOLD_FINISH_FILE names; at the end of each epoch this script looks for
it and, once it is there, stops and leaves the outputs of its best epoch so far.

Models:
  logreg  multinomial logistic regression on small greyscale thumbnails (needs Pillow)
  prior   class priors of the training rows only (no images; for fast tests)
Test switches: --memory-gib reports simulated GPU memory; --oom-below-gib fails
like CUDA out-of-memory while the scheduler reserved less than that; --sleep
simulates work per epoch; --ignore-finish never looks for the finish-now file
(the agent's grace period then cancels the job).
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np


def event(**fields):
    print(json.dumps(fields), flush=True)


def asked_to_finish(args):
    """True once the agent created the finish-now file (early stopping)."""
    path = os.environ.get("SWEEPFOLD_FINISH_FILE", "")
    return not args.ignore_finish and bool(path) and os.path.exists(path)


def read_rows(data_dir):
    with open(os.path.join(data_dir, "train.csv"), newline="") as f:
        train = [(r["image_path"], int(r["target"])) for r in csv.DictReader(f)]
    with open(os.path.join(data_dir, "test.csv"), newline="") as f:
        test = [r["image_path"] for r in csv.DictReader(f)]
    return train, test


def thumbnails(paths, size):
    from PIL import Image  # only the logreg model needs Pillow

    out = np.empty((len(paths), size * size), dtype=np.float32)
    for i, p in enumerate(paths):
        img = np.asarray(Image.open(p).convert("L").resize((size, size)), dtype=np.float32) / 255.0
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).mean()
        if border < 0.5:  # white strokes on black: make them dark on white
            img = 1.0 - img
        out[i] = 1.0 - img.reshape(-1)  # ink = 1
    return out


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["logreg", "prior"], default="logreg")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--memory-gib", type=float, default=0.0)
    ap.add_argument("--oom-below-gib", type=float, default=0.0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--ignore-finish", action="store_true")
    args = ap.parse_args()

    env = os.environ
    with open(env["SWEEPFOLD_JOB_FILE"]) as f:
        job = json.load(f)
    data_dir = env["SWEEPFOLD_DATA_DIR"]
    out_dir = env["SWEEPFOLD_OUTPUT_DIR"]
    num_classes = int(env["SWEEPFOLD_NUM_CLASSES"])
    train_idx = np.load(env["SWEEPFOLD_TRAIN_INDICES"])
    val_idx = np.load(env["SWEEPFOLD_VAL_INDICES"])
    print(f"job {job['job_id']} attempt {job['attempt']}: fold {job['fold']} of {job['folds']}, "
          f"{len(train_idx)} train rows, {len(val_idx)} validation rows, params {job['params']}")

    if args.memory_gib > 0:
        event(event="memory", bytes=int(args.memory_gib * 2**30))
    reserved = int(env.get("SWEEPFOLD_MEMORY_ESTIMATE_BYTES", "0"))
    if args.oom_below_gib > 0 and reserved < args.oom_below_gib * 2**30:
        print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (simulated by "
              f"--oom-below-gib {args.oom_below_gib}; {reserved} bytes were reserved)", file=sys.stderr)
        return 1

    train_rows, test_rows = read_rows(data_dir)
    targets = np.array([t for _, t in train_rows], dtype=np.int64)
    y_train, y_val = targets[train_idx], targets[val_idx]

    if args.model == "prior":
        counts = np.bincount(y_train, minlength=num_classes).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum()).astype(np.float32)
        val_logits = np.tile(logp, (len(val_idx), 1))
        test_logits = np.tile(logp, (len(test_rows), 1))
        for epoch in range(1, args.epochs + 1):
            time.sleep(args.sleep)
            acc = float((val_logits.argmax(1) == y_val).mean())
            # The prior has no losses or speed to report: it leaves them out (shown as
            # absent, never as zero).
            event(event="epoch", epoch=epoch, val_accuracy=acc, lr=args.lr,
                  peak_gpu_memory_bytes=int(args.memory_gib * 2**30))
            print(f"epoch {epoch}/{args.epochs}: val_accuracy {acc:.4f}", flush=True)
            if asked_to_finish(args):
                break
    else:
        paths = [os.path.join(data_dir, "train", p) for p, _ in train_rows]
        x_all = thumbnails(paths, args.size)
        x_test = thumbnails([os.path.join(data_dir, "test", p) for p in test_rows], args.size)
        mean = x_all[train_idx].mean(axis=0)
        x_all, x_test = x_all - mean, x_test - mean
        x_train, x_val = x_all[train_idx], x_all[val_idx]
        rng = np.random.default_rng(job["fold"])
        w = rng.normal(0, 0.01, (x_train.shape[1], num_classes)).astype(np.float32)
        b = np.zeros(num_classes, dtype=np.float32)
        onehot = np.eye(num_classes, dtype=np.float32)[y_train]
        best = (-1.0, w.copy(), b.copy())  # the best epoch's accuracy and weights
        for epoch in range(1, args.epochs + 1):
            start = time.time()
            for _ in range(20):
                p = softmax(x_train @ w + b)
                grad = (p - onehot) / len(x_train)
                w -= args.lr * (x_train.T @ grad + 1e-4 * w)
                b -= args.lr * grad.sum(axis=0)
            time.sleep(args.sleep)
            p_train = softmax(x_train @ w + b)
            p_val = softmax(x_val @ w + b)
            acc = float((p_val.argmax(1) == y_val).mean())
            if acc > best[0]:
                best = (acc, w.copy(), b.copy())
            event(event="epoch", epoch=epoch,
                  train_loss=float(-np.log(p_train[np.arange(len(y_train)), y_train] + 1e-9).mean()),
                  val_loss=float(-np.log(p_val[np.arange(len(y_val)), y_val] + 1e-9).mean()),
                  val_accuracy=acc,
                  lr=args.lr, images_per_second=20 * len(x_train) / max(time.time() - start, 1e-6),
                  peak_gpu_memory_bytes=int(args.memory_gib * 2**30))
            print(f"epoch {epoch}/{args.epochs}: val_accuracy {acc:.4f}", flush=True)
            if asked_to_finish(args):
                print(f"asked to finish now after epoch {epoch}: outputs of the best epoch", flush=True)
                break
        _, w, b = best
        val_logits = (x_val @ w + b).astype(np.float32)
        test_logits = (x_test @ w + b).astype(np.float32)

    np.save(os.path.join(out_dir, "val_logits.npy"), val_logits.astype(np.float32))
    np.save(os.path.join(out_dir, "test_logits.npy"), test_logits.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
