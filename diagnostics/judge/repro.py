"""Reproducibility checks: twice-same, exact resume, seed spread, DDP agreement.

Each check returns ``repro.csv`` rows (run_id, check, result, first_diff_step, max_abs_diff,
detail). ``result`` is ``identical`` (bitwise), ``different`` (first differing step and the largest
difference given), ``close`` / ``far`` (agreement within / beyond a stated tolerance), ``skipped``
(nothing comparable, with the reason), ``error``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics.grid.spec import RunSpec
from diagnostics.judge import compare, verdicts
from diagnostics.paths import REPRO as REPRO  # re-exported: paths is their home
from diagnostics.paths import SEEDS as SEEDS
from diagnostics.run import train

REPRO_COLUMNS = ["run_id", "check", "result", "first_diff_step", "max_abs_diff", "detail"]
SEEDS_COLUMNS = (compare.CONFIG + ["n_seeds", "seeds", "final_loss_mean", "final_loss_std", "final_loss_ci_low",
                                   "final_loss_ci_high", "val_loss_mean", "val_loss_std", "val_loss_ci_low",
                                   "val_loss_ci_high"])
TRACE = ("lr", "loss", "grad_norm")
# CPU vs another device: the first CROSS_STEPS losses agree to CROSS_RTOL (fp32 sums in another
# order: ~1e-7 relative a step, amplified by training; 1e-3 leaves room for a few steps of that)
CROSS_STEPS = 5
CROSS_RTOL = 1e-3
N_BOOTSTRAP = 2000  # resamples of the seed table's bootstrap confidence intervals


def final_loss_agrees(a: float, b: float, tol: float | None) -> tuple[bool, str]:
    """Two runs of one config that differ only in arithmetic (processes, devices): their final
    losses agree within the config's calibrated final-loss noise band (compare.noise_band); where
    none was measured, within the practical margin (verdicts.MARGIN, relative)."""
    limit, how = (tol, "calibrated noise band") if tol else (verdicts.MARGIN * abs(a), f"margin {verdicts.MARGIN:.0%}")
    return abs(a - b) <= limit, f"{how} {limit:.3g}"


def first_difference(a: list[dict], b: list[dict]) -> tuple[float, float]:
    """(first step where lr, loss or grad norm differ bitwise, max |difference| over the trace);
    (NaN, 0.0) when the traces are identical. A length mismatch counts as a difference."""
    fa = pd.DataFrame(a, columns=["step", *TRACE]).set_index("step")
    fb = pd.DataFrame(b, columns=["step", *TRACE]).set_index("step")
    both = fa.merge(fb, left_index=True, right_index=True, how="outer", suffixes=("_a", "_b"))
    first, biggest = math.nan, 0.0
    for col in TRACE:
        x, y = both[f"{col}_a"], both[f"{col}_b"]
        differs = ~((x == y) | (x.isna() & y.isna()))
        if differs.any():
            first = min(first, float(differs.idxmax())) if not math.isnan(first) else float(differs.idxmax())
            biggest = max(biggest, float(np.nanmax(np.abs((x - y).to_numpy()), initial=0.0)))
    return first, biggest


def row(spec: RunSpec, check: str, result: str, first: float = math.nan, biggest: float = math.nan, detail: str = ""):
    return dict(run_id=spec.id, check=check, result=result, first_diff_step=first, max_abs_diff=biggest, detail=detail)


def verdict_row(spec: RunSpec, check: str, a: train.RunResult, b: train.RunResult, what: str) -> dict:
    for r in (a, b):
        if r.status == "error":
            return row(spec, check, "error", detail=r.row["status_reason"])
    first, biggest = first_difference(a.steps, b.steps)
    same_weights = a.row["weights_sha256"] == b.row["weights_sha256"]
    if math.isnan(first) and same_weights:
        return row(spec, check, "identical", first, 0.0, f"{what}: bitwise identical trace and weights")
    detail = f"{what}: " + ("weights differ" if not same_weights else "weights equal") + (
        "" if math.isnan(first) else f"; trace differs from step {first:.0f}")
    return row(spec, check, "different", first, biggest, detail)


def twice_same(spec: RunSpec, **run_kw) -> dict:
    """Train the same config twice in this process: the traces and weights must be bitwise equal."""
    return verdict_row(spec, "twice_same", train.run(spec, **run_kw), train.run(spec, **run_kw), "two runs")


def resume(spec: RunSpec, **run_kw) -> dict:
    """Train N steps; separately N/2, checkpoint, load into fresh objects, continue to N."""
    full = train.run(spec, **run_kw)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "checkpoint.pt"
        half = train.run(spec, stop_after=spec.steps // 2, checkpoint_path=path, **run_kw)
        if half.status == "error" or not path.exists():
            return row(spec, "resume", "error", detail=half.row.get("status_reason", "no checkpoint written"))
        rest = train.run(spec, resume_from=path, **run_kw)
    joined = train.RunResult(rest.row, half.steps + rest.steps)
    return verdict_row(spec, "resume", full, joined, f"resumed at step {spec.steps // 2}")


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per config with >= 2 seeds: mean, std and a 95% bootstrap CI (scipy) of the final and
    held-out losses: the noise floor of comparisons."""
    rows = []
    for key, g in runs.groupby(compare.CONFIG, dropna=False, sort=True):
        if g["seed"].nunique() < 2:
            continue
        out = dict(zip(compare.CONFIG, key), n_seeds=len(g), seeds=",".join(map(str, sorted(g["seed"]))))
        for col in ("final_loss", "val_loss"):
            v = g[col].dropna().to_numpy(float)
            lo, hi = bootstrap_mean_ci(v)
            out.update({f"{col}_mean": v.mean() if len(v) else math.nan,
                        f"{col}_std": v.std(ddof=1) if len(v) > 1 else math.nan,
                        f"{col}_ci_low": lo, f"{col}_ci_high": hi})
        rows.append(out)
    return pd.DataFrame(rows, columns=SEEDS_COLUMNS)


