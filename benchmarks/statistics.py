"""False alarms and power of the multi-seed verdict (compare.py), by simulation.

The decision simulated is compare's own: per config, a one-sample t-test on the paired
(by seed) differences of each judged value (``compare.paired_pvalues``), Bonferroni across the
values (``compare.config_pvalue``), Holm across the configs at ``compare.ALPHA``; no measured
tolerance (which could only remove findings). Paired differences are drawn as
``shift + noise * N(0, 1)`` relative to the loss: ``noise`` is the spread of the difference
between two runs of one seed (numerical noise, or the seed spread where the seeds' initial
weights differ between the sides).

    python benchmarks/statistics.py            # the README tables (one invocation)
"""

from __future__ import annotations

import argparse

import numpy as np

from diagnostics import compare

N_CONFIGS = 60  # the default grid
N_VALUES = 2  # final loss and held-out loss (the LM's metric is its held-out loss)


def flagged(rng, reps: int, n_seeds: int, noise: float, shift=0.0, n_configs: int = N_CONFIGS,
            alpha: float = compare.ALPHA) -> np.ndarray:
    """(reps, n_configs) booleans: which configs compare would call beyond noise."""
    shift = np.broadcast_to(np.asarray(shift, float), (n_configs,))[None, :, None, None]
    d = shift + noise * rng.standard_normal((reps, n_configs, N_VALUES, n_seeds))
    p = compare.paired_pvalues(d)  # (reps, configs, values)
    p_config = np.minimum(1.0, N_VALUES * p.min(axis=-1))
    return np.array([np.asarray(compare.holm(row)) < alpha for row in p_config])


def family_wise_rate(rng, reps: int, n_seeds: int, noise: float) -> float:
    """Share of comparisons with no real change in which any config is flagged."""
    return float(flagged(rng, reps, n_seeds, noise).any(axis=1).mean())


def power(rng, reps: int, n_seeds: int, noise: float, shift: float = 0.05) -> float:
    """Share of comparisons in which one config shifted by ``shift`` among unchanged ones is flagged."""
    shifts = np.zeros(N_CONFIGS)
    shifts[0] = shift
    return float(flagged(rng, reps, n_seeds, noise, shifts)[:, 0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"family-wise false-alarm rate, {N_CONFIGS} unchanged configs, alpha {compare.ALPHA} "
          f"({args.reps} simulated comparisons each)")
    print("| seeds a side | rate |\n|---|---|")
    for n in (2, 3, 5, 8):
        print(f"| {n} | {family_wise_rate(rng, args.reps, n, 0.01):.2%} |")
    print(f"\npower: one config shifted by 5% among {N_CONFIGS - 1} unchanged ones, found (changed or beyond)")
    noises = (0.0025, 0.005, 0.0075, 0.01, 0.02)
    print("| seeds a side | " + " | ".join(f"noise {x:.2%}" for x in noises) + " |")
    print("|---|" + "---|" * len(noises))
    for n in (2, 3, 5, 8):
        print(f"| {n} | " + " | ".join(f"{power(rng, args.reps, n, x):.1%}" for x in noises) + " |")


if __name__ == "__main__":
    main()
