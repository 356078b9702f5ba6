"""Measured tolerances: how far each config's numbers move when only the arithmetic changes.

``diagnostics calibrate`` trains the grid once as the reference (the baseline) and once per
perturbation in ``perturb.DEFAULT`` (same maths, other rounding), then ``tolerances`` turns the
deviations into per-config tolerances, committed beside the baseline:

- ``tolerances.csv``, one row per config: for the final loss, the held-out loss and the held-out
  metric, the measured noise (the largest |perturbed - reference| over the perturbations) and the
  tolerance ``max(NOISE_FACTOR * noise, ULP_FLOOR * |reference|)`` (an accuracy's noise is at
  least one held-out example: ``resolution``); the divergence step's noise
  for configs that diverge; and every status the config took under noise (``statuses_seen``,
  over perturbations and, where calibrated with several seeds, seeds), which marks configs that
  sit on a status threshold.
- ``envelope.csv``: per config and step, the reference's training loss and the largest
  |perturbed - reference| loss seen at or before that step (a running maximum: differences
  between trajectories grow, they do not heal). A candidate whose curve leaves NOISE_FACTOR x
  that envelope has changed beyond noise even where its final numbers have not (a systematic
  change shows from the first steps, while rounding noise starts at an ulp and grows).

Precedent: Megatron-LM's ``compute_golden_statistics --recommend-tolerances`` (measure, don't guess).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .report import with_axis_defaults

# A candidate's deviation must exceed the largest deviation seen under the calibration
# perturbations by this factor to count as beyond noise. Measured (benchmarks/noise_factor.py,
# README "Verdicts"): on the default grid, each calibration perturbation held out in turn moved
# the judged values by at most 5.8x the noise the other four measured (floored as below), and
# two rounding-size changes never used for calibration (a split-K matmul, the loss in float64) by
# at most 4.6x; 20 leaves over 3x the largest ratio seen (before the floor was raised to 64 ulps
# ratios of 13 and 18 were seen, on configs whose perturbations agreed to under an ulp).
NOISE_FACTOR = 20.0
# The smallest tolerance, relative to the value: 64 float32 units in the last place. Losses are
# float32 numbers, and a config's perturbations can agree by chance: on gpt-lion-step-linear all
# five moved the final loss by under one ulp, while a held-out split-K matmul moved it by 15.
# 64 ulps (7.6e-6 of the loss) is 4x that, and 10x below the smallest systematic change seen
# (an ignored AdamW weight decay: 1e-4 of the gpt's loss).
ULP_FLOOR = 64 * 2.0**-23
METRICS = ("final_loss", "val_loss", "val_metric")  # judged by compare, lower-is-better except accuracy
TOLERANCE_COLUMNS = (["run_id", "n_perturbations", "perturbations", "statuses_seen", "divergence_step_noise"]
                     + [f"{m}_{k}" for m in METRICS for k in ("reference", "noise", "tol")])
ENVELOPE_COLUMNS = ["run_id", "step", "loss_reference", "loss_noise"]
TOLERANCES, ENVELOPE = "tolerances.csv", "envelope.csv"


def tolerance(reference: float, noise: float) -> float:
    """The tolerance of one value: NOISE_FACTOR x its measured noise, at least ULP_FLOOR of it."""
    return max(NOISE_FACTOR * noise, ULP_FLOOR * abs(reference))


def noise_of(reference: float, perturbed) -> float:
    """Largest |perturbed - reference| over the finite perturbed values (NaN when none is)."""
    values = [abs(v - reference) for v in perturbed if np.isfinite(v)]
    return max(values) if values and np.isfinite(reference) else math.nan


def resolution(run: dict, metric: str) -> float:
    """The smallest step a value can take: one example of the held-out set for an accuracy
    (counted on ``val_samples`` examples, it cannot move by less), 0 for losses. Noise is never
    taken as smaller than that, so one flipped example is not "beyond noise" by construction."""
    if metric == "val_metric" and run.get("val_metric_name") == "val_accuracy" and run.get("val_samples", 0) > 0:
        return 1.0 / float(run["val_samples"])
    return 0.0


def tolerances(reference: pd.DataFrame, perturbed: dict[str, pd.DataFrame], config: list[str]) -> pd.DataFrame:
    """One row per reference run: its config, measured noise and tolerances (module docs).
    ``reference`` and each ``perturbed[name]`` are runs.csv frames of the same grid; a seed
    absent from the perturbed runs gets the config's noise from the seeds that were perturbed,
    and every seed contributes its status to ``statuses_seen``."""
    runs = with_axis_defaults(reference).to_dict("records")
    by_run = {name: df.set_index("run_id").to_dict("index") for name, df in perturbed.items()}
    statuses: dict[tuple, set] = {}
    for r in runs:
        statuses.setdefault(tuple(r[c] for c in config), set()).add(r["status"])
    rows = []
    for r in runs:
        others = [p[r["run_id"]] for p in by_run.values() if r["run_id"] in p]
        if not others:
            continue
        key = tuple(r[c] for c in config)
        statuses[key] |= {o["status"] for o in others}
        row = {c: r[c] for c in config}
        row.update(run_id=r["run_id"], n_perturbations=len(others),
                   perturbations=",".join(n for n, p in by_run.items() if r["run_id"] in p),
                   divergence_step_noise=noise_of(r["divergence_step"], [o["divergence_step"] for o in others]))
        for m in METRICS:
            noise = max(noise_of(r[m], [o[m] for o in others]), resolution(r, m))
            row.update({f"{m}_reference": r[m], f"{m}_noise": noise,
                        f"{m}_tol": tolerance(r[m], noise) if np.isfinite(noise) else math.nan})
        rows.append(row)
    for row in rows:
        row["statuses_seen"] = ",".join(sorted(statuses[tuple(row[c] for c in config)]))
    return pd.DataFrame(rows, columns=config + TOLERANCE_COLUMNS)


def envelope(reference_steps: pd.DataFrame, perturbed_steps: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per perturbed run and step: the reference's loss and the running maximum over steps of
    max |perturbed - reference| loss (the reference trace travels with it, so a candidate's
    curve can be judged against the baseline without its steps.csv)."""
    ref = reference_steps.set_index(["run_id", "step"])["loss"]
    dev = pd.concat([(s.set_index(["run_id", "step"])["loss"] - ref).abs() for s in perturbed_steps.values()],
                    axis=1).max(axis=1, skipna=True).dropna()
    df = dev.rename("loss_noise").reset_index().sort_values(["run_id", "step"])
    df["loss_noise"] = df.groupby("run_id")["loss_noise"].cummax()
    df["loss_reference"] = ref.reindex(pd.MultiIndex.from_frame(df[["run_id", "step"]])).to_numpy()
    return df[ENVELOPE_COLUMNS].reset_index(drop=True)
