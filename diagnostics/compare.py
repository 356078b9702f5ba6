"""Verdicts: a run against its baseline row (the suites' check), and one report directory
against another (``diagnostics compare``). One home for every comparison rule.

A baseline row is matched on ``BASELINE_KEY`` (same config, same length, same model size). The
check passes when the status is the same and the final loss lies within the band; a status
that got *better* fails too, until the baseline is updated (PyTorch's accuracy CI treats
IMPROVED the same way), so the committed baseline always describes what the suite sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .detect import SKIPPED, STATUS_RANK

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


def load_baseline(path) -> dict[tuple, dict]:
    """Baseline rows by key; {} when the file does not exist (every run: "no baseline")."""
    from . import report

    if not path.exists():
        return {}
    return index_baseline(report.read(path, required=BASELINE_KEY + ["status", "final_loss"]))


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


# --------------------------------------------------------------------------------------------
# comparing two report directories (`diagnostics compare`)
# --------------------------------------------------------------------------------------------

# A config is matched across reports on these columns (device type, not device name), never on
# the run_id text; its seeds are matched on ``seed``.
CONFIG = ["model", "optimizer", "scheduler", "warmup", "device", "precision", "lr_scale", "steps", "model_size"]
VERDICTS = ("identical", "equivalent", "regressed", "improved", "status_changed", "missing", "new", "skipped")
REGRESSIONS = ("regressed",)  # plus status_changed towards a worse status
MIN_SEEDS_FOR_CI = 3  # with fewer seeds a side, the band decides (see REL_BAND / ABS_BAND)
ALPHA = 0.05  # family-wise error rate across configs (Holm-Bonferroni)
N_BOOTSTRAP = 2000  # resamples for the confidence interval of the mean difference
# Cost thresholds: a 2x slowdown (steps/s) or 1.5x more peak memory is news even when the loss
# is fine. Within one machine, run-to-run noise of steps/s here was under 10% (README).
SLOWDOWN = 2.0
MEMORY_GROWTH = 1.5
# Curves: two traces "separate" where their 10-step rolling means differ by more than 5% of the
# initial loss.
CURVE_WINDOW = 10
SEPARATION = 0.05


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


def mean_difference_ci(base, cand, seed: int = 0) -> tuple[float, float, float]:
    """(mean difference cand - base, 95% bootstrap CI low, high), via scipy.stats.bootstrap."""
    from scipy import stats

    base, cand = np.asarray(base, float), np.asarray(cand, float)
    res = stats.bootstrap((cand, base), lambda c, b, axis=-1: c.mean(axis=axis) - b.mean(axis=axis),
                          n_resamples=N_BOOTSTRAP, vectorized=True, random_state=seed, method="percentile")
    return float(cand.mean() - base.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def welch_pvalue(base, cand) -> float:
    from scipy import stats

    if np.std(base) == 0 and np.std(cand) == 0:
        return 0.0 if np.mean(base) != np.mean(cand) else 1.0
    return float(stats.ttest_ind(cand, base, equal_var=False).pvalue)


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


def seed_spread(runs: pd.DataFrame) -> dict[tuple, float]:
    """Std of the final loss over seeds, per config, where a report has >= 2 seeds of it."""
    g = runs.groupby(CONFIG, dropna=False)["final_loss"]
    return {k: float(v) for k, v in g.std().items() if g.count()[k] >= 2 and pd.notna(v)}


def worst(statuses) -> str:
    return max(statuses, key=lambda s: STATUS_RANK.get(s, 99))


def judge_config(b: pd.DataFrame, c: pd.DataFrame, spread: float | None) -> dict:
    """The verdict for one config's seeds (b, c: its runs.csv rows on each side)."""
    out = dict(n_seeds_base=len(b), n_seeds_candidate=len(c), base_status=worst(b["status"]),
               candidate_status=worst(c["status"]), base_final_loss=b["final_loss"].mean(),
               candidate_final_loss=c["final_loss"].mean(), p_value=math.nan)
    out["delta_final_loss"] = out["candidate_final_loss"] - out["base_final_loss"]
    if any(str(r).startswith(SKIPPED) for r in pd.concat([b["status_reason"], c["status_reason"]]).fillna("")):
        return dict(out, verdict="skipped", detail="; ".join(sorted(set(
            r for r in pd.concat([b["status_reason"], c["status_reason"]]).fillna("") if r.startswith(SKIPPED)))))
    seeds = sorted(set(b["seed"]) & set(c["seed"]))
    bs, cs = b.set_index("seed"), c.set_index("seed")
    if seeds and len(seeds) == len(b) == len(c) and all(
            bs.loc[s, "weights_sha256"] == cs.loc[s, "weights_sha256"] and bs.loc[s, "status"] == cs.loc[s, "status"]
            for s in seeds):
        return dict(out, verdict="identical", detail="same weights (sha256) and status for every seed")
    if out["base_status"] != out["candidate_status"]:
        worse = STATUS_RANK.get(out["candidate_status"], 99) > STATUS_RANK.get(out["base_status"], 99)
        return dict(out, verdict="status_changed", regression=worse,
                    detail=f"{out['base_status']} -> {out['candidate_status']}"
                           + ("" if worse else " (an improvement: update the baseline)"))
    base_loss, cand_loss = b["final_loss"].dropna(), c["final_loss"].dropna()
    if base_loss.empty or cand_loss.empty:
        return dict(out, verdict="equivalent", detail=f"same status ({out['base_status']}), no final loss to compare")
    threshold = loss_band(base_loss.mean())
    if len(base_loss) >= MIN_SEEDS_FOR_CI and len(cand_loss) >= MIN_SEEDS_FOR_CI:
        diff, lo, hi = mean_difference_ci(base_loss, cand_loss)
        out.update(ci_low=lo, ci_high=hi, p_value=welch_pvalue(base_loss, cand_loss), threshold=threshold,
                   method=f"bootstrap CI over {len(base_loss)}/{len(cand_loss)} seeds")
        if lo > 0 and diff > threshold:
            return dict(out, verdict="regressed", detail=f"final loss +{diff:.4g}, 95% CI [{lo:.4g}, {hi:.4g}]")
        if hi < 0 and -diff > threshold:
            return dict(out, verdict="improved", detail=f"final loss {diff:.4g}, 95% CI [{lo:.4g}, {hi:.4g}]")
        return dict(out, verdict="equivalent", detail=f"final loss {diff:+.4g}, 95% CI [{lo:.4g}, {hi:.4g}]")
    if spread is not None:
        threshold, how = max(4 * spread, 1e-12), f"4 x the baseline's seed std {spread:.3g}"
    else:
        how = f"band max({REL_BAND:.0%}, {ABS_BAND:g})"
    diff = out["delta_final_loss"]
    out.update(threshold=threshold, method=how)
    if diff > threshold:
        return dict(out, verdict="regressed", detail=f"final loss +{diff:.4g} > {threshold:.3g} ({how})")
    if -diff > threshold:
        return dict(out, verdict="improved", detail=f"final loss {diff:.4g} beyond {threshold:.3g} ({how})")
    return dict(out, verdict="equivalent", detail=f"final loss {diff:+.4g} within {threshold:.3g} ({how})")


