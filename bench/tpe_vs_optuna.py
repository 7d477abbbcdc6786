#!/usr/bin/env python3
"""Optuna's TPESampler (constant_liar=True) on the functions of
common/examples/search_bench.rs, in the same asynchronous setting (PARALLEL in
flight, the oldest completes first), then the side-by-side summary.

    python3 bench/tpe_vs_optuna.py RUST_RESULTS.jsonl [BUDGET PARALLEL SEEDS]

RUST_RESULTS.jsonl holds search_bench's lines; the summary is a Markdown table
of the median and quartiles of the best true value found, and the median
regret against the known optimum, then one-sided Mann-Whitney U tests over
the seeds (is one sampler's best worse than the other's?).
"""
import collections
import json
import math
import sys

import numpy as np
import optuna
from scipy.stats import mannwhitneyu

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPTIMUM = {"branin": 0.397887, "hartmann6": -3.32237, "surrogate": 0.10}


def branin(p, _rng):
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    v = (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10
    return v, v


ALPHA = [1.0, 1.2, 3.0, 3.2]
A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
P = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
]


def hartmann6(p, _rng):
    xs = [p[f"x{i}"] for i in range(6)]
    v = -sum(ALPHA[i] * math.exp(-sum(A[i][j] * (xs[j] - P[i][j]) ** 2 for j in range(6))) for i in range(4))
    return v, v


def surrogate(p, rng):
    v = (
        0.10
        + 0.02 * (math.log10(p["lr"]) + 3) ** 2
        + 0.005 * (math.log10(p["weight_decay"]) + 4) ** 2
        + 0.2 * (p["label_smoothing"] - 0.1) ** 2
    )
    return v, v + 0.003 * rng.standard_normal()


SPACES = {
    "branin": (branin, lambda t: {"x1": t.suggest_float("x1", -5, 10), "x2": t.suggest_float("x2", 0, 15)}),
    "hartmann6": (hartmann6, lambda t: {f"x{i}": t.suggest_float(f"x{i}", 0, 1) for i in range(6)}),
    "surrogate": (
        surrogate,
        lambda t: {
            "lr": t.suggest_float("lr", 1e-5, 1e-1, log=True),
            "weight_decay": t.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            "label_smoothing": t.suggest_float("label_smoothing", 0, 0.3),
        },
    ),
}


def optuna_run(fname, seed, budget, parallel):
    f, suggest = SPACES[fname]
    rng = np.random.default_rng(10_000 + seed)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True))
    running = collections.deque()
    proposed = 0
    best = None
    while proposed < budget or running:
        if proposed < budget and len(running) < parallel:
            trial = study.ask()
            running.append((trial, suggest(trial)))
            proposed += 1
            continue
        trial, params = running.popleft()
        truth, observed = f(params, rng)
        study.tell(trial, observed)
        if best is None or observed < best[0]:
            best = (observed, truth)
    return best[1]


def main():
    rust_file = sys.argv[1]
    budget, parallel, seeds = (int(a) for a in sys.argv[2:5]) if len(sys.argv) >= 5 else (60, 4, 20)
    results = collections.defaultdict(list)
    for line in open(rust_file):
        r = json.loads(line)
        results[(r["function"], r["sampler"])].append(r["best"])
    for fname in SPACES:
        for seed in range(seeds):
            results[(fname, "optuna-tpe")].append(optuna_run(fname, seed, budget, parallel))
    print(f"{budget} configurations, {parallel} in flight, {seeds} seeds; optuna {optuna.__version__}")
    print()
    print("| function (optimum) | sampler | median best | quartiles | median regret |")
    print("|---|---|---|---|---|")
    for fname in SPACES:
        for sampler in ["sweepfold-tpe", "optuna-tpe", "random"]:
            v = np.array(results[(fname, sampler)])
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            print(
                f"| {fname} ({OPTIMUM[fname]}) | {sampler} | {med:.4f} | {q1:.4f} to {q3:.4f} | {med - OPTIMUM[fname]:.4f} |"
            )
    # Is sweepfold worse (its best values larger, all minimised)? A one-sided
    # Mann-Whitney U test per function: a small p says it is; a large one
    # that the seeds show no such difference.
    print()
    print("| function | p (sweepfold worse than Optuna) | p (Optuna worse than sweepfold) | p (random worse than sweepfold) |")
    print("|---|---|---|---|")
    for fname in SPACES:
        ours = results[(fname, "sweepfold-tpe")]
        theirs = results[(fname, "optuna-tpe")]
        rand = results[(fname, "random")]
        p_worse = mannwhitneyu(ours, theirs, alternative="greater").pvalue
        p_better = mannwhitneyu(theirs, ours, alternative="greater").pvalue
        p_random = mannwhitneyu(rand, ours, alternative="greater").pvalue
        print(f"| {fname} | {p_worse:.3f} | {p_better:.3f} | {p_random:.2g} |")


if __name__ == "__main__":
    main()
