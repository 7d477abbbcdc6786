#!/usr/bin/env python3
"""numpy's time for what `cargo bench -p coordinator --bench ensemble` does:
soft voting of 20 members of 10,014 x 500 logits (softmax each, mean, argmax),
best of five runs."""
import time

import numpy as np

MEMBERS, ROWS, CLASSES = 20, 10_014, 500
rng = np.random.default_rng(1)
members = [rng.uniform(-10, 10, (ROWS, CLASSES)).astype(np.float32) for _ in range(MEMBERS)]


def soft_vote(members):
    acc = np.zeros((ROWS, CLASSES), dtype=np.float32)
    for m in members:
        e = np.exp(m - m.max(axis=1, keepdims=True))
        acc += e / e.sum(axis=1, keepdims=True)
    acc /= len(members)
    return acc.argmax(axis=1)


best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    soft_vote(members)
    best = min(best, time.perf_counter() - start)
print(f"numpy {np.__version__}: soft voting of {MEMBERS} x {ROWS} x {CLASSES} logits: {best * 1000:.1f} ms")
