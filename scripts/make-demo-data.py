#!/usr/bin/env python3
"""Makes examples/data/mnist-sketch-mini: a small copy of the shared
mnist-sketch dataset for the demo, in the same layout (first 200 training
images of each class in train.csv order, the first 1,000 test images, and
the archive's macOS `._` junk files, which the CSVs do not list).

    python3 scripts/make-demo-data.py ../shared/datasets/mnist-sketch examples/data/mnist-sketch-mini
"""
import csv
import os
import shutil
import sys

PER_CLASS, TEST = 200, 1000


def main():
    src, dst = sys.argv[1], sys.argv[2]
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(os.path.join(dst, "train"))
    os.makedirs(os.path.join(dst, "test"))
    taken = {}
    with open(os.path.join(src, "train.csv"), newline="") as f, \
            open(os.path.join(dst, "train.csv"), "w", newline="") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["class_name", "image_path", "target"])
        for row in csv.DictReader(f):
            if taken.get(row["target"], 0) >= PER_CLASS:
                continue
            taken[row["target"]] = taken.get(row["target"], 0) + 1
            os.makedirs(os.path.join(dst, "train", os.path.dirname(row["image_path"])), exist_ok=True)
            shutil.copyfile(os.path.join(src, "train", row["image_path"]),
                            os.path.join(dst, "train", row["image_path"]))
            w.writerow([row["class_name"], row["image_path"], row["target"]])
    with open(os.path.join(src, "test.csv"), newline="") as f, \
            open(os.path.join(dst, "test.csv"), "w", newline="") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["image_path"])
        for i, row in enumerate(csv.DictReader(f)):
            if i >= TEST:
                break
            shutil.copyfile(os.path.join(src, "test", row["image_path"]),
                            os.path.join(dst, "test", row["image_path"]))
            w.writerow([row["image_path"]])
    junk = 0
    for root, _, files in os.walk(src):
        for name in files:
            if name.startswith("._") and junk < 3:
                rel = os.path.relpath(os.path.join(root, name), src)
                if os.path.isdir(os.path.join(dst, os.path.dirname(rel))):
                    shutil.copyfile(os.path.join(src, rel), os.path.join(dst, rel))
                    junk += 1
    print(f"{sum(taken.values())} train, {TEST} test images, {junk} junk files in {dst}")


if __name__ == "__main__":
    main()
