"""Verdicts: one home for every comparison rule, used alike by the suites' baseline check (one
run against its baseline row) and by ``diagnostics compare`` (one report against another).

Two questions are kept apart: did the numbers change at all (bits), and is the change beyond
what numerical noise explains, and beyond a practical margin?

- ``identical``: every paired seed has the same final weights (``weights_sha256``) and status.
- ``equivalent``: every judged value lies within its config's measured tolerance
  (``calibrate.tolerances``: NOISE_FACTOR x the noise seen when only the arithmetic changes), and
  the loss curve of the calibrated seed stays inside NOISE_FACTOR x the per-step envelope.
- ``changed``: beyond that noise, within the practical ``margin`` (MARGIN).
- ``regressed`` / ``improved``: beyond the noise and beyond the margin, worse / better.
- ``status_changed``: the (worst) status differs and the difference is not noise: the config's
  calibration never saw both statuses, and a stalled/converged flip does not sit within the
  tolerance of the stall line.
- ``missing`` / ``new``: the config (or every one of its seeds) is on one side only.
- ``skipped``: a side could not run it (e.g. no torchvision beside that torch).

Judged values: the final training loss, the held-out loss and the held-out metric (accuracy,
higher is better; for the LM the metric is the held-out loss and is judged once). Diverged runs
are judged on when they diverged (``divergence_step``), not on their last loss.

Seeds are paired by seed. With one paired seed a value is beyond noise when |difference| >
tolerance. With two or more, one test decides: a one-sample t-test on the paired differences of
each value, Bonferroni across the values of the config, then Holm across configs at ALPHA; a
config is beyond noise when that survives *and* the mean difference exceeds the tolerance. Where
no tolerance was measured, any difference counts as beyond noise (only the test can then hold
it back). What fails a check is ``Policy.failure``: a pass that checked nothing never passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import report
from .calibrate import METRICS, NOISE_FACTOR, ULP_FLOOR
from .detect import SKIPPED, STATUS_RANK, Thresholds, stall_line

# A baseline row is matched on these columns (same config, same run length, same model size).
BASELINE_KEY = ["run_id", "steps", "model_size"]
# A config is matched across reports on these columns (device type, not device name), never on
# the run_id text; its seeds are paired on ``seed``.
CONFIG = report.CONFIG  # the columns that name a config (report.py, the CSV contract)
VERDICTS = ("identical", "equivalent", "changed", "regressed", "improved", "status_changed", "missing", "new",
            "skipped")
JUDGED = ("identical", "equivalent", "changed", "regressed", "improved", "status_changed")  # something was checked
# Practical margin: a relative change of 5% in a final or held-out loss (or in the held-out
# accuracy) is a difference a recipe owner acts on. It is the shift the statistics are sized to
# find (5 seeds a side find it >= 90% of the time, README "Verdicts"); for a diverged run, 5% of
# the run's steps earlier or later. ``--margin`` changes it.
MARGIN = 0.05
# Family-wise error rate across the configs of one comparison (Holm-Bonferroni).
ALPHA = 0.01
# Cost thresholds: a 2x slowdown (steps/s) or 1.5x more peak memory is news even when the loss
# is fine. Within one machine, run-to-run noise of steps/s here was under 10% (README).
SLOWDOWN = 2.0
MEMORY_GROWTH = 1.5
# Curves: two traces "separate" where their 10-step rolling means differ by more than 5% of the
# initial loss.
CURVE_WINDOW = 10
SEPARATION = 0.05


@dataclass(frozen=True)
class Policy:
    """Which verdicts fail a check. The defaults fail everything that is not a clean pass:
    a regression, an improvement beyond the margin (the baseline must be updated to describe
    what the suite sees, as PyTorch's accuracy CI treats IMPROVED), a config on one side only."""

    allow_missing: bool = False  # a baseline config the candidate lacks passes
    allow_no_baseline: bool = False  # a candidate config without a baseline passes
    allow_improved: bool = False  # an improvement (or a better status) passes
    fail_on_change: bool = False  # a change beyond noise but within the margin fails

    def failure(self, row: dict) -> str | None:
        """Why this verdict row fails the check, or None when it passes."""
        v, better = row["verdict"], row.get("direction") == "better"
        if v == "regressed" or (v == "status_changed" and not better):
            return "regression"
        if (v == "improved" or (v == "status_changed" and better)) and not self.allow_improved:
            return "improvement beyond the margin: update the baseline, or pass --allow-improved"
        if v == "missing" and not self.allow_missing:
            return "missing from the candidate (--allow-missing to accept)"
        if v == "new" and not self.allow_no_baseline:
            return "no baseline to judge it against (--allow-no-baseline to accept)"
        if v == "changed" and self.fail_on_change:
            return "changed beyond numerical noise (--fail-on-change)"
        return None


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_pvalues(diffs) -> np.ndarray:
    """Two-sided p-values of one-sample t-tests that paired differences have mean 0, over the
    last axis (seeds), vectorised over the others. Exact zeros everywhere give 1; a constant
    nonzero difference (no spread to test against) gives 0; fewer than 2 pairs give NaN."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.shape[-1] < 2:
        return np.full(d.shape[:-1], math.nan)
    constant = np.all(d == d[..., :1], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.asarray(stats.ttest_1samp(d, 0.0, axis=-1).pvalue, dtype=float)
    return np.where(constant, np.where(d[..., 0] == 0, 1.0, 0.0), p)


def config_pvalue(pvalues) -> float:
    """One p-value per config: Bonferroni across its judged values (the smallest times their
    number), so the config's test keeps its level however many values are judged."""
    p = [x for x in pvalues if not math.isnan(x)]
    return min(1.0, len(p) * min(p)) if p else math.nan


def worst(statuses) -> str:
    return max(statuses, key=lambda s: STATUS_RANK.get(s, 99))


def higher_is_better(runs: pd.DataFrame, metric: str) -> bool:
    return metric == "val_metric" and "val_accuracy" in set(runs.get("val_metric_name", pd.Series(dtype=str)).dropna())


def judged_metrics(runs: pd.DataFrame) -> list[str]:
    """The values judged for a config: the LM's metric is its held-out loss, judged once."""
    names = set(runs.get("val_metric_name", pd.Series(dtype=str)).dropna())
    return [m for m in METRICS if m in runs.columns and not (m == "val_metric" and names == {"val_loss"})]


def tolerance_of(tol: dict | None, name: str) -> float:
    """The measured tolerance of a value (``<name>_tol``), 0 where none was measured."""
    if tol is None:
        return 0.0
    if name == "divergence_step":
        noise = tol.get("divergence_step_noise", math.nan)
        return NOISE_FACTOR * noise if pd.notna(noise) else 0.0
    value = tol.get(f"{name}_tol", math.nan)
    return float(value) if pd.notna(value) else 0.0


def judge_value(name: str, b: pd.Series, c: pd.Series, tol: float, sign: int, margin: float, scale: float) -> dict:
    """One value of one config over its paired seeds (b, c indexed by seed). ``sign`` is +1
    where higher is worse; ``scale`` is what the margin is relative to."""
    both = pd.concat([b.rename("b"), c.rename("c")], axis=1).dropna()
    if both.empty:
        return dict(name=name, judged=False)
    d = both["c"] - both["b"]
    mean = float(d.mean())
    worse = sign * mean / max(scale, 1e-12)  # relative change, > 0 = worse
    beyond = abs(mean) > tol
    kind = "same" if not beyond else "worse" if worse > margin else "better" if worse < -margin else "changed"
    return dict(name=name, judged=True, n=len(d), delta=mean, rel=worse, tol=tol, beyond=beyond, kind=kind,
                p=float(paired_pvalues(d.to_numpy()[None])[0]))


def describe(v: dict) -> str:
    """``final_loss +0.012 (0.61% worse) beyond tol 0.001``: the change, its direction in words
    (an accuracy that rose is better), and how it stands against the tolerance."""
    way = "worse" if v["rel"] > 0 else "better" if v["rel"] < 0 else "no change"
    return f"{v['name']} {v['delta']:+.4g} ({abs(v['rel']):.2%} {way})" + (
        f" beyond tol {v['tol']:.3g}" if v["beyond"] else f" within tol {v['tol']:.3g}")


def status_flip_is_noise(base_status: str, cand_status: str, c: pd.DataFrame, tol: dict | None) -> str:
    """Why a status difference is numerical noise, or "" when it is real: calibration saw both
    statuses for this config, or a stalled/converged flip lies within the final-loss tolerance
    of the stall line."""
    seen = set(str(tol.get("statuses_seen", "")).split(",")) if tol else set()
    if {base_status, cand_status} <= seen:
        return f"status {base_status} -> {cand_status} is within noise (calibration saw {', '.join(sorted(seen))})"
    if {base_status, cand_status} == {"converged", "stalled"} and tol is not None:
        t = tolerance_of(tol, "final_loss")
        floor = c["loss_floor"].fillna(0.0) if "loss_floor" in c else 0.0
        line = stall_line(c["initial_loss"], floor, Thresholds())
        if ((c["final_loss"] - line).abs() <= t).all():
            return f"status {base_status} -> {cand_status} on the stall line (within the final-loss tolerance {t:.3g})"
    return ""


def judge_config(b: pd.DataFrame, c: pd.DataFrame, tol: dict | None = None, margin: float = MARGIN) -> dict:
    """The verdict for one config: b, c are its runs.csv rows on each side (one per seed);
    ``tol`` its tolerances.csv row (None: none measured). Multi-seed verdicts carry ``p_value``
    and are final only after ``apply_holm``."""
    out = dict(n_seeds_base=len(b), n_seeds_candidate=len(c), base_status=worst(b["status"]),
               candidate_status=worst(c["status"]), base_final_loss=b["final_loss"].mean(),
               candidate_final_loss=c["final_loss"].mean(), p_value=math.nan, direction="", note="")
    out["delta_final_loss"] = out["candidate_final_loss"] - out["base_final_loss"]
    reasons = pd.concat([b["status_reason"], c["status_reason"]]).fillna("").astype(str)
    if reasons.str.startswith(SKIPPED).any():
        return dict(out, verdict="skipped", detail="; ".join(sorted(set(r for r in reasons if r.startswith(SKIPPED)))))
    seeds = sorted(set(b["seed"]) & set(c["seed"]))
    if not seeds:
        return dict(out, verdict="missing", detail="no seed on both sides")
    b, c = b.set_index("seed").loc[seeds], c.set_index("seed").loc[seeds]
    unpaired = "" if len(seeds) == out["n_seeds_base"] == out["n_seeds_candidate"] else f"judged on paired seeds {seeds}; "
    out.update(base_status=worst(b["status"]), candidate_status=worst(c["status"]))
    if (b["weights_sha256"] == c["weights_sha256"]).all() and (b["status"] == c["status"]).all():
        return dict(out, verdict="identical", detail=unpaired + "same weights (sha256) and status for every seed")
    bs, cs = out["base_status"], out["candidate_status"]
    if bs != cs:
        noise = status_flip_is_noise(bs, cs, c, tol)
        if not noise:
            better = STATUS_RANK.get(cs, 99) < STATUS_RANK.get(bs, 99)
            return dict(out, verdict="status_changed", direction="better" if better else "worse",
                        detail=unpaired + f"{bs} -> {cs}")
        out["note"] = noise
    if bs.startswith("diverged") and cs.startswith("diverged"):
        values = [judge_value("divergence_step", b["divergence_step"], c["divergence_step"],
                              tolerance_of(tol, "divergence_step"), -1, margin, float(b["steps"].iloc[0]))]
    else:
        values = [judge_value(m, b[m], c[m], tolerance_of(tol, m), -1 if higher_is_better(b, m) else 1, margin,
                              abs(float(b[m].mean()))) for m in judged_metrics(b)]
    values = [v for v in values if v["judged"]]
    if len(seeds) >= 2 and values:
        out["p_value"] = config_pvalue([v["p"] for v in values])
    return dict(out, **verdict_from(values, out["note"], unpaired))


def verdict_from(values: list[dict], note: str, prefix: str) -> dict:
    """Combine the judged values: any worse -> regressed; else any better -> improved; else any
    beyond noise -> changed; else equivalent."""
    notes = "; ".join(x for x in (note,) if x)
    if not values:
        return dict(verdict="changed", direction="", detail=prefix + "; ".join(x for x in (notes, "no value to judge") if x))
    kinds = [v["kind"] for v in values]
    verdict = ("regressed" if "worse" in kinds else "improved" if "better" in kinds
               else "changed" if "changed" in kinds else "equivalent")
    shown = [v for v in values if v["beyond"]] or values
    detail = prefix + "; ".join([describe(v) for v in shown] + ([notes] if notes else []))
    direction = {"regressed": "worse", "improved": "better"}.get(verdict, "")
    return dict(verdict=verdict, direction=direction, detail=detail, threshold=values[0]["tol"])


def apply_holm(df: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Multi-seed verdicts beyond noise stand only where their p-value survives Holm across the
    configs that were tested; the others become ``equivalent``."""
    df = df.copy()
    df["p_holm"] = math.nan
    tested = df["p_value"].notna()
    if tested.any():
        df.loc[tested, "p_holm"] = holm(df.loc[tested, "p_value"])
        demote = tested & df["verdict"].isin(["changed", "regressed", "improved"]) & (df["p_holm"] >= alpha)
        df.loc[demote, "detail"] = df.loc[demote, "detail"] + f"; not significant after Holm (alpha {alpha:g})"
        df.loc[demote, "verdict"] = "equivalent"
        df.loc[demote, "direction"] = ""
    return df


def check_run(row: dict, base: dict | None, tol: dict | None = None, margin: float = MARGIN,
              trace: list[dict] | None = None, envelope: pd.DataFrame | None = None) -> dict:
    """The suite's check of one run against its baseline row (None: there is none): a verdict
    row (``verdict``, ``direction``, ``detail``) to hand to ``Policy.failure``. With the run's
    ``trace`` (steps rows) and its calibrated ``envelope``, a curve that leaves it is a change."""
    if base is None:
        return dict(verdict="new", direction="", detail=f"no baseline row for {row['run_id']} ({row['steps']} steps)")
    frame = lambda r: pd.DataFrame([r]).assign(seed=0)  # noqa: E731  (one run: one "seed")
    out = judge_config(frame(base), frame(row), tol, margin)
    if trace and envelope is not None and out["verdict"] not in ("identical", "skipped"):
        out["curve_exit_step"] = envelope_exit(pd.DataFrame(trace).set_index("step")["loss"], envelope)
    return curve_beyond_noise(out)


def curve_distance(base: pd.Series, cand: pd.Series, initial: float) -> tuple[float, float, float]:
    """(first step where the losses differ at all, max |difference| of the rolling means over the
    initial loss, first step where that exceeds SEPARATION); NaN where it never happens."""
    both = pd.concat([base.rename("b"), cand.rename("c")], axis=1, join="inner").sort_index()
    if both.empty:
        return math.nan, math.nan, math.nan
    differ = both.index[(both["b"] != both["c"]) & ~(both["b"].isna() & both["c"].isna())]
    roll = both.rolling(CURVE_WINDOW, min_periods=1).mean()
    dist = (roll["c"] - roll["b"]).abs() / abs(initial)
    apart = dist.index[dist > SEPARATION]
    return (float(differ[0]) if len(differ) else math.nan, float(dist.max()) if dist.notna().any() else math.inf,
            float(apart[0]) if len(apart) else math.nan)


# Rounding noise grows from an ulp at its own pace: one rerun can run ahead of all five
# calibration reruns (a loss computed in float64 left the envelope at step 29 of a ResNet run
# that ended inside every tolerance). So step s is judged against the envelope at step
# ENVELOPE_TIME_SLACK x s: noise may grow up to that much faster than calibration saw.
ENVELOPE_TIME_SLACK = 2.0


def envelope_exit(cand: pd.Series, envelope: pd.DataFrame) -> float:
    """First step where the candidate's loss leaves the calibrated envelope: |cand - reference|
    beyond NOISE_FACTOR x the noise seen by step ENVELOPE_TIME_SLACK x that step (at least
    ULP_FLOOR of the loss); NaN if never."""
    env = envelope.set_index("step").sort_index()
    later = env["loss_noise"].reindex(np.ceil(ENVELOPE_TIME_SLACK * env.index.to_numpy()).astype(int), method="ffill")
    later.index = env.index
    both = pd.concat([cand.rename("c"), env["loss_reference"].rename("b"), later.fillna(env["loss_noise"].iloc[-1])
                      .rename("n")], axis=1, join="inner").sort_index()
    limit = np.maximum(NOISE_FACTOR * both["n"], ULP_FLOOR * both["b"].abs())
    out = both.index[(both["c"] - both["b"]).abs() > limit]
    return float(out[0]) if len(out) else math.nan


def curve_beyond_noise(row: dict) -> dict:
    """An ``equivalent`` config whose loss curve left the calibrated envelope has changed beyond
    noise (a systematic change shows early; its final numbers may still sit inside the noise)."""
    exit_step = row.get("curve_exit_step", math.nan)
    if row["verdict"] == "equivalent" and isinstance(exit_step, float) and not math.isnan(exit_step):
        row.update(verdict="changed", detail=f"loss curve left the calibrated envelope at step {exit_step:.0f}; "
                                             + row["detail"])
    return row


def cost_flags(b: pd.DataFrame, c: pd.DataFrame) -> dict:
    speed = b["steps_per_s"].mean() / c["steps_per_s"].mean()
    mem = c["peak_rss_mb"].mean() / b["peak_rss_mb"].mean()
    dev = (c["peak_device_mem_mb"].mean() / b["peak_device_mem_mb"].mean()
           if b["peak_device_mem_mb"].notna().any() and c["peak_device_mem_mb"].notna().any() else math.nan)
    flags = (["slower"] if speed >= SLOWDOWN else []) + (["more_memory"] if max(mem, 0 if math.isnan(dev) else dev)
                                                         >= MEMORY_GROWTH else [])
    return dict(slowdown=speed, rss_ratio=mem, device_mem_ratio=dev, cost=",".join(flags) or "ok")


COMPARE_COLUMNS = (CONFIG + ["run_id", "verdict", "direction", "failure", "detail", "base_status",
                             "candidate_status", "n_seeds_base", "n_seeds_candidate", "base_final_loss",
                             "candidate_final_loss", "delta_final_loss", "threshold", "p_value", "p_holm",
                             "first_diff_step", "curve_exit_step", "max_curve_distance", "separation_step",
                             "slowdown", "rss_ratio", "device_mem_ratio", "cost"])


def index_by_config(df: pd.DataFrame | None) -> dict[tuple, dict]:
    """tolerances.csv rows by config key."""
    if df is None or df.empty:
        return {}
    return {tuple(r[c] for c in CONFIG): r for r in df.to_dict("records")}


def config_key(values) -> tuple:
    """A config key with numbers normalised (so 1 and 1.0, "200" and 200 match)."""
    return tuple(float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)
                 for v in values)


def compare_reports(base_runs: pd.DataFrame, cand_runs: pd.DataFrame, base_steps: pd.DataFrame | None = None,
                    cand_steps: pd.DataFrame | None = None, tolerances: pd.DataFrame | None = None,
                    envelope: pd.DataFrame | None = None, margin: float = MARGIN,
                    policy: Policy | None = None) -> pd.DataFrame:
    """One row per config on either side, with its verdict and whether it fails ``policy``."""
    policy = policy or Policy()
    base_runs, cand_runs = report.with_axis_defaults(base_runs), report.with_axis_defaults(cand_runs)
    tolerances = None if tolerances is None else report.with_axis_defaults(tolerances)
    tols = {config_key(k): v for k, v in index_by_config(tolerances).items()}
    env = dict(iter(envelope.groupby("run_id"))) if envelope is not None and not envelope.empty else {}
    b_groups = dict(iter(base_runs.groupby(CONFIG, dropna=False, sort=True)))
    c_groups = dict(iter(cand_runs.groupby(CONFIG, dropna=False, sort=True)))
    b_trace = dict(iter(base_steps.groupby("run_id"))) if base_steps is not None else {}
    c_trace = dict(iter(cand_steps.groupby("run_id"))) if cand_steps is not None else {}
    rows = []
    for key in sorted(set(b_groups) | set(c_groups), key=str):
        cfg = dict(zip(CONFIG, key))
        b, c = b_groups.get(key), c_groups.get(key)
        if b is None or c is None:
            side = c if b is None else b
            rows.append(dict(cfg, run_id=side["run_id"].iloc[0], verdict="new" if b is None else "missing",
                             direction="", detail="only in the " + ("candidate" if b is None else "baseline")))
            continue
        tol = tols.get(config_key(key))
        row = dict(cfg, run_id=b["run_id"].iloc[0])
        row.update(judge_config(b, c, tol, margin))
        row.update(cost_flags(b, c))
        row.update(curves(b, c, b_trace, c_trace, env.get(tol["run_id"]) if tol else None, tol["run_id"] if tol else None))
        rows.append(curve_beyond_noise(row))
    df = apply_holm(pd.DataFrame(rows, columns=[*COMPARE_COLUMNS, "note"]))
    df["failure"] = [policy.failure(r) or "" for r in df.to_dict("records")]
    return df[COMPARE_COLUMNS]


def curves(b: pd.DataFrame, c: pd.DataFrame, b_trace: dict, c_trace: dict, env: pd.DataFrame | None,
           env_run: str | None) -> dict:
    """Curve distances over the paired seeds whose traces both reports have, and where the
    candidate run of the calibrated seed (``env_run``) leaves the envelope."""
    dists, out = [], {}
    for seed in sorted(set(b["seed"]) & set(c["seed"])):
        rb, rc = b[b["seed"] == seed].iloc[0], c[c["seed"] == seed].iloc[0]
        tc = c_trace.get(rc["run_id"])
        if tc is not None and env is not None and rb["run_id"] == env_run:
            out["curve_exit_step"] = envelope_exit(tc.set_index("step")["loss"], env)
        tb = b_trace.get(rb["run_id"])
        if tb is not None and tc is not None:
            dists.append(curve_distance(tb.set_index("step")["loss"], tc.set_index("step")["loss"], rb["initial_loss"]))
    if dists:
        out.update(first_diff_step=min((d[0] for d in dists if not math.isnan(d[0])), default=math.nan),
                   max_curve_distance=max(d[1] for d in dists),
                   separation_step=min((d[2] for d in dists if not math.isnan(d[2])), default=math.nan))
    return out


def versions_line(report_dir: Path, runs) -> str:
    """torch / CUDA / device of a report, from its env.csv (else its first row)."""
    env = {}
    if (report_dir / report.ENV).exists():
        env = dict(report.read(report_dir / report.ENV).fillna("").itertuples(index=False))
    first = runs.iloc[0].to_dict() if len(runs) else {}
    get = lambda k: env.get(k) or ("" if pd.isna(first.get(k, "")) else first.get(k, ""))  # noqa: E731
    devices = ",".join(sorted(set(runs["device_name"].dropna().astype(str)))) if "device_name" in runs else ""
    return (f"torch {get('torch_version')}, CUDA {get('cuda_version') or '-'}, python {get('python_version')}, "
            f"devices {devices or get('available_devices')}")


def read_report_runs(path: Path, need: list[str]):
    """A report's runs.csv with the columns compare needs; a truncated row (no status or
    run_id) is bad input, never a run."""
    df = report.read(path / report.RUNS, required=need)
    broken = df["run_id"].isna() | df["status"].isna()
    if broken.any():
        i = int(broken.idxmax())
        raise report.ReportError(f"{path / report.RUNS}: data row {i + 1} has no run_id or status (truncated file?)")
    return df


def read_tolerances(base_dir: Path, option: str | None):
    """(tolerances, envelope) beside the baseline or at --tolerances (a file or its folder);
    (None, None) when the baseline was never calibrated and no --tolerances was given."""
    from . import calibrate

    folder = Path(option) if option else base_dir
    path = folder if folder.suffix == ".csv" else folder / calibrate.TOLERANCES
    if not path.exists():
        if option:
            raise report.ReportError(f"{path}: no such file (--tolerances)")
        return None, None
    tol = report.read(path, required=CONFIG + ["run_id", "statuses_seen", "final_loss_tol"])
    env_path = path.with_name(calibrate.ENVELOPE)
    env = report.read(env_path, required=calibrate.ENVELOPE_COLUMNS) if env_path.exists() else None
    return tol, env


# the runs.csv columns a comparison reads
COMPARE_NEEDS = CONFIG + ["run_id", "seed", "status", "status_reason", "final_loss", "initial_loss", "val_loss",
                          "val_metric", "divergence_step", "weights_sha256", "steps_per_s", "peak_rss_mb",
                          "peak_device_mem_mb"]


def load_pair(base_dir: Path, cand_dir: Path, tolerances: str | None = None):
    """(base runs, candidate runs, [base steps, candidate steps], tolerances, envelope) of two
    report directories, as ``compare_reports`` takes them; raises report.ReportError (one line)."""
    base, cand = (read_report_runs(Path(d), COMPARE_NEEDS) for d in (base_dir, cand_dir))
    steps = [report.read(Path(d) / report.STEPS, required=["run_id", "step", "loss"])
             if (Path(d) / report.STEPS).exists() else None for d in (base_dir, cand_dir)]
    tol, env = read_tolerances(Path(base_dir), tolerances)
    return base, cand, steps, tol, env


def failures(table: pd.DataFrame) -> list[str]:
    """One line per failing config, and one for a comparison that judged nothing."""
    lines = [f"{r['verdict'].upper()} {r['run_id']}: {r['failure']}: {r['detail']}"
             for r in table.to_dict("records") if r["failure"]]
    if not table["verdict"].isin(JUDGED).any():
        lines.append(f"nothing was judged: {len(table)} configs, none compared against a baseline")
    return lines
