"""Measured noise: how far each config's numbers move when only the arithmetic changes.

``diagnostics calibrate`` trains the grid once as the reference (the baseline, every seed of the
grid) and reruns its first ``--perturb-seeds`` seeds once per perturbation in ``perturb.DEFAULT``
(same maths, other rounding). ``tolerances`` turns those runs into a noise distribution per
config and judged value, committed beside the baseline; compare.py tests candidates against it:

- ``tolerances.csv``, one row per config. For the final loss, the held-out loss, the held-out
  metric and the divergence step: ``<value>_noise``, the standard deviation of the difference of
  two runs that differ only in rounding, and ``<value>_df``, its degrees of freedom
  (``stats.pooled_noise``: the spread of each perturbed seed's reference and reruns, pooled over
  those seeds: 5 perturbations x 2 seeds give 10). A noise is never taken below its value's
  resolution (``noise_floor``). ``statuses_seen``: every status the config took under the
  perturbations; ``status_flips`` of ``status_runs`` perturbed runs took another status than
  their reference (the flip rate a candidate's flips are tested against).
- ``envelope.csv``: per calibrated reference run and step, that run's training loss and the
  noise of the loss at that step (the same pooled estimate, per step), so a candidate's curve is
  judged step by step against the noise at that step.

Precedent: Megatron-LM's ``compute_golden_statistics --recommend-tolerances`` (measure, don't guess).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics import report
from diagnostics.errors import DiagnosticsError
from diagnostics.judge import stats
from diagnostics.paths import ENVELOPE as ENVELOPE  # re-exported: paths is their home
from diagnostics.paths import SEEDS
from diagnostics.paths import TOLERANCES as TOLERANCES

# The smallest noise of a loss, relative to it: 4 float32 units in the last place. A config's
# perturbations can agree by chance (on gpt-lion-step-linear all five moved the final loss by
# under one ulp), and a float32 loss cannot be judged finer than its last bits; the number is
# checked against rounding changes never used for calibration (benchmarks/sensitivity.py, the
# split-K matmul and the float64 loss: docs/concepts/verdicts.md).
ULP_NOISE_FLOOR = 4 * 2.0**-23
METRICS = ("final_loss", "val_loss", "val_metric")  # judged by compare on runs that did not diverge
VALUES = METRICS + ("divergence_step",)  # divergence_step: judged where both sides diverged
# <value>_tail: how far its calibration runs landed (stats.tail_of), which decides how heavy a
# tail one seed's difference is judged with (stats.single_df)
NOISE_COLUMNS = [f"{v}_{k}" for v in VALUES for k in ("reference", "noise", "df", "tail")]
TOLERANCE_COLUMNS = (["run_id", "n_perturbations", "perturbations", "perturbed_seeds", "statuses_seen", "status_flips",
                      "status_runs"] + NOISE_COLUMNS)
ENVELOPE_COLUMNS = ["run_id", "step", "loss_reference", "loss_noise", "loss_df"]


# What one run-step costs in a calibration, by device type, to estimate its duration before it
# starts (``estimate_minutes``): CPU, the default grid on 2 cores with 2 workers, 60 runs of 200
# steps in 100 s (docs "Speed and cost"); CUDA, the nightly grid on one H100 with 4 workers per
# GPU, 138 runs (about 380 steps on average) in about 14 min (docs "A GPU runner"). A rough
# figure for another machine, said as such.
SECONDS_PER_RUN_STEP = {"cpu": 100 / (60 * 200), "cuda": 14 * 60 / (138 * 380)}


def estimate_minutes(specs, perturb_seeds: int = 2, gpus: int = 1) -> tuple[float, int]:
    """(minutes, runs) of ``diagnostics calibrate`` on a grid: its runs once, then its first
    ``perturb_seeds`` seeds once per perturbation (``perturb.default_for`` its devices), at
    SECONDS_PER_RUN_STEP (CUDA's divided over ``gpus``)."""
    from diagnostics.run import perturb

    specs = list(specs)
    if not specs:
        return 0.0, 0
    seeds = sorted({s.seed for s in specs})[:perturb_seeds]
    kind = lambda s: s.device.split(":")[0]  # noqa: E731
    reruns = len(perturb.default_for({kind(s) for s in specs}))
    runs = [(s, 1 + (reruns if s.seed in seeds else 0)) for s in specs]
    per_step = lambda s: SECONDS_PER_RUN_STEP.get(kind(s), SECONDS_PER_RUN_STEP["cuda"]) / (  # noqa: E731
        1 if kind(s) == "cpu" else max(gpus, 1))
    return sum(n * s.steps * per_step(s) for s, n in runs) / 60, sum(n for _, n in runs)


def noise_floor(value: str, reference: float, run: dict) -> float:
    """The finest step a value can be judged at: ULP_NOISE_FLOOR of a loss; one held-out example
    of an accuracy (counted on ``val_samples`` predictions, images or tokens, it cannot move by less); one step of a
    divergence step."""
    if value == "divergence_step":
        return 1.0
    if value == "val_metric" and str(run.get("val_metric_name")).endswith("accuracy") and run.get("val_samples", 0) > 0:
        return 1.0 / float(run["val_samples"])
    return ULP_NOISE_FLOOR * abs(reference) if np.isfinite(reference) else 0.0


def tolerances(reference: pd.DataFrame, perturbed: dict[str, pd.DataFrame], config: list[str]) -> pd.DataFrame:
    """One row per config that has perturbed runs: its measured noise (module docs). ``reference``
    and each ``perturbed[name]`` are runs.csv frames of the same grid (perturbed runs carry the
    reference's run_id); a reference seed with no perturbed rerun adds nothing."""
    ref = reference
    by_name = {name: df.set_index("run_id").to_dict("index") for name, df in perturbed.items()}
    rows = []
    for key, group in ref.groupby(config, dropna=False, sort=True):
        runs = [r for r in group.sort_values("seed").to_dict("records") if any(r["run_id"] in p for p in by_name.values())]
        if not runs:
            continue
        reruns = [[p[r["run_id"]] for p in by_name.values() if r["run_id"] in p] for r in runs]
        first = runs[0]
        row = dict(zip(config, key if isinstance(key, tuple) else (key,)))
        row.update(run_id=first["run_id"], n_perturbations=len(reruns[0]),
                   perturbations=",".join(n for n, p in by_name.items() if first["run_id"] in p),
                   perturbed_seeds=",".join(str(int(r["seed"])) for r in runs),
                   statuses_seen=",".join(sorted({r["status"] for r in runs} | {o["status"] for rr in reruns for o in rr})),
                   status_flips=sum(o["status"] != r["status"] for r, rr in zip(runs, reruns) for o in rr),
                   status_runs=sum(len(rr) for rr in reruns))
        for v in VALUES:
            reference_value = float(np.nanmean([r[v] for r in runs])) if any(np.isfinite(r[v]) for r in runs) else math.nan
            groups = [[r[v]] + [o[v] for o in rr] for r, rr in zip(runs, reruns)]
            noise, df = stats.pooled_noise(groups)
            floor = noise_floor(v, reference_value, first) if df else 0.0
            noise = max(noise, floor) if df else noise
            row.update({f"{v}_reference": reference_value, f"{v}_noise": noise, f"{v}_df": df,
                        f"{v}_tail": stats.tail_of(groups, floor)})
        rows.append(row)
    return pd.DataFrame(rows, columns=config + TOLERANCE_COLUMNS)


def envelope(reference_steps: pd.DataFrame, perturbed_steps: dict[str, pd.DataFrame], reference: pd.DataFrame,
             config: list[str]) -> pd.DataFrame:
    """Per calibrated reference run and step: its loss, and the noise of the loss at that step
    pooled over its config's perturbed seeds (``stats.pooled_noise`` per step, floored at
    ULP_NOISE_FLOOR of the loss). Runs with no perturbed rerun get no rows."""
    ref_loss = reference_steps.set_index(["run_id", "step"])["loss"]
    reruns = [s.set_index(["run_id", "step"])["loss"].rename(n) for n, s in perturbed_steps.items()]
    wide = pd.concat([ref_loss.rename("reference"), *reruns], axis=1, join="inner").sort_index()
    calibrated = set(wide.index.get_level_values("run_id"))
    ref = reference[reference["run_id"].isin(calibrated)]
    out = []
    for _, group in ref.groupby(config, dropna=False, sort=True):
        ids = list(group["run_id"])
        per_run = [wide.xs(i, level="run_id") for i in ids]
        steps = sorted(set.intersection(*(set(w.index) for w in per_run)))
        values = np.stack([w.loc[steps].to_numpy() for w in per_run])  # (runs, steps, 1 + reruns)
        x = np.where(np.isfinite(values), values, np.nan)
        count = np.isfinite(x).sum(axis=2)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step where every run is NaN
            ss = np.nansum((x - np.nanmean(x, axis=2, keepdims=True)) ** 2, axis=2)  # (runs, steps)
        dof = np.clip(count - 1, 0, None)
        ss, dof = np.where(dof > 0, ss, 0).sum(axis=0), dof.sum(axis=0)
        noise = stats.difference_sd(ss, dof)
        for i, w in zip(ids, per_run):
            loss = w.loc[steps, "reference"].to_numpy()
            floor = ULP_NOISE_FLOOR * np.abs(loss)
            out.append(pd.DataFrame(dict(run_id=i, step=steps, loss_reference=loss,
                                         loss_noise=np.where(dof > 0, np.fmax(noise, floor), np.nan), loss_df=dof)))
    if not out:
        return pd.DataFrame(columns=ENVELOPE_COLUMNS)
    return pd.concat(out, ignore_index=True)[ENVELOPE_COLUMNS]


def with_power(tol: pd.DataFrame, margin: float, alpha: float) -> pd.DataFrame:
    """tolerances.csv with, per config, the relative final-loss shift one seed would find
    (``mde_1``) and the paired seeds it needs to find a relative shift of ``margin``
    (``seeds_for_margin``; NaN: more than stats.MAX_SEEDS), each at 80% power and family-wise
    level ``alpha`` over this grid's tests (Bonferroni over its configs x 2 values). compare.py
    passes its MARGIN and ALPHA."""
    tol = tol.copy()
    n_tests = max(2 * len(tol), 1)
    ref = tol["final_loss_reference"].abs().astype(float)
    sig, df = tol["final_loss_noise"].astype(float), tol["final_loss_df"].fillna(0).astype(int)
    tail = tol["final_loss_tail"].astype(float) if "final_loss_tail" in tol else pd.Series(math.nan, index=tol.index)
    tol["mde_1"] = [stats.mde(s, d, 1, alpha / n_tests, one_df=stats.single_df(d, k)) / r if d > 0 and r > 0
                    else math.nan for s, d, r, k in zip(sig, df, ref, tail)]
    tol["seeds_for_margin"] = [stats.seeds_needed(s, d, margin * r, alpha / n_tests) if d > 0 else math.nan
                               for s, d, r in zip(sig, df, ref)]
    return tol


def from_sessions(reference_dir, perturbed_dirs: dict, config: list[str], margin: float, alpha: float):
    """(tolerances, envelope) from a calibration's report folders: the reference session and one
    per perturbation (name -> folder). Raises report.ReportError on an unreadable report."""
    ref_runs = report.read(reference_dir / report.RUNS)
    runs = {n: report.read(d / report.RUNS) for n, d in perturbed_dirs.items()}
    steps = {n: report.read(d / report.STEPS) for n, d in perturbed_dirs.items()}
    tol = with_power(tolerances(ref_runs, runs, config), margin, alpha)
    return tol, envelope(report.read(reference_dir / report.STEPS), steps, ref_runs, config)


class CalibrationFailed(DiagnosticsError):
    """A calibration session that failed; one line."""


def run_sessions(grid, names: list[str], work: Path, perturb_seeds: int, resume: bool,
                 session_command) -> tuple[Path, dict[str, Path]]:
    """The calibration's sessions, in ``work``: the reference (the whole grid, written as the
    baseline), then one per perturbation on the first ``perturb_seeds`` seeds. ``session_command
    (name, changes, extra)`` is the pytest command line of one (the front end's options with
    ``changes`` applied and ``extra`` appended). With ``resume``, a session folder holding all of
    its runs, none of them an error, is reused (one with an error row failed: it is trained
    again). Raises CalibrationFailed when a session fails."""
    import subprocess

    from diagnostics.run import perturb

    def session(name: str, extra: list[str], n_seeds: int, **changes) -> Path:
        folder = work / name
        n_runs = len(grid.specs()) // len(grid.seeds) * n_seeds
        runs = report.read_csv(folder / report.RUNS) if resume and (folder / report.RUNS).exists() else None
        if runs is not None and len(runs) == n_runs and not (runs["status"] == "error").any():
            print(f"calibrate: {name}: reusing the complete session in {folder} (--resume)")
            return folder
        cmd = session_command(name, dict(changes, report_dir=str(folder)), extra)
        print(f"calibrate: {name}: {' '.join(cmd[3:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise CalibrationFailed(f"the {name} session failed (see above); nothing more was calibrated")
        return folder

    ref = session("reference", [], len(grid.seeds), update_baseline=True)
    n = min(perturb_seeds, len(grid.seeds))
    seeds = ",".join(str(x) for x in grid.seeds[:n])
    return ref, {name: session(name, ["--perturb", name], n, seeds=seeds, update_baseline=False, force=False,
                               threads=perturb.PERTURBATIONS[name].threads) for name in names}


def extended(path: Path, new: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """``new`` beside the rows of the table at ``path`` that it does not replace (same ``key``):
    a calibration of some configs extends a baseline's noise, it never drops the others'."""
    if not path.exists() or new.empty:
        return new
    old = report.read_csv(path)
    replaced = {report.config_key(r) for r in new[key].itertuples(index=False)}
    kept = old[[report.config_key(r) not in replaced for r in old[key].itertuples(index=False)]]
    return pd.concat([kept, new], ignore_index=True) if len(kept) else new


def write(target: Path, reference: Path, tol: pd.DataFrame, env: pd.DataFrame) -> None:
    """tolerances.csv and envelope.csv into the baseline folder (extending what it held: the
    configs calibrated here replace their own rows only), with the reference's seeds.csv."""
    import shutil

    report.write_atomic(target / TOLERANCES, extended(target / TOLERANCES, tol, [c for c in report.CONFIG if c in tol]))
    report.write_atomic(target / ENVELOPE, extended(target / ENVELOPE, env, ["run_id"]))
    if (reference / SEEDS).exists():
        shutil.copyfile(reference / SEEDS, target / SEEDS)


def summary_lines(tol: pd.DataFrame, names: list[str], target: Path, margin: float) -> list[str]:
    """What a calibration found, for the terminal: the noise, the configs on a status threshold,
    the configs that need more than one seed to see the margin."""
    rel = (tol["final_loss_noise"] / tol["final_loss_reference"].abs()).replace([float("inf")], float("nan"))
    borderline = tol[tol["statuses_seen"].str.contains(",")]
    blind = tol[~(tol["seeds_for_margin"] <= 1)]
    return [
        f"calibrate: {len(tol)} configs x {len(names)} perturbations ({', '.join(names)}) into {target / TOLERANCES}; "
        f"final-loss noise relative to the loss: median {rel.median():.2g}, max {rel.max():.2g}",
        f"calibrate: {len(borderline)} config(s) on a status threshold"
        + (f": {', '.join(pd.unique(borderline['run_id']))}" if len(borderline) else ""),
        f"calibrate: {len(blind)} config(s) need more than one seed to see a {margin:.0%} change"
        + "".join(f"\n  {r['run_id']}: one seed sees {r['mde_1']:.1%}, the margin needs "
                  + (f"{r['seeds_for_margin']:.0f} seeds" if r["seeds_for_margin"] > 0 else "more than 64 seeds")
                  for r in blind.to_dict("records")),
    ]