def cost_flags(b: pd.DataFrame, c: pd.DataFrame) -> dict:
    speed = b["steps_per_s"].mean() / c["steps_per_s"].mean()
    mem = c["peak_rss_mb"].mean() / b["peak_rss_mb"].mean()
    dev = (c["peak_device_mem_mb"].mean() / b["peak_device_mem_mb"].mean()
           if b["peak_device_mem_mb"].notna().any() and c["peak_device_mem_mb"].notna().any() else math.nan)
    flags = (["slower"] if speed >= SLOWDOWN else []) + (["more_memory"] if max(mem, 0 if math.isnan(dev) else dev)
                                                         >= MEMORY_GROWTH else [])
    return dict(slowdown=speed, rss_ratio=mem, device_mem_ratio=dev, cost=",".join(flags) or "ok")


COMPARE_COLUMNS = (CONFIG + ["run_id", "verdict", "regression", "detail", "base_status", "candidate_status",
                             "n_seeds_base", "n_seeds_candidate", "base_final_loss", "candidate_final_loss",
                             "delta_final_loss", "threshold", "method", "ci_low", "ci_high", "p_value", "p_holm",
                             "first_diff_step", "max_curve_distance", "separation_step", "slowdown", "rss_ratio",
                             "device_mem_ratio", "cost"])


def compare_reports(base_runs: pd.DataFrame, cand_runs: pd.DataFrame, base_steps: pd.DataFrame | None = None,
                    cand_steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per config on either side, with its verdict (see module docs and README)."""
    spreads = seed_spread(base_runs)
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
                             regression=False, detail="only in the " + ("candidate" if b is None else "baseline")))
            continue
        row = dict(cfg, run_id=b["run_id"].iloc[0], regression=False)
        row.update(judge_config(b, c, spreads.get(key)))
        row["regression"] = row["verdict"] in REGRESSIONS or bool(row.get("regression"))
        row.update(cost_flags(b, c))
        dists = []
        for seed in sorted(set(b["seed"]) & set(c["seed"])):
            rb, rc = b[b["seed"] == seed].iloc[0], c[c["seed"] == seed].iloc[0]
            tb, tc = b_trace.get(rb["run_id"]), c_trace.get(rc["run_id"])
            if tb is not None and tc is not None:
                dists.append(curve_distance(tb.set_index("step")["loss"], tc.set_index("step")["loss"],
                                            rb["initial_loss"]))
        if dists:
            row.update(first_diff_step=np.nanmin([d[0] for d in dists]) if any(not math.isnan(d[0]) for d in dists)
                       else math.nan, max_curve_distance=max(d[1] for d in dists),
                       separation_step=min((d[2] for d in dists if not math.isnan(d[2])), default=math.nan))
        rows.append(row)
    df = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    tested = df["p_value"].notna()
    df["p_holm"] = math.nan
    if tested.any():
        df.loc[tested, "p_holm"] = holm(df.loc[tested, "p_value"])
        # a CI-based regression must also survive the correction across configs
        demote = tested & df["verdict"].isin(["regressed", "improved"]) & (df["p_holm"] >= ALPHA)
        df.loc[demote, "detail"] = df.loc[demote, "detail"] + f"; not significant after Holm (alpha {ALPHA})"
        df.loc[demote, "verdict"] = "equivalent"
        df.loc[demote, "regression"] = False
    return df
