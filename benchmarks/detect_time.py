"""Cost of the detection rules per logged point: ``detect.classify`` (the streaming Monitor's
rules, then the end-of-run ones) on generated logs of N points (a decaying loss with 2% noise and
a gradient norm with 5%), median of ``--rounds`` timings.

    python benchmarks/detect_time.py [--points 2000] [--rounds 5]

To compare two versions of the rules, run it from each checkout alternately (PYTHONPATH=CHECKOUT)
so machine noise hits both alike; docs/measured/index.md gives the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from diagnostics.detect import classify


def log(n: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1)
    loss = 1.0 + 3.0 * np.exp(-t / (n / 5)) * (1 + 0.02 * rng.standard_normal(n))
    grad = 1.0 + 0.05 * rng.standard_normal(n)
    return list(zip(t.tolist(), loss.tolist(), grad.tolist(), [1e-3] * n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = log(args.points)
    classify(rows[:50])  # imports and first-call costs out of the timing
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        classify(rows)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{args.points} points: {med:.3f} s a log, {1e6 * med / args.points:.0f} µs a point (median of {args.rounds})")


if __name__ == "__main__":
    main()
