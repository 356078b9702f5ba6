"""Verdicts of a run against its baseline row: one home for the baseline rules.

A baseline row is matched on ``BASELINE_KEY`` (same config, same length, same model size). The
check passes when the status is the same and the final loss lies within the band; a status
that got *better* fails too, until the baseline is updated (PyTorch's accuracy CI treats
IMPROVED the same way), so the committed baseline always describes what the suite sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .detect import STATUS_RANK

BASELINE_KEY = ["run_id", "steps", "model_size"]
# Final-loss band: |candidate - baseline| <= max(REL_BAND * |baseline|, ABS_BAND).
# A change of stack (machine, torch release) perturbs a run much as a change of seed does, so the
# band is sized from the seed spread measured on the default CPU grid (5 seeds x 18 configs,
# README "Baseline band"): the largest standard deviation of the final loss was 0.012 nats for
# gpt (0.7% of its loss) and 0.065 for resnet. The band is at least 4 of those standard
# deviations for every config, so a 60-config grid on a new stack raises a false alarm well under
# 1% of the time, while a real change of convergence (tenths of a nat) still fails.
REL_BAND = 0.05
ABS_BAND = 0.3


@dataclass(frozen=True)
class BaselineCheck:
    ok: bool
    label: str  # "match", "no baseline", "status worse", "status better", "loss out of band"
    message: str


def loss_band(baseline_loss: float) -> float:
    return max(REL_BAND * abs(baseline_loss), ABS_BAND)


def key_of(row) -> tuple:
    return tuple(str(row[k]) for k in BASELINE_KEY)


def index_baseline(df: pd.DataFrame) -> dict[tuple, dict]:
    return {key_of(r): r for r in df.to_dict("records")}


def check(row: dict, base: dict | None) -> BaselineCheck:
    """Judge one candidate row against its baseline row (None: there is none)."""
    if base is None:
        return BaselineCheck(True, "no baseline", f"{row['run_id']}: no baseline row for {row['steps']} steps")
    new, old = row["status"], base["status"]
    if new != old:
        better = STATUS_RANK.get(new, 99) < STATUS_RANK.get(old, 99)
        label = "status better" if better else "status worse"
        hint = " (update the baseline with --update-baseline)" if better else ""
        return BaselineCheck(False, label, f"{row['run_id']}: status {old} -> {new}{hint}; {row.get('status_reason', '')}")
    a, b = float(row.get("final_loss", math.nan)), float(base.get("final_loss", math.nan))
    if math.isnan(a) and math.isnan(b):
        return BaselineCheck(True, "match", f"{row['run_id']}: {new}, no final loss on either side")
    band = loss_band(b)
    if math.isnan(a) or math.isnan(b) or abs(a - b) > band:
        return BaselineCheck(False, "loss out of band",
                             f"{row['run_id']}: final loss {a:.4g} vs baseline {b:.4g} (band +/-{band:.3g})")
    return BaselineCheck(True, "match", f"{row['run_id']}: {new}, final loss {a:.4g} vs {b:.4g} (band +/-{band:.3g})")


def merge_baseline(baseline: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """The baseline with this session's rows replacing those of the same key."""
    if baseline is None or baseline.empty:
        return runs.sort_values("run_id", kind="stable").reset_index(drop=True)
    new_keys = {key_of(r) for r in runs.to_dict("records")}
    kept = baseline[[key_of(r) not in new_keys for r in baseline.to_dict("records")]]
    return pd.concat([kept, runs], ignore_index=True).sort_values("run_id", kind="stable").reset_index(drop=True)
