"""Stability sweep statistics: the stability edge and the LR sensitivity of a recipe.

Both are computed per config (everything but the LR multiplier) over the runs of a session
that tried two or more multipliers, and written to ``stability.csv``.

- stability edge: the largest LR multiplier whose run still converged (``converged`` or
  ``unstable``); NaN when none did.
- LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
  instabilities", section 3.1): the mean, over the multipliers tried, of
  ``min(loss, initial) - best``, where ``loss`` is the held-out loss at the end of the run
  (non-finite counts as ``initial``), ``initial`` the loss at initialisation (the same for every
  LR; here the lowest early training loss of the sweep's runs) and ``best`` the lowest capped
  loss of the sweep. 0 means every LR did as well as the best; large means the recipe is fragile
  in its LR.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from diagnostics import detect, report
from diagnostics.paths import STABILITY as STABILITY  # re-exported: paths is their home

# a config of the sweep: every config column but lr_scale (swept), per seed
CONFIG = [c if c != "lr_scale" else "seed" for c in report.CONFIG]
CONVERGED = detect.CONVERGED  # the statuses that count as converged (detect.STATUS_TABLE)
COLUMNS = CONFIG + ["lr_scales", "statuses", "stability_edge", "lr_sensitivity", "best_lr_scale", "best_val_loss"]


def stability_edge(scales, statuses) -> float:
    ok = [s for s, st in zip(scales, statuses) if st in CONVERGED]
    return max(ok) if ok else math.nan


def capped_losses(losses, initial: float) -> np.ndarray:
    """Each loss capped at the initial loss; a non-finite or missing loss counts as initial."""
    losses = np.asarray(losses, dtype=float)
    return np.where(np.isfinite(losses), np.minimum(losses, initial), initial)


def lr_sensitivity(losses, initial: float) -> float:
    capped = capped_losses(losses, initial)
    return float(np.mean(capped - capped.min()))


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per config that was run at two or more LR multipliers."""
    rows = []
    for key, g in runs.groupby(CONFIG, dropna=False, sort=True):
        if g["lr_scale"].nunique() < 2:
            continue
        g = g.sort_values("lr_scale")
        initial = float(np.nanmin(g["initial_loss"])) if g["initial_loss"].notna().any() else math.inf
        capped = capped_losses(g["val_loss"], initial)
        best = int(np.argmin(capped))
        rows.append(dict(zip(CONFIG, key),
                         lr_scales=",".join(f"{x:g}" for x in g["lr_scale"]),
                         statuses=",".join(g["status"]),
                         stability_edge=stability_edge(g["lr_scale"], g["status"]),
                         lr_sensitivity=lr_sensitivity(g["val_loss"], initial),
                         best_lr_scale=float(g["lr_scale"].iloc[best]),
                         best_val_loss=float(capped[best])))
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(stab: pd.DataFrame) -> str:
    """One line per model x optimizer: stability edge and LR sensitivity, warmup none vs linear."""
    lines = ["stability edge (largest LR multiplier that converged) and LR sensitivity, warmup none | linear:"]
    for (model, opt, sched), g in stab.groupby(["model", "optimizer", "scheduler"], sort=True):
        by = {w: r for w, r in zip(g["warmup"], g.to_dict("records"))}
        cells = [f"x{by[w]['stability_edge']:g} / {by[w]['lr_sensitivity']:.3f}" if w in by else "-"
                 for w in ("none", "linear")]
        lines.append(f"  {model:<8} {opt:<6} {sched:<16} {cells[0]:>16} | {cells[1]}")
    return "\n".join(lines)
