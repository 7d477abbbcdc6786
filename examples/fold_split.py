#!/usr/bin/env python3
"""sweepfold's fold split in plain Python, for teams that want to reproduce it.

The same algorithm as common/src/folds.rs (the contract): rows grouped by
target (classes ascending, rows in file order), each class shuffled by
Fisher-Yates driven by xoshiro256** seeded through SplitMix64 with
derived(seed, class), then dealt round-robin to folds, each class starting
where the previous one stopped.

    python3 examples/fold_split.py path/to/train.csv FOLDS SEED
prints the fold of every row of train.csv, one per line.

    python3 examples/fold_split.py path/to/train.csv FOLDS SEED --split sklearn
prints the folds of `kfold: {split: sklearn}` instead: scikit-learn's own
StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED) on the
target column (needs numpy and scikit-learn 0.22 or later; sweepfold
reproduces it bit for bit, see common/src/folds/sklearn.rs).
"""
import csv
import sys

M = (1 << 64) - 1


def _splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return state, z ^ (z >> 31)


def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M


class Rng:
    """xoshiro256** seeded through SplitMix64."""

    def __init__(self, seed):
        self.s = []
        state = seed & M
        for _ in range(4):
            state, v = _splitmix64(state)
            self.s.append(v)

    @staticmethod
    def derived(seed, stream):
        _, v = _splitmix64(seed ^ ((stream * 0xD1B54A32D192ED03) & M))
        return Rng(v)

    def next_u64(self):
        s = self.s
        result = (_rotl((s[1] * 5) & M, 7) * 9) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def below(self, n):
        """Uniform integer in [0, n), Lemire's method."""
        m = self.next_u64() * n
        if (m & M) < n:
            threshold = ((-n) & M) % n
            while (m & M) < threshold:
                m = self.next_u64() * n
        return m >> 64

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def stratified_folds(targets, k, seed):
    folds = [0] * len(targets)
    by_class = {}
    for row, t in enumerate(targets):
        by_class.setdefault(t, []).append(row)
    nxt = 0
    for cls in range(max(targets) + 1):
        rows = by_class.get(cls, [])
        Rng.derived(seed, cls).shuffle(rows)
        for row in rows:
            folds[row] = nxt
            nxt = (nxt + 1) % k
    return folds


def sklearn_folds(targets, k, seed):
    """The fold of every row under scikit-learn's StratifiedKFold."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    folds = [0] * len(targets)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(skf.split(np.zeros(len(targets)), targets)):
        for row in val:
            folds[row] = fold
    return folds


if __name__ == "__main__":
    args = sys.argv[1:]
    split = "sweepfold"
    if "--split" in args:
        i = args.index("--split")
        split = args[i + 1]
        del args[i : i + 2]
    path, k, seed = args[0], int(args[1]), int(args[2])
    with open(path, newline="") as f:
        targets = [int(r["target"]) for r in csv.DictReader(f)]
    if split == "sklearn":
        folds = sklearn_folds(targets, k, seed)
    elif split == "sweepfold":
        folds = stratified_folds(targets, k, seed)
    else:
        sys.exit(f"unknown --split {split!r}: sweepfold or sklearn")
    for fold in folds:
        print(fold)