def bootstrap_mean_ci(values: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if len(values) < 2 or np.all(values == values[0]):
        m = float(values.mean()) if len(values) else math.nan
        return m, m
    ci = stats.bootstrap((values,), np.mean, n_resamples=N_BOOTSTRAP, random_state=0,
                         method="percentile").confidence_interval
    return float(ci.low), float(ci.high)


def cross_device(spec: RunSpec, other: str = "cuda", tol: float | None = None, **run_kw) -> dict:
    """The same config on CPU and on ``other``: the first CROSS_STEPS losses agree within a
    tolerance from fp32 rounding (CROSS_RTOL), the final loss as ``final_loss_agrees`` says."""
    from dataclasses import replace

    a = train.run(replace(spec, device="cpu"), **run_kw)
    b = train.run(replace(spec, device=other), **run_kw)
    if a.status == "error" or b.status == "error":
        reasons = "; ".join(r.row["status_reason"] for r in (a, b) if r.status == "error")
        return row(spec, f"cross_device_{other}", "error", detail=reasons)
    first, biggest = first_difference(a.steps, b.steps)
    k = min(CROSS_STEPS, len(a.steps), len(b.steps))
    rel = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a.steps[:k], b.steps[:k]))
    final_ok, how = final_loss_agrees(a.row["final_loss"], b.row["final_loss"], tol)
    ok = rel <= CROSS_RTOL and final_ok
    return row(spec, f"cross_device_{other}", "close" if ok else "far", first, biggest,
               f"first {k} steps max rel diff {rel:.2g} (tolerance {CROSS_RTOL:g}); final loss "
               f"{b.row['final_loss']:.4g} vs {a.row['final_loss']:.4g} on CPU ({how})")


def ddp_check(spec: RunSpec, data_dir: Path, tol: dict | None = None, margin: float = verdicts.MARGIN) -> dict:
    """repro.csv row: the config under DDP (``run.parallel``: 2 gloo ranks on the CPU, a rank per
    GPU over NCCL) against one process on the same global batch, judged as every distributed run
    is (``judge.parallel.against_one_process``: the first gradient within measured rounding, the
    run within ``tol``, the config's measured noise). ``close``, ``far``, ``skipped`` (the reason:
    one GPU, BatchNorm across CPU ranks) or ``unjudged``."""
    from dataclasses import replace

    from diagnostics.judge import parallel
    from diagnostics.run import parallel as ranks

    why = ranks.unsupported(replace(spec, parallel="ddp"), data_dir)  # before any row: a device may be absent
    if why:
        return row(spec, "ddp", "skipped", detail=why)
    distributed = ranks.run(replace(spec, parallel="ddp"), data_dir=data_dir)
    if distributed.status == "skipped":
        return row(spec, "ddp", "skipped", detail=distributed.row["status_reason"])
    single = train.run(spec, data_dir)
    check = parallel.against_one_process(distributed.row, distributed.steps, single.row, single.steps, tol, margin)
    first, biggest = first_difference(single.steps, distributed.steps)
    world = f"{distributed.row.get('world_size')} processes ({distributed.row.get('backend')})"
    return row(spec, "ddp", check["check"], first, biggest, f"{world}: {check['detail']}")

