#!/usr/bin/env python3
"""The same preprocessing as trainer-core/src/preprocess.rs with Pillow and
torchvision, on one core: greyscale when the channels barely differ,
polarity to dark-on-white (median luma), near-white to white, aspect-preserving
bilinear (antialiased) resize, white padding to a square.

    python3 bench/preprocess_pillow.py DATA_DIR SIZE N
"""
import csv
import os
import sys
import time

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode

torch.set_num_threads(1)


def preprocess(path, size, tolerance=10, white=200):
    img = Image.open(path).convert("RGB")
    a = np.asarray(img, dtype=np.int16)
    if (a.max(axis=2) - a.min(axis=2)).mean() <= tolerance:
        img = img.convert("L").convert("RGB")
    if np.median(np.asarray(img.convert("L"))) < 128:
        img = ImageOps.invert(img)
    a = np.array(img)
    a[np.asarray(img.convert("L")) >= white] = 255
    img = Image.fromarray(a)
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    img = F.resize(img, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=True)
    left, top = (size - nw) // 2, (size - nh) // 2
    img = F.pad(img, [left, top, size - nw - left, size - nh - top], fill=255)
    return np.asarray(img)


def main():
    data_dir, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(os.path.join(data_dir, "train.csv"), newline="") as f:
        paths = [os.path.join(data_dir, "train", r["image_path"]) for r in csv.DictReader(f)][:n]
    for p in paths:  # warm the page cache
        preprocess(p, size)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for p in paths:
            out = preprocess(p, size)
            assert out.shape == (size, size, 3)
        best = min(best, time.perf_counter() - start)
    print(f"pillow+torchvision: {len(paths)} images at {size}px on 1 core: {len(paths) / best:.0f} images/s")


if __name__ == "__main__":
    main()
