"""False alarms and power of compare's verdicts, by simulation through ``compare.compare_reports``
itself (the same pairing, tests, Holm family and verdicts a user's comparison goes through).

Each simulated comparison has 60 configs (the default grid) with n paired seeds a side. Each
config's noise is calibrated as ``diagnostics calibrate`` does: 2 perturbed seeds x (reference + 5
reruns), drawn with sd ``sigma`` per run, pooled (stats.pooled_noise: 10 degrees of freedom).
Candidate runs differ from the baseline's by fresh noise of the same size (a rerun that changed
only rounding); in the power runs one config's final loss is also shifted by the minimum
detectable effect its own comparison states for it (``mde``, or twice that; its held-out loss is
not shifted: the stated mde is the final loss's), so "found" should be at least 80%.

    python benchmarks/statistics.py            # the docs tables (one invocation)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from diagnostics import report
from diagnostics.judge import compare, stats, verdicts

N_CONFIGS = 60  # the default grid
SIGMA = 0.01  # noise of one run, relative to the loss (the difference of two runs has sqrt(2) x that)
PERTURBED_SEEDS, RERUNS = 2, 5  # calibrate's defaults


def reports(rng, n_seeds: int, shift: np.ndarray):
    """(baseline runs, candidate runs, tolerances) of one simulated comparison."""
    cfg = dict(optimizer="adamw", scheduler="cosine", warmup="none", device="cpu", precision="fp32", impl="default",
               compile="none", lr_scale=1.0, steps=200, model_size="tiny", status="converged", status_reason="",
               initial_loss=3.5, loss_floor=0.0, divergence_step=math.nan, steps_per_s=60.0, peak_rss_mb=800.0,
               peak_device_mem_mb=math.nan, val_metric_name="val_loss")
    truth = 2.0 + 0.2 * rng.standard_normal((N_CONFIGS, n_seeds))  # each seed's own level
    base = truth[..., None] * (1 + SIGMA * rng.standard_normal((N_CONFIGS, n_seeds, 2)))  # (final, held-out)
    cand = truth[..., None] * (1 + SIGMA * rng.standard_normal((N_CONFIGS, n_seeds, 2)))
    cand[..., 0] *= 1 + shift[:, None]  # the final loss only: the mde is stated for it
    b_rows, c_rows, t_rows = [], [], []
    for k in range(N_CONFIGS):
        name = dict(cfg, model="gpt", scheduler=f"s{k}")
        for s in range(n_seeds):
            rid = f"c{k}-s{s}"
            b_rows.append(dict(name, run_id=rid, seed=s, final_loss=base[k, s, 0], val_loss=base[k, s, 1],
                               val_metric=base[k, s, 1], weights_sha256="b"))
            c_rows.append(dict(name, run_id=rid, seed=s, final_loss=cand[k, s, 0], val_loss=cand[k, s, 1],
                               val_metric=cand[k, s, 1], weights_sha256="c"))
        calib = 2.0 * (1 + SIGMA * rng.standard_normal((PERTURBED_SEEDS, RERUNS + 1, 2)))
        noise = [stats.pooled_noise(calib[..., v]) for v in range(2)]
        config = {c: name.get(c, report.AXIS_DEFAULTS.get(c)) for c in compare.CONFIG}
        t_rows.append(dict(config, run_id=f"c{k}-s0", statuses_seen="converged",
                           status_flips=0, status_runs=PERTURBED_SEEDS * RERUNS,
                           final_loss_noise=noise[0][0], final_loss_df=noise[0][1], val_loss_noise=noise[1][0],
                           val_loss_df=noise[1][1], val_metric_noise=noise[1][0], val_metric_df=noise[1][1]))
    return pd.DataFrame(b_rows), pd.DataFrame(c_rows), report.with_axis_defaults(pd.DataFrame(t_rows))


def flagged(table) -> np.ndarray:
    """Per config, in config order: is its verdict beyond noise?"""
    order = np.argsort([int(x[1:]) for x in table["scheduler"]])
    return table["verdict"].isin(verdicts.BEYOND_NOISE).to_numpy()[order]


def null_comparison(rng, n_seeds: int) -> bool:
    """One comparison of runs that differ only in rounding: did any config get flagged?"""
    b, c, tol = reports(rng, n_seeds, np.zeros(N_CONFIGS))
    return bool(flagged(compare.compare_reports(b, c, tolerances=tol)).any())


def found_at_stated_mde(rng, n_seeds: int, factor: float) -> tuple[bool, float]:
    """Config 0's final loss shifted by ``factor`` x the mde its comparison states for it: found?
    (and that mde)."""
    b, c, tol = reports(rng, n_seeds, np.zeros(N_CONFIGS))
    stated = compare.compare_reports(b, c, tolerances=tol)
    mde = float(stated.loc[stated["scheduler"] == "s0", "mde"].iloc[0])
    c = c.copy()
    first = c["scheduler"] == "s0"
    c.loc[first, "final_loss"] = c.loc[first, "final_loss"] + factor * mde * b.loc[first, "final_loss"].abs().mean()
    return bool(flagged(compare.compare_reports(b, c, tolerances=tol))[0]), mde


def without_calibration(rng, n_seeds: int, shifted: int = 6, shift: float = 0.05) -> tuple[bool, float, float]:
    """One comparison with no tolerances (the paired seeds are the noise): (any config flagged
    under rounding alone, the median stated mde, the share of ``shifted`` configs whose final
    loss moved by ``shift`` that were found beyond noise)."""
    b, c, _ = reports(rng, n_seeds, np.zeros(N_CONFIGS))
    null = compare.compare_reports(b, c)
    moved = np.zeros(N_CONFIGS)
    moved[:shifted] = shift
    b2, c2, _ = reports(rng, n_seeds, moved)
    found = flagged(compare.compare_reports(b2, c2))[:shifted].mean()
    return bool(flagged(null).any()), float(null["mde"].median()), float(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=150, help="simulated comparisons per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    print(f"{N_CONFIGS} configs, noise {SIGMA:.0%} of the loss per run, calibrated on {PERTURBED_SEEDS} seeds x "
          f"{RERUNS} reruns; alpha {verdicts.ALPHA} family-wise; {args.reps} simulated comparisons per cell\n")
    print("| seeds a side | family-wise false alarms | stated mde (median) | found at its stated mde | found at 2x |")
    print("|---|---|---|---|---|")
    for n in (1, 2, 3, 5, 8):
        alarms = np.mean([null_comparison(rng, n) for _ in range(args.reps)])
        at = [found_at_stated_mde(rng, n, 1.0) for _ in range(args.reps)]
        twice = np.mean([found_at_stated_mde(rng, n, 2.0)[0] for _ in range(args.reps)])
        print(f"| {n} | {alarms:.2%} | {np.median([m for _, m in at]):.2%} | {np.mean([f for f, _ in at]):.1%} | "
              f"{twice:.1%} |", flush=True)
    print("\nwithout calibration (no tolerances: 3 or more paired seeds are their own noise; fewer judge nothing):\n")
    print("| seeds a side | family-wise false alarms | stated mde (median) | 5% shift on 6 configs found |")
    print("|---|---|---|---|")
    for n in (2, 3, 5, 8):
        cells = [without_calibration(rng, n) for _ in range(args.reps)]
        print(f"| {n} | {np.mean([a for a, _, _ in cells]):.2%} | {np.nanmedian([m for _, m, _ in cells]):.2%} | "
              f"{np.mean([f for _, _, f in cells]):.1%} |", flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
