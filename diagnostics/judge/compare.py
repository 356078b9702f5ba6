"""Verdicts: one home for every comparison rule, used alike by the suites' baseline check (one
run against its baseline row) and by ``diagnostics compare`` (one report against another), and
through it by ``release``, ``bisect`` and ``changelog``. The verdicts themselves and the policy
live in verdicts.py, the pairing of seeds in pairing.py; here: the tests and the ladder.

Two questions are kept apart: did the numbers change at all (bits), and is the change beyond
what numerical noise explains, and beyond a practical margin?

- ``identical``: every baseline seed is paired, and every pair has the same final weights
  (``weights_sha256``) and status.
- ``equivalent``: no judged value, no status and no curve is beyond noise. The row's ``mde``
  says how large a shift of the final loss this comparison would have found.
- ``changed``: beyond noise, within the practical margin (``--margin``, MARGIN).
- ``regressed`` / ``improved``: beyond noise and beyond the margin, worse / better.
- ``status_changed``: a paired seed took a status that noise never produced for this config, or
  more seeds flipped than the calibrated flip rate explains.
- ``missing``: a baseline seed (or a judged value of one) is absent from the candidate or empty.
- ``new``: candidate seeds with no baseline partner (no baseline row, other data, other initial
  weights).
- ``skipped``: every seed was skipped on a side (the rows say why); a config with some seeds
  skipped is judged on the others.
- ``unjudged``: seeds were paired but nothing could be judged (errors on both sides, no values,
  or bits that changed where neither calibrated noise nor 3 paired seeds judge them).

**Pairs are checked, not assumed.** Seeds pair by ``seed`` within a config, and only when both
sides trained on the same data (``data_sha256``) from the same initial weights (``init_sha256``,
where both recorded one); otherwise the baseline seed is missing and the candidate's is new.

**The test** (stats.py). Each judged value (final training loss, held-out loss, held-out metric;
the divergence step where both runs diverged; the loss curve) is tested on its own: the paired
differences against the config's calibrated noise (calibrate.py), pooled with their own spread.
One seed and several go through the same test, and its power grows with seeds. All the tests of a
comparison are corrected together: Holm's step-down holds their family-wise error at ALPHA. A value beyond
noise is then ``regressed``/``improved`` if its mean relative change is beyond the margin in that
direction, else ``changed``. The curve is tested step by step against the per-step noise
(Bonferroni over steps). A value or curve with no calibrated noise is not tested: a difference
judged without any noise is never called beyond noise, and a config whose bits changed with no
noise measured for any of its values is ``unjudged`` (a check that checked nothing fails).

**Statuses** are compared seed by seed. A flip among the threshold statuses (converged, unstable,
stalled: SOFT_STATUSES) or between two statuses the config took under calibration's perturbations
is noise-like: the number of such flips is tested against the calibrated flip rate (a binomial
test corrected with the others, the rate estimated by Laplace's rule so a flip never seen in calibration
still has a rate). A flip to or from a divergence or an error that calibration never saw is
``status_changed`` outright.

What fails a check is ``Policy.failure``: a pass that checked nothing never passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics import report
from diagnostics.detect import BY_THRESHOLD, NO_RESULT, STATUS_RANK
from diagnostics.judge import stats
from diagnostics.judge.calibrate import METRICS
from diagnostics.judge.pairing import PAIRING, Pairing, init_verdict, pair
from diagnostics.judge.verdicts import ALPHA, INIT_CHANGED, JUDGED, MARGIN, MEMORY_GROWTH, SLOWDOWN, Policy, is_diverged, worst
from diagnostics.report import config_key, key_value  # noqa: F401 (their home is the schema's)

# A baseline row is matched on these columns (same config, same run length, same model size).
BASELINE_KEY = ["run_id", "steps", "model_size"]
# A config is matched across reports on these columns (device type, not device name), never on
# the run_id text; its seeds are paired on ``seed``.
CONFIG = report.CONFIG  # the columns that name a config (report.py, the CSV contract)


# The environment columns that make two reports "the same environment" (a control, not a release).
ENVIRONMENT = ("torch_version", "torchvision_version", "cuda_version", "python_version", "platform", "cpu_model",
               "device_name")


# ------------------------------------------------------------------------------------------
# what is judged, and in which direction
# ------------------------------------------------------------------------------------------


LOSS_AS_METRIC = "val_loss"  # an LM's val_metric before it was the next-token accuracy: the loss again


def metric_names(model: str, b: list[dict], c: list[dict]) -> set:
    """The held-out metrics a config's two sides measured (``val_metric_name``). A report written
    before that column existed measured what its model's task did then: an image model's
    accuracy, an LM's loss again (``LOSS_AS_METRIC``); a model the registry does not know, nothing
    to judge."""
    from diagnostics.grid.models import MODELS

    old = {"image": "val_accuracy", "lm": LOSS_AS_METRIC}.get(MODELS[model].task) if model in MODELS else None
    names = set()
    for side in (b, c):
        named = {r["val_metric_name"] for r in side if pd.notna(r.get("val_metric_name"))}
        names |= named or ({old} if old else {None})
    return names


def judged_values(metric_names: set) -> list[tuple[str, int]]:
    """(value, sign) pairs judged on runs that did not diverge; sign +1 where higher is worse.
    ``val_metric`` (an accuracy: higher is better) is judged where both sides measured the same
    metric (``metric_names``: the config's ``val_metric_name`` values on both sides); a report
    whose LM metric was the loss again (``LOSS_AS_METRIC``) has no second signal to judge."""
    same = len(metric_names) == 1 and not metric_names & {LOSS_AS_METRIC, None}
    return [(m, -1 if m == "val_metric" else 1) for m in METRICS if m != "val_metric" or same]


def noise_of(tol: dict | None, value: str) -> tuple[float, int]:
    """(noise of a paired difference, degrees of freedom) of a value from its tolerances.csv row;
    (NaN, 0) where none was measured."""
    if tol is None:
        return math.nan, 0
    sigma, df = tol.get(f"{value}_noise", math.nan), tol.get(f"{value}_df", 0)
    if pd.isna(sigma) or pd.isna(df) or int(df) < 1:
        return math.nan, 0
    return float(sigma), int(df)


def noise_band(tol: dict | None, value: str = "final_loss") -> float | None:
    """The largest difference one seed can show and stay within noise in a single test at ALPHA
    (the critical t times the value's noise); None where no noise was measured. For checks of one
    pair outside a comparison (repro.py: DDP, cross-device)."""
    sigma, df = noise_of(tol, value)
    return None if not np.isfinite(sigma) else float(stats.t_isf(ALPHA / 2, df) * sigma)


# ------------------------------------------------------------------------------------------
# one config: its tests (raw p-values), then its verdict once the comparison's p-values are adjusted
# ------------------------------------------------------------------------------------------


CALIBRATED, PAIRED_SEEDS, NO_NOISE = "calibrated", "paired seeds", "none"  # compare.csv's noise_source


@dataclass
class ValueTest:
    """The test of one judged value (or of the loss curve, ``name`` "curve") of one config: what
    ``verdict_of`` reads once the comparison set ``p_adj``."""

    name: str  # final_loss, val_loss, val_metric, divergence_step, curve
    n: int  # paired seeds with the value on both sides
    sign: int = 1  # +1: a rise is worse (a loss); -1: a rise is better (an accuracy, a later divergence)
    empty: list = field(default_factory=list)  # candidate seeds whose value is empty where the baseline's is not
    sigma: float = math.nan  # the noise: sd of one difference (calibrated, or the paired seeds' spread)
    df: float = 0  # its degrees of freedom (0: the paired seeds' own)
    one_df: float = stats.SINGLE_TAIL_DF  # the df one difference is judged with (stats.single_df)
    noise: str = NO_NOISE  # CALIBRATED, PAIRED_SEEDS or NO_NOISE
    scale: float = math.nan  # what ``rel`` is relative to
    delta: float = math.nan  # the mean paired difference (or the far seed's)
    mean: float = math.nan  # the mean paired difference
    rel: float = math.nan  # ``delta`` relative to ``scale``, signed so that + is worse
    seed: int | None = None  # the seed ``delta`` is of, when one seed far outside the noise decided
    unmeasured: bool = False  # bits moved where no noise judges them
    exit_step: float = math.nan  # curve: the first step beyond noise
    p: float = math.nan  # raw p-value (NaN: nothing tested)
    p_adj: float = math.nan  # after the comparison's correction (Holm; Bonferroni in a run's check)


@dataclass
class StatusTest:
    """The seed-by-seed status comparison of one config (``status_test``)."""

    real: list  # (seed, base status, candidate status): flips noise does not explain
    noisy: list  # flips noise can explain, tested against the calibrated flip rate
    unmeasured: list  # threshold flips with no flip rate to judge them by
    notes: list = field(default_factory=list)
    p: float = math.nan  # the binomial test of ``noisy`` (NaN: none)
    p_adj: float = math.nan
    name: str = "status"


@dataclass
class TogetherTest:
    """Configs sharing a path that moved together (``together_tests``)."""

    axis: str  # optimizer, scheduler or precision
    value: str  # its value: adamw, ...
    n: int  # configs judged on calibrated noise
    up: int  # of them, moved up
    median: float  # median standardised difference (calibrated sigmas)
    configs: list  # their run ids
    p: float = math.nan
    p_adj: float = math.nan
    name: str = "together"


@dataclass
class Judgement:
    """Everything about one config before the comparison's p-values are adjusted (``config_tests``)."""

    pairing: Pairing
    statuses: StatusTest
    tests: list  # ValueTest: the values', then the curve's
    identical: bool  # every pair: same weights and status
    n_pairs: int
    errors_both: int  # pairs that errored on both sides
    sides: tuple | None = None  # (baseline rows, candidate rows), set by compare_reports


def value_test(name: str, pairs: list[tuple[dict, dict]], tol: dict | None, sign: int, scale_of,
               margin: float) -> ValueTest | None:
    """The test of one value over the pairs that have it in the baseline; None when no pair has
    it. Two statistics, Bonferroni-combined when there are several seeds: the mean of the paired
    differences (stats.noise_test), and the largest single seed among those beyond the margin
    against the calibrated noise alone (Sidak over the seeds), so one seed far outside the noise is
    not averaged away by four equal ones. ``scale_of(baseline values)`` is what relative changes
    are relative to. Candidate values that are empty where the baseline's is not are ``empty``.
    Without a calibrated noise for the value, at least MIN_PAIRED_SEEDS paired seeds are their
    own noise: the mean paired difference against the spread of the paired differences
    (Student's t with n - 1 degrees of freedom; ``noise`` says ``paired seeds``, ``sigma`` is that
    spread with ``df`` 0, so the MDE follows); with fewer nothing is tested (``p`` NaN): a
    difference is then ``unmeasured``, never beyond noise."""
    have = [(b, c) for b, c in pairs if pd.notna(b.get(name))]
    if not have:
        return None
    empty = [int(c["seed"]) for b, c in have if not np.isfinite(float(c.get(name, math.nan)))]
    both = [(float(b[name]), float(c[name]), int(c["seed"])) for b, c in have if np.isfinite(float(c.get(name, math.nan)))]
    sigma, df = noise_of(tol, name)
    one_df = stats.single_df(df, float((tol or {}).get(f"{name}_tail", math.nan)))  # this config's tail
    out = ValueTest(name=name, empty=empty, n=len(both), sigma=sigma, df=df, sign=sign, one_df=one_df,
                    noise=CALIBRATED if np.isfinite(sigma) else NO_NOISE)
    if not both:
        return out
    base = np.array([x for x, _, _ in both])
    d = np.array([y - x for x, y, _ in both])
    scale = max(abs(scale_of(base)), 1e-12)
    out = replace(out, scale=scale, delta=float(d.mean()), mean=float(d.mean()), rel=float(sign * d.mean() / scale))
    if not np.isfinite(sigma) and len(d) >= MIN_PAIRED_SEEDS:  # the paired seeds are the noise
        _, p_mean, _ = stats.noise_test(d, math.nan, 0)
        return replace(out, p=float(p_mean), noise=PAIRED_SEEDS, sigma=float(np.std(d, ddof=1)), df=0)
    if not np.isfinite(sigma):  # too few seeds for their spread to be a noise, and none calibrated
        return replace(out, unmeasured=bool(np.any(d != 0)))
    _, p_mean, _ = stats.noise_test(d, sigma, df, one_df)
    if len(d) == 1:
        return replace(out, p=float(p_mean))
    p_any, i = 1.0, None
    far = np.flatnonzero(np.abs(d) / scale > margin)
    if len(far):  # each far seed alone against the calibrated noise
        _, p_seed, _ = stats.noise_test(d[far][:, None], sigma, df, one_df)
        i = int(far[np.argmin(p_seed)])
        p_any = 1 - (1 - float(np.min(p_seed))) ** len(d)
    if p_any < p_mean:
        return replace(out, p=min(1.0, 2 * p_any), delta=float(d[i]), rel=float(sign * d[i] / scale), seed=both[i][2])
    return replace(out, p=min(1.0, 2 * float(p_mean)))


# Where a value has no calibrated noise, this many paired seeds are their own: the spread of their
# paired differences is what a rounding-sized change gives (each seed's difference is one draw of
# it), and a t-test on their mean has n - 1 degrees of freedom. At 3 seeds (2 df) it finds a shift
# of about 11 spreads at the comparison's alpha; at 2 (1 df) the critical t at 0.01 is 64 and the
# test finds nothing a reader would not see unaided, so fewer seeds judge nothing.
MIN_PAIRED_SEEDS = 3


# Statuses decided by a threshold on a continuous quantity (progress, spike rate): noise can push a
# run across one without having done so in calibration's few reruns (held out, one perturbation
# flipped a ResNet-SGD seed converged -> unstable that the other four never did), so flips among
# them are always tested against the calibrated flip rate; a flip to or from a divergence or an
# error is not, unless calibration saw both statuses.
SOFT_STATUSES = BY_THRESHOLD  # detect.STATUS_TABLE's statuses decided by a threshold


def status_test(pairs: list[tuple[dict, dict]], tol: dict | None) -> StatusTest:
    """Seed-by-seed status comparison: flips that noise does not explain (``real``: to or from a
    divergence or an error that calibration never saw), and the binomial test of the noise-like
    ones (among SOFT_STATUSES, or seen in calibration) against the calibrated flip rate; without a
    calibration every flip is real. Runs that flipped among SOFT_STATUSES both ran to the end: their
    values are judged as well."""
    seen = set(str(tol.get("statuses_seen", "")).split(",")) if tol else set()
    flips, runs = (int(tol.get("status_flips", 0) or 0), int(tol.get("status_runs", 0) or 0)) if tol else (0, 0)
    real, noisy, unmeasured = [], [], []
    for b, c in pairs:
        bs, cs = str(b["status"]), str(c["status"])
        if bs == cs:
            continue
        flip = (int(c["seed"]), bs, cs)
        if runs and ({bs, cs} <= seen or {bs, cs} <= SOFT_STATUSES):
            noisy.append(flip)
        elif not runs and {bs, cs} <= SOFT_STATUSES:  # a threshold crossed, and no flip rate to judge it by
            unmeasured.append(flip)
        else:  # to or from a divergence or an error that calibration never saw (or with no calibration)
            real.append(flip)
    p = stats.flip_pvalue(len(noisy), len(pairs), flips, runs) if noisy else math.nan
    return StatusTest(real=real, noisy=noisy, unmeasured=unmeasured, p=p)


# Rounding noise grows from an ulp at its own pace, and a rounding change that is not a random
# nudge (the loss computed in float64: a bias, not a coin flip) moves the first steps of a curve
# further than calibration's one-ulp perturbations did, while its final numbers stay inside the
# noise (ResNet-8 x AdamW, 0.09% from step 18 on, 5 seeds). So step s is judged against the noise
# calibration saw at step CURVE_TIME_SLACK x s: noise may grow up to that much faster than it did.
CURVE_TIME_SLACK = 2.0


def later_noise(noise: pd.DataFrame) -> pd.DataFrame:
    """Per step s, the larger of the calibrated noise at s and at CURVE_TIME_SLACK x s (the last
    step's beyond the run): the noise a curve is judged against (one step's spike in one rerun
    still reaches only the steps judged against that step)."""
    steps = noise.index.to_numpy()
    later = np.ceil(CURVE_TIME_SLACK * steps).astype(int)
    out = noise.reindex(later, method="ffill")
    out.index = noise.index
    out = out.fillna(noise.iloc[-1])
    out["loss_noise"] = np.fmax(out["loss_noise"], noise["loss_noise"])  # never stricter than the step's own
    return out


def curve_test(pairs: list[tuple[dict, dict]], b_curves: dict, c_curves: dict, env: pd.DataFrame | None,
               ref_traces: dict) -> ValueTest | None:
    """The loss curve, step by step: per step the paired differences over the seeds with traces
    on both sides (the baseline's from its steps.csv, else the calibrated reference's), against
    that step's calibrated noise; p = the smallest step p-value times the steps tested. None
    without a calibrated per-step noise or without a paired loss curve."""
    if env is None or env.empty:
        return None
    noise = later_noise(env.drop_duplicates("step").set_index("step")[["loss_noise", "loss_df"]].sort_index())
    cols = []
    for b, c in pairs:
        tb = b_curves.get(b["run_id"])
        tb = tb if tb is not None else ref_traces.get(b["run_id"])
        tc = c_curves.get(c["run_id"])
        if tb is not None and tc is not None:
            cols.append((tb, tc))
    if not cols:
        return None
    steps = sorted(set(noise.index[noise["loss_df"] > 0]).intersection(*(set(tb.index) & set(tc.index) for tb, tc in cols)))
    if not steps:
        return None
    base = np.stack([tb.reindex(steps).to_numpy(float) for tb, _ in cols], axis=1)  # (steps, seeds)
    cand = np.stack([tc.reindex(steps).to_numpy(float) for _, tc in cols], axis=1)
    d = cand - base
    _, p, _ = stats.noise_test(d, noise.loc[steps, "loss_noise"].to_numpy(float), noise.loc[steps, "loss_df"].to_numpy(float))
    p = np.where(np.isnan(p), 1.0, p)
    n_steps = len(steps)
    beyond = p * n_steps < ALPHA
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.nanmean(d, axis=1) / np.abs(np.nanmean(base, axis=1))
    shown = rel[beyond] if beyond.any() else rel[[int(np.argmin(p))]]
    return ValueTest(name="curve", n=len(cols), p=float(min(1.0, p.min() * n_steps)), rel=float(np.nanmean(shown)),
                     exit_step=float(steps[int(np.argmax(beyond))]) if beyond.any() else math.nan)


def mde_of(test: ValueTest | None, n_tests: int, alpha: float = ALPHA) -> float:
    """The relative shift of a value this comparison would find with 80% power (Bonferroni's
    bound on Holm over ``n_tests`` tests, and over value_test's two statistics when there are
    several seeds and calibrated noise), at the seeds it judged; NaN without a noise (calibrated
    or paired seeds)."""
    if test is None or not np.isfinite(test.sigma) or test.n < 1:
        return math.nan
    level = alpha / max(n_tests, 1)  # paired seeds: the mean's test alone
    level = level if test.noise == PAIRED_SEEDS else stats.value_level(level, test.n)
    return stats.mde(test.sigma, test.df, test.n, level, one_df=test.one_df) / test.scale


def config_tests(b: list[dict], c: list[dict], tol: dict | None, b_curves: dict, c_curves: dict,
                 env: pd.DataFrame | None, ref_traces: dict, margin: float = MARGIN) -> Judgement:
    """Everything about one config before the comparison's p-values are adjusted: its pairing, its
    bitwise identity, its status comparison and its tests (each with a raw ``p``). ``b`` and ``c``:
    the config's runs.csv rows on each side, as dicts (``report.records``)."""
    pairing = pair(b, c)
    pairs = list(pairing.pairs.values())
    statuses = status_test(pairs, tol)
    ended = lambda r: is_diverged(r["status"]) or r["status"] in NO_RESULT  # noqa: E731  (no final values to judge)
    diverged = [(rb, rc) for rb, rc in pairs if is_diverged(rb["status"]) and is_diverged(rc["status"])]
    ran = [(rb, rc) for rb, rc in pairs if not ended(rb) and not ended(rc)]
    names = metric_names(str(b[0]["model"]), b, c)
    steps = float(b[0]["steps"])
    tests = [value_test(m, ran, tol, sign, lambda x: x.mean(), margin) for m, sign in judged_values(names)]
    tests.append(value_test("divergence_step", diverged, tol, -1, lambda x: steps, margin))
    tests = [t for t in tests if t is not None]
    curve = curve_test(ran, b_curves, c_curves, env, ref_traces)
    identical = bool(pairs) and all(rb.get("weights_sha256") == rc.get("weights_sha256") and pd.notna(rb.get("weights_sha256"))
                                    and rb["status"] == rc["status"] for rb, rc in pairs)
    return Judgement(pairing=pairing, statuses=statuses, tests=tests + ([curve] if curve else []), identical=identical,
                     n_pairs=len(pairs),
                     errors_both=sum(rb["status"] == "error" and rc["status"] == "error" for rb, rc in pairs))


# Configs that share a path (an optimizer, a schedule, a precision) and moved the same way beyond
# what their noise explains, though no single one of them need be beyond it: AdamW's eps moved from
# 1e-8 to 1e-6 shifts every AdamW config's final loss by 10-36 of its calibrated sigmas, each
# within one seed's heavy-tailed t(3) band, all in one direction. Per axis value with at least
# MIN_TOGETHER configs judged on calibrated noise, their final losses' standardised differences
# (mean paired difference over its calibrated noise / sqrt n) are tested for mean zero (Student's
# t, n - 1 degrees of freedom: under a rounding change they scatter about zero). These tests are
# corrected among themselves (Holm) at the comparison's alpha, beside the configs' (which they leave
# exactly as they were): the comparison's false alarms are at most alpha among its configs'
# verdicts and alpha among its path findings. 8 configs at least: a t with fewer degrees of
# freedom says little about "together".
TOGETHER_AXES = ("optimizer", "scheduler", "precision")
MIN_TOGETHER = 8


def together_tests(rows: list[dict], judgements: list[Judgement | None]) -> list[TogetherTest]:
    """One test per path shared by at least MIN_TOGETHER configs whose final loss was judged on
    calibrated noise and whose bits changed (raw ``p``)."""
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for row, j in zip(rows, judgements):
        if j is None or j.identical:
            continue
        t = next((t for t in j.tests if t.name == "final_loss" and t.noise == CALIBRATED
                  and t.n and np.isfinite(t.mean) and t.sigma > 0), None)
        if t is None:
            continue
        z = t.mean / (t.sigma / math.sqrt(t.n))
        for axis in TOGETHER_AXES:
            groups.setdefault((axis, str(row[axis])), []).append((row["run_id"], z))
    tests = []
    for (axis, value), zs in groups.items():
        z = np.array([x for _, x in zs])
        if len(z) < MIN_TOGETHER or not np.any(z != 0):
            continue
        _, p, _ = stats.noise_test(z, math.nan, 0)
        tests.append(TogetherTest(axis=axis, value=value, n=len(z), up=int((z > 0).sum()), median=float(np.median(z)),
                                  configs=[r for r, _ in zs], p=float(p)))
    return tests


def together_line(t: TogetherTest) -> str:
    """"optimizer=adamw: 10 configs moved together, 10 of 10 up (worse), median +26.0 calibrated
    sigmas (p_holm 2e-05)"."""
    way = "up (worse)" if t.median > 0 else "down (better)"
    same = t.up if t.median > 0 else t.n - t.up
    return (f"{t.axis}={t.value}: {t.n} configs moved together, {same} of {t.n} {way}, median "
            f"{t.median:+.1f} calibrated sigmas of final loss (p_holm {t.p_adj:.2g})")


def p_valued(judgements: list[Judgement]) -> list[ValueTest | StatusTest]:
    """Every test of a comparison that has a p-value (values, curves, status flips), in order."""
    out = []
    for j in judgements:
        out += [t for t in j.tests if np.isfinite(t.p)]
        if np.isfinite(j.statuses.p):
            out.append(j.statuses)
    return out


def describe(t: ValueTest) -> str:
    """``final_loss +0.012 (0.61% worse, p 3e-05)``: the change, its direction in words (an
    accuracy that rose is better) and its adjusted p-value."""
    rel = t.rel
    way = "worse" if rel > 0 else "better" if rel < 0 else "no change"
    delta = "" if not np.isfinite(t.delta) else f" {t.delta:+.4g}"
    where = f" from step {t.exit_step:.0f}" if np.isfinite(t.exit_step) else ""
    seed = f" on seed {t.seed}" if t.seed is not None else ""
    return f"{t.name}{delta} ({abs(rel):.2%} {way}{seed}{where}, p {t.p_adj if np.isfinite(t.p_adj) else t.p:.2g})"


def verdict_of(j: Judgement, margin: float, alpha: float, n_tests: int) -> dict:
    """The verdict of one config from its tests once their ``p_adj`` (Holm-adjusted) is set."""
    pg, st = j.pairing, j.statuses
    tests = j.tests
    value_tests = [t for t in tests if t.name != "curve"]
    primary = next((t for t in value_tests if t.name in ("final_loss", "divergence_step") and t.n), None)
    sources = {t.noise for t in value_tests}
    out = dict(n_seeds_judged=max((t.n for t in tests), default=0), mde=mde_of(primary, n_tests),
               noise_source=next((s for s in (CALIBRATED, PAIRED_SEEDS) if s in sources), NO_NOISE),
               p_value=min((t.p for t in tests + [st] if np.isfinite(t.p)), default=math.nan),
               p_holm=min((t.p_adj for t in tests + [st] if np.isfinite(t.p_adj)), default=math.nan),
               curve_exit_step=next((t.exit_step for t in tests if t.name == "curve"), math.nan),
               seeds_new=",".join(map(str, pg.new)),
               seeds_skipped=",".join(map(str, pg.skipped)))
    notes = list(pg.unpaired) + st.notes
    if pg.missing:
        notes.append(f"baseline seeds {','.join(map(str, pg.missing))} not in the candidate")
    if pg.new:
        notes.append(f"candidate seeds {','.join(map(str, pg.new))} have no baseline partner")
    if pg.skipped:
        notes.append(f"seeds {','.join(map(str, pg.skipped))} skipped")
    empty = sorted({s for t in value_tests for s in t.empty})
    out["seeds_missing"] = ",".join(map(str, sorted(set(pg.missing) | set(empty))))
    if empty:
        notes.append("empty values in the candidate: " + "; ".join(
            f"{t.name} seeds {','.join(map(str, t.empty))}" for t in value_tests if t.empty))
    beyond = [t for t in tests if np.isfinite(t.p_adj) and t.p_adj < alpha]
    kind = lambda t: "worse" if t.rel > margin else "better" if t.rel < -margin else "changed"  # noqa: E731
    kinds = [kind(t) for t in beyond]
    flips = st.real + (st.noisy if np.isfinite(st.p_adj) and st.p_adj < alpha else [])
    flip_text = ", ".join(f"seed {s} {x} -> {y}" for s, x, y in flips)
    worse_flip = any(STATUS_RANK.get(y, 99) > STATUS_RANK.get(x, 99) for _, x, y in flips)
    found = "; ".join(describe(t) for t in beyond)

    def done(verdict: str, direction: str = "", detail: str = "") -> dict:
        return dict(out, verdict=verdict, direction=direction, detail="; ".join(x for x in [detail, *notes] if x))

    if flips and worse_flip:
        return done("status_changed", "worse", flip_text)
    if "worse" in kinds:
        return done("regressed", "worse", found)
    if not pg.pairs and pg.new and not pg.skipped and (pg.unpaired or not pg.missing):
        return done("new", detail="no baseline run for these seeds")
    if flips:
        return done("status_changed", "better", flip_text)
    if "better" in kinds:
        return done("improved", "better", found)
    if "changed" in kinds:
        return done("changed", detail=found)
    if pg.missing or empty:
        return done("missing", detail="the paired seeds are within noise" if pg.pairs else "")
    if not pg.pairs and pg.skipped:
        return done("skipped", detail="every seed skipped on a side")
    if pg.new:
        return done("new", detail="the paired seeds are within noise")
    if j.identical:
        return done("identical", detail="same weights (sha256) and status for every seed")
    measured = [t for t in value_tests if np.isfinite(t.sigma)] + [t for t in tests if t.name == "curve"]
    if not measured and (any(t.unmeasured for t in value_tests) or st.unmeasured):
        moved = [f"{t.name} {t.rel:+.2%}" for t in value_tests if t.unmeasured]
        moved += [f"seed {s} {x} -> {y}" for s, x, y in st.unmeasured]
        more = MIN_PAIRED_SEEDS - max((t.n for t in value_tests), default=0)
        return done("unjudged", detail=f"bits changed, and no noise to judge the difference against: no calibration "
                                       f"for this config and fewer than {MIN_PAIRED_SEEDS} paired seeds ("
                                       + ", ".join(moved) + f"); {more} more paired seed{'s' * (more != 1)}, or "
                                       "calibrate (or give --tolerances), would let it judge")
    if not tests and not st.noisy:
        why = "errors on both sides" if j.errors_both else "no value to judge"
        return done("unjudged", detail=why)
    shown = "" if not np.isfinite(out["mde"]) else f"would have found a {percent(out['mde'])} final-loss shift"
    return done("equivalent", detail="within noise" + (f" ({shown})" if shown else "") + (
        "; " + ", ".join(f"seed {s} {x} -> {y} within the calibrated flip rate" for s, x, y in st.noisy)
        if st.noisy else ""))


def percent(fraction: float) -> str:
    """A fraction as a percentage to two significant digits (0.0028%, 0.12%, 5%): an MDE of a
    few parts per million is not "0.00%"."""
    return np.format_float_positional(fraction * 100, precision=2, fractional=False, trim="-") + "%"


# ------------------------------------------------------------------------------------------
# the suite's check (one run) and a comparison of two reports
# ------------------------------------------------------------------------------------------


def check_run(row: dict, base: dict | None, tol: dict | None = None, margin: float = MARGIN,
              steps: list[dict] | None = None, envelope: pd.DataFrame | None = None, runs_judged: int = 1) -> dict:
    """The suite's check of one run against its baseline row (None: there is none): a verdict
    row (``verdict``, ``direction``, ``detail``, ``mde``) to hand to ``Policy.failure``. The run's
    tests join those of ``runs_judged`` runs (the session's grid): Bonferroni over all of them
    holds the session's family-wise error at ALPHA. With the run's ``steps`` (its steps.csv rows) and its
    calibrated ``envelope``, the curve is judged too."""
    if base is None:
        return dict(verdict="new", direction="", detail=f"no baseline row for {row['run_id']} ({row['steps']} steps)")
    b, c = [dict(base, seed=0)], [dict(row, seed=0)]
    c_curves = {row["run_id"]: pd.DataFrame(steps).set_index("step")["loss"]} if steps else {}
    ref = {base["run_id"]: envelope.set_index("step")["loss_reference"]} if envelope is not None and len(envelope) else {}
    j = config_tests(b, c, tol, {}, c_curves, envelope, ref, margin)
    tests = p_valued([j])
    n = max(len(tests), 1) * max(runs_judged, 1)
    for t in tests:
        t.p_adj = min(1.0, t.p * n)
    return with_init(verdict_of(j, margin, ALPHA, n), b, c)


def with_init(row: dict, b: list[dict], c: list[dict]) -> dict:
    """A verdict row with its ``init_verdict`` (and, where the init changed, that said first in
    its detail)."""
    row["init_verdict"], why = init_verdict(b, c)
    if why:
        row["detail"] = "; ".join(x for x in (why, row.get("detail", "")) if x)
    return row


# Curves, descriptively: two loss curves "separate" where their 10-step rolling means differ by more
# than 5% of the initial loss (``separation_step``; the verdict uses the noise test).
CURVE_WINDOW = 10
SEPARATION = 0.05


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


def curve_distances(pairs: list[tuple[dict, dict]], b_curves: dict, c_curves: dict) -> dict:
    """Descriptive curve columns over the paired seeds whose traces both reports have."""
    dists = [curve_distance(b_curves[rb["run_id"]], c_curves[rc["run_id"]], rb["initial_loss"])
             for rb, rc in pairs if rb["run_id"] in b_curves and rc["run_id"] in c_curves]
    if not dists:
        return {}
    return dict(first_diff_step=min((d[0] for d in dists if not math.isnan(d[0])), default=math.nan),
                max_curve_distance=max(d[1] for d in dists),
                separation_step=min((d[2] for d in dists if not math.isnan(d[2])), default=math.nan))


def side_mean(rows: list[dict], col: str) -> float:
    """The mean of a column over a config's rows on one side, missing cells left out (NaN when
    none has it), as pandas' ``mean`` gives it."""
    values = [float(r[col]) for r in rows if pd.notna(r.get(col))]
    return float(np.mean(values)) if values else math.nan


def cost_flags(b: list[dict], c: list[dict]) -> dict:
    """The cost ratios of a config's two sides (candidate over baseline) and their flags."""
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = np.float64(side_mean(b, "steps_per_s")) / side_mean(c, "steps_per_s")
        mem = np.float64(side_mean(c, "peak_rss_mb")) / side_mean(b, "peak_rss_mb")
        dev = np.float64(side_mean(c, "peak_device_mem_mb")) / side_mean(b, "peak_device_mem_mb")
    speed, mem, dev = float(speed), float(mem), float(dev)
    flags = (["slower"] if speed >= SLOWDOWN else []) + (["more_memory"] if max(mem, 0 if math.isnan(dev) else dev)
                                                         >= MEMORY_GROWTH else [])
    return dict(slowdown=speed, rss_ratio=mem, device_mem_ratio=dev, cost=",".join(flags) or "ok")


COMPARE_COLUMNS = (CONFIG + ["run_id", "verdict", "direction", "failure", "detail", "base_status",
                             "candidate_status", "n_seeds_base", "n_seeds_candidate", "n_seeds_judged", "seeds_missing",
                             "seeds_new", "seeds_skipped", "base_final_loss", "candidate_final_loss", "delta_final_loss",
                             "noise_final_loss", "mde", "p_value", "p_holm", "first_diff_step", "curve_exit_step",
                             "max_curve_distance", "separation_step", "slowdown", "rss_ratio", "device_mem_ratio", "cost",
                             "init_verdict", "noise_source"])




def index_by_config(df: pd.DataFrame | None) -> dict[tuple, dict]:
    """tolerances.csv rows by normalised config key (a frame built by a caller, not read, may
    lack an axis that did not exist when it was measured: read as its default)."""
    if df is None or df.empty:
        return {}
    return {config_key(r[c] for c in CONFIG): r for r in report.records(report.with_axis_defaults(df))}


def check_unique(runs: pd.DataFrame, side: str) -> None:
    """A run present twice (the same config and seed, or the same run_id) is bad input."""
    for cols in (["run_id"], CONFIG + ["seed"]):
        dup = runs.duplicated(cols, keep=False)
        if dup.any():
            first = runs[dup].iloc[0]
            raise report.ReportError(f"the {side} holds run {first['run_id']} (seed {first['seed']}) "
                                     f"{int(dup.sum())} times: a report holds each run once (merged twice?)")


def loss_curves(steps: pd.DataFrame | None) -> dict:
    """run_id -> its loss by step."""
    if steps is None or steps.empty:
        return {}
    return {rid: g.set_index("step")["loss"] for rid, g in steps.groupby("run_id")}


# the runs.csv columns a verdict reads (the rest of a row is carried nowhere: it only slows the grouping)
VERDICT_COLUMNS = list(dict.fromkeys(CONFIG + ["run_id", "seed", "status", "status_reason", "final_loss", "initial_loss",
                                               "loss_floor", "val_loss", "val_metric", "val_metric_name",
                                               "divergence_step", "weights_sha256", "steps_per_s", "peak_rss_mb",
                                               "peak_device_mem_mb", "seeded_init_sha256", *PAIRING, *ENVIRONMENT]))


def slim(runs: pd.DataFrame) -> pd.DataFrame:
    """The columns a verdict reads, text as Python strings (object): a config's rows become dicts
    (``report.records``) several times over, and a string column converts at each (pandas' own
    string type to object); once here instead, for the whole report."""
    runs = runs[[c for c in VERDICT_COLUMNS if c in runs.columns]]
    text = {c: object for c, t in runs.dtypes.items() if isinstance(t, pd.StringDtype)}
    return runs.astype(text) if text else runs


def by_config(runs: pd.DataFrame) -> dict[tuple, list[dict]]:
    """A report's rows as dicts (``report.records``, once for the whole report), by normalised
    config key (``config_key``), each config's in the report's order."""
    groups: dict[tuple, list[dict]] = {}
    for r in report.records(runs):
        groups.setdefault(config_key(r[c] for c in CONFIG), []).append(r)
    return groups


def compare_reports(base_runs: pd.DataFrame, cand_runs: pd.DataFrame, base_steps: pd.DataFrame | None = None,
                    cand_steps: pd.DataFrame | None = None, tolerances: pd.DataFrame | None = None,
                    envelope: pd.DataFrame | None = None, margin: float = MARGIN,
                    policy: Policy | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per config on either side, with its verdict and whether it fails ``policy``.
    Raises report.ReportError on a report that holds a run twice. Frames read from a report
    (report.read) hold every axis; one built by a caller may lack one: read as its default."""
    policy = policy or Policy()
    base_runs, cand_runs = (slim(report.with_axis_defaults(df)) for df in (base_runs, cand_runs))
    check_unique(base_runs, "baseline")
    check_unique(cand_runs, "candidate")
    tols = index_by_config(tolerances)
    env_by_run = dict(iter(envelope.groupby("run_id"))) if envelope is not None and not envelope.empty else {}
    ref_traces = {rid: e.set_index("step")["loss_reference"] for rid, e in env_by_run.items()}
    b_groups, c_groups = by_config(base_runs), by_config(cand_runs)
    b_curves, c_curves = loss_curves(base_steps), loss_curves(cand_steps)
    rows, judgements = [], []
    for key in sorted(set(b_groups) | set(c_groups), key=str):
        b, c = b_groups.get(key), c_groups.get(key)
        side = b if b is not None else c
        head = dict({col: side[0][col] for col in CONFIG}, run_id=min(side, key=lambda r: r["seed"])["run_id"])
        if b is None or c is None:
            rows.append(dict(head, verdict="new" if b is None else "missing", direction="",
                             detail="only in the " + ("candidate" if b is None else "baseline"),
                             n_seeds_base=0 if b is None else len(b), n_seeds_candidate=0 if c is None else len(c)))
            judgements.append(None)
            continue
        tol = tols.get(key)
        env = next((env_by_run[r["run_id"]] for r in b if r["run_id"] in env_by_run), None)
        j = config_tests(b, c, tol, b_curves, c_curves, env, ref_traces, margin)
        j.sides = (b, c)
        judgements.append(j)
        rows.append(dict(head, base_status=worst(r["status"] for r in b), candidate_status=worst(r["status"] for r in c),
                         n_seeds_base=len(b), n_seeds_candidate=len(c), base_final_loss=side_mean(b, "final_loss"),
                         candidate_final_loss=side_mean(c, "final_loss"),
                         noise_final_loss=noise_of(tol, "final_loss")[0],
                         **cost_flags(b, c), **curve_distances(list(j.pairing.pairs.values()), b_curves, c_curves)))
    tests = p_valued([j for j in judgements if j is not None])
    together = together_tests(rows, judgements)  # corrected among themselves (TOGETHER_AXES)
    for group in (tests, together):
        for t, p in zip(group, stats.holm([t.p for t in group])):
            t.p_adj = p
    for row, j in zip(rows, judgements):
        if j is not None:
            row.update(verdict_of(j, margin, alpha, len(tests)))
            with_init(row, *j.sides)
    df = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    df["delta_final_loss"] = df["candidate_final_loss"] - df["base_final_loss"]
    df["failure"] = [policy.failure(r) or "" for r in report.records(df)]
    df = df[COMPARE_COLUMNS]
    # paths that moved together (together_tests): a finding of the comparison as a whole
    df.attrs["together"] = [together_line(t) for t in together if t.p_adj < alpha]
    return df


def noise_line(table: pd.DataFrame, tolerances: pd.DataFrame | None) -> str:
    """Which noise the configs of a comparison were judged against, in words: "40 configs
    calibrated (tolerances.csv: 60), 6 by their paired seeds, 2 none (unjudged where bits changed)"."""
    sources = table["noise_source"].value_counts()
    words = {CALIBRATED: "calibrated" + (f" (tolerances.csv: {len(tolerances)} configs)" if tolerances is not None
                                         else ""),
             PAIRED_SEEDS: f"by their paired seeds (the spread of their differences, {MIN_PAIRED_SEEDS}+ seeds)",
             NO_NOISE: f"none (no calibration and fewer than {MIN_PAIRED_SEEDS} paired seeds: unjudged where bits "
                       "changed)"}
    said = [f"{int(sources[s])} config{'s' * (int(sources[s]) != 1)} {w}" for s, w in words.items() if s in sources]
    return ", ".join(said) or "no config judged"


def same_environment(base: pd.DataFrame, cand: pd.DataFrame) -> bool:
    """Both reports ran in one environment (same software and device by every ENVIRONMENT column
    both record): a comparison of them is a control (run-to-run), not a release comparison."""
    cols = [c for c in ENVIRONMENT if c in base and c in cand]
    values = lambda df, col: set(df[col].dropna().astype(str))  # noqa: E731
    return bool(cols) and all(values(base, col) == values(cand, col) for col in cols)


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
    """A report's runs.csv with the columns compare needs; a truncated row (no status, run_id or
    seed) is bad input, never a run."""
    df = report.read(path / report.RUNS, required=need)
    broken = df["run_id"].isna() | df["status"].isna() | df["seed"].isna()
    if broken.any():
        i = int(np.argmax(broken.to_numpy()))
        raise report.ReportError(f"{path / report.RUNS}: data row {i + 1} has no run_id, seed or status (truncated file?)")
    return df


# what a tolerances.csv must hold to be judged against (an older calibration lacks the df columns)
TOLERANCES_NEED = CONFIG + ["run_id", "statuses_seen", "status_flips", "status_runs", "final_loss_noise", "final_loss_df"]


def read_tolerances(base_dir: Path, option: str | None):
    """(tolerances, envelope) beside the baseline or at --tolerances (a file or its folder);
    (None, None) when the baseline was never calibrated and no --tolerances was given."""
    from diagnostics.judge import calibrate

    folder = Path(option) if option else Path(base_dir)
    path = folder if folder.suffix == ".csv" else folder / calibrate.TOLERANCES
    if not path.exists():
        if option:
            raise report.ReportError(f"{path}: no such file (--tolerances)")
        return None, None
    tol = report.read(path, required=TOLERANCES_NEED)
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
    """One line per failing config, and one for a comparison that judged nothing (no config
    judged on any paired seed)."""
    lines = [f"{'INIT_CHANGED' if r.get('init_verdict') == INIT_CHANGED else r['verdict'].upper()} {r['run_id']}: "
             f"{r['failure']}: {r['detail']}" for r in table.to_dict("records") if r["failure"]]
    judged = table["verdict"].isin(JUDGED) | (pd.to_numeric(table.get("n_seeds_judged"), errors="coerce").fillna(0) > 0)
    if not judged.any():
        lines.append(f"nothing was judged: {len(table)} configs, none compared against a baseline")
    return lines


def blind_spots(table: pd.DataFrame, margin: float = MARGIN) -> pd.DataFrame:
    """The judged configs whose stated ``mde`` is above the margin: a change of the margin's size
    could hide in their noise at the seeds run."""
    judged = table[table["verdict"].isin(JUDGED)]
    return judged[judged["mde"].astype(float) > margin]
