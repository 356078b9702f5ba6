"""The statistics every verdict rests on: small pure functions over numbers (numpy, scipy).

**Noise.** Calibration (calibrate.py) gives, per config, judged value and perturbed seed, m + 1
runs that differ only in rounding: the reference and its m perturbed reruns. Their sample
variance, pooled over the perturbed seeds, estimates the variance of one run around the runs the
same recipe could have given; the difference of two such runs (a baseline and a candidate on the
same seed, or a reference and a rerun) has twice that variance. ``pooled_noise`` returns the
standard deviation of that difference and its degrees of freedom (m per perturbed seed).

Why not the deviations from the reference: the m deviations of one seed share that reference, so
they are correlated (when training is chaotic, half their variance is the reference's own), and
five of them carry about 2.5 degrees of freedom, not 5. The spread of all m + 1 runs carries m.

**Test.** The paired differences d_1..d_n (candidate - baseline, seed by seed) are tested for
mean zero with a t-test whose variance pools the calibrated noise (df_noise degrees of freedom)
with the differences' own spread (n - 1), so one seed and several go through the same test, the
test's power grows with n, and a candidate whose rounding is noisier than calibration saw widens
its own band. Under the null (the candidate differs only in rounding) the statistic is t with
df_noise + n - 1 degrees of freedom.

One difference alone (one seed, or one seed of several tested on its own) is judged against a
heavy-tailed t (SINGLE_TAIL_DF): chaotic training now and then lands a rerun far out.

**Effect.** ``mde`` is the smallest mean shift the test finds with the given power at the given
level (noncentral t), with the candidate's spread taken as the calibrated noise.
"""

from __future__ import annotations

import functools
import math

import numpy as np

POWER = 0.8  # the power at which a minimum detectable effect is stated (the usual 80%)
# A single difference is judged against a heavy-tailed Student-t of the calibrated scale, with at
# most this many degrees of freedom: chaotic training lands a rerun far out now and then (a
# split-K matmul, a rounding-size change never used in calibration, moved one of 5 ResNet-8 x SGD
# seeds' held-out loss by 19 calibrated sigmas; under a t with 10 degrees of freedom that has odds
# of 1e-8, under t(3) about 7e-4 a value: one such among the 900 values of a 5-seed default grid
# comparison). Means of several differences pool their own spread instead (noise_test).
SINGLE_TAIL_DF = 3
# A config whose own calibration shows no heavy tail judges a single difference with its pooled
# degrees of freedom instead (``single_df``): its tail (``tail_of``: the farthest of its runs from
# its seed's mean, in sds of one run measured on the others) is at most LIGHT_TAIL. Among the ~12
# runs of a 5-perturbation, 2-seed calibration, a normal's farthest lands beyond 3.5 such sds with
# odds of a few percent; ResNet-8 x SGD's held-out loss, 19 sigmas out under a rounding change, is
# the kind of tail it keeps at t(3).
LIGHT_TAIL = 3.5
MAX_SEEDS = 64  # seeds_needed gives up beyond this (NaN: the margin is out of reach)


def tail_of(groups, floor: float = 0.0) -> float:
    """How far a config's calibration runs land: the largest distance of a run from its group's
    mean (each group: one seed's reference and reruns), in standard deviations of one run taken
    from the *other* runs (pooled_noise with that run left out: an outlier inflates a scale it is
    part of, and could then never look far), that noise taken no lower than ``floor`` (the
    noise the value is judged with is floored there too: runs that agree to the last bits are
    no tail); NaN with too few runs for both, or no scale at all."""
    clean = [np.asarray(g, float)[np.isfinite(np.asarray(g, float))] for g in groups]
    dev = [(float(np.abs(x - x.mean()).max()), i, int(np.argmax(np.abs(x - x.mean())))) for i, x in enumerate(clean)
           if len(x) >= 2]
    if not dev:
        return math.nan
    far, gi, k = max(dev)
    rest = [np.delete(x, k) if i == gi else x for i, x in enumerate(clean)]
    noise, _ = pooled_noise(rest)
    noise = max(noise, floor) if np.isfinite(noise) else noise
    return float(far / (noise / math.sqrt(2))) if np.isfinite(noise) and noise > 0 else math.nan


def single_df(df: int, tail: float) -> int:
    """The degrees of freedom one difference is judged with: the pooled ``df`` where the
    config's calibration shows a light tail (``tail`` at most LIGHT_TAIL), else at most
    SINGLE_TAIL_DF (no tail measured: as cautious as a heavy one)."""
    return int(df) if np.isfinite(tail) and tail <= LIGHT_TAIL else min(int(df), SINGLE_TAIL_DF)


def difference_sd(ss, df):
    """The sd of the difference of two runs from a pooled within-group sum of squares ``ss`` on
    ``df`` degrees of freedom: ss / df estimates one run's variance, a difference has twice it.
    Scalars or arrays (elementwise; NaN where ``df`` is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(np.asarray(df) > 0, np.sqrt(2.0 * np.asarray(ss, float) / np.maximum(df, 1)), np.nan)
    return float(out) if out.ndim == 0 else out


def pooled_noise(groups) -> tuple[float, int]:
    """(sd of the difference of two runs, degrees of freedom) from groups of runs that differ
    only in rounding (each group: one seed's reference and its reruns; NaNs dropped, groups of
    fewer than two values ignored). (NaN, 0) when no group has two values."""
    ss, df = 0.0, 0
    for g in groups:
        x = np.asarray(g, dtype=float)
        x = x[np.isfinite(x)]
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return (difference_sd(ss, df), df) if df else (math.nan, 0)


# The distributions the tests need, as the special functions scipy.stats itself evaluates them
# with (scipy.stats' ``t._sf``, ``t._isf``, ``norm._sf``/``_cdf``, ``chi2._pdf``/``_ppf``/``_isf``):
# the same numbers, bit for bit (tests/test_stats.py), without importing scipy.stats (about a
# second per process) or its per-call argument handling (about 100 us per scalar call, which the
# MDE's integral makes thousands of).


def t_sf(x, dof):
    from scipy import special

    return special.stdtr(dof, -np.asarray(x, dtype=float))


def t_isf(q: float, dof) -> float:
    from scipy import special

    return -special.stdtrit(dof, q)


def norm_sf(x):
    from scipy import special

    return special.ndtr(-np.asarray(x, dtype=float))


def norm_cdf(x):
    from scipy import special

    return special.ndtr(np.asarray(x, dtype=float))


def chi2_pdf(v, dof):
    from scipy import special

    v = np.asarray(v, dtype=float)
    return np.exp(special.xlogy(dof / 2.0 - 1, v) - v / 2.0 - special.gammaln(dof / 2.0) - (np.log(2) * dof) / 2.0)


def chi2_ppf(q: float, dof) -> float:
    from scipy import special

    return 2 * special.gammaincinv(dof / 2, q)


def chi2_isf(q: float, dof) -> float:
    from scipy import special

    return special.chdtri(dof, q)


def noise_test(diffs, sigma, df, one_df=SINGLE_TAIL_DF) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, two-sided p, degrees of freedom) that paired differences have mean zero, against a
    calibrated noise ``sigma`` (sd of one difference, with ``df`` degrees of freedom) pooled with
    the differences' own spread. Vectorised: ``diffs`` (..., n), ``sigma`` and ``df`` broadcast
    to (...); NaN differences are left out. No noise measured (NaN sigma) leaves only the
    spread; with neither (one difference and no noise, or no spread at all), zero differences
    give p 1 and any other p 0. No difference at all gives NaN. One difference is judged with at
    most ``one_df`` degrees of freedom (SINGLE_TAIL_DF: heavy tails; ``single_df`` for a config
    whose calibration shows a light one); the returned dof is the one used."""
    d = np.asarray(diffs, dtype=float)
    present = np.isfinite(d)
    n = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, d, 0.0).sum(axis=-1) / n
        spread = np.where(present, (d - mean[..., None]) ** 2, 0.0).sum(axis=-1)
        sigma = np.broadcast_to(np.asarray(sigma, dtype=float), mean.shape)
        known = np.isfinite(sigma) & (sigma > 0)
        df_noise = np.where(known, np.broadcast_to(np.asarray(df, dtype=float), mean.shape), 0.0)
        dof = df_noise + n - 1
        var = (df_noise * np.where(known, sigma, 0.0) ** 2 + spread) / dof
        t = mean * np.sqrt(n) / np.sqrt(var)
        dof = np.where(n == 1, np.minimum(dof, one_df), dof)
        p = 2 * t_sf(np.abs(t), np.maximum(dof, 1))
    degenerate = (dof < 1) | ~(var > 0)
    p = np.where(degenerate, np.where(mean == 0, 1.0, 0.0), p)
    t = np.where(degenerate, np.where(mean == 0, 0.0, np.copysign(np.inf, mean)), t)
    p = np.where(n == 0, np.nan, p)
    return t, p, dof


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order; NaNs stay
    NaN and do not count towards the family."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(len(p), math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def mde(sigma: float, df: int, n: int, alpha: float, power: float = POWER, one_df: int = SINGLE_TAIL_DF) -> float:
    """The smallest mean shift ``noise_test`` finds with probability ``power`` at two-sided level
    ``alpha`` with n paired seeds (absolute, in the value's units); NaN without a noise
    measurement, 0 for a noise of exactly zero."""
    if n < 1 or not np.isfinite(sigma):
        return math.nan
    if sigma == 0:
        return 0.0
    dof = int(df) + n - 1
    judged_with = dof if n > 1 else min(dof, one_df)  # the critical value noise_test uses
    if dof < 1:
        return math.nan
    return float(noncentrality(dof, alpha, power, judged_with) * sigma / math.sqrt(n))


def t_power(ncp: float, dof: int, crit: float) -> float:
    """P(|T| > crit) for T noncentral t with ``dof`` degrees of freedom and noncentrality
    ``ncp``: T = (Z + ncp) / sqrt(V / dof), V chi-square, integrated over V (scipy's ``nct``
    loses its accuracy, and its monotonicity, far in the tail this is used in)."""
    from scipy import integrate

    def given(v):
        s = crit * math.sqrt(v / dof)
        return (norm_sf(s - ncp) + norm_cdf(-s - ncp)) * chi2_pdf(v, dof)

    lo, hi = chi2_ppf(1e-12, dof), chi2_isf(1e-12, dof)
    return float(integrate.quad(given, lo, hi, limit=200)[0])


@functools.lru_cache(maxsize=4096)
def noncentrality(dof: int, alpha: float, power: float, judged_with: int | None = None) -> float:
    """The noncentrality at which a two-sided t statistic with ``dof`` degrees of freedom,
    compared with the critical value at level ``alpha`` of a t with ``judged_with`` (default:
    ``dof``), rejects with probability ``power`` (cached: a comparison asks for few distinct ones)."""
    from scipy import optimize

    crit = float(t_isf(alpha / 2, judged_with or dof))
    hi = 2 * crit + 10
    while t_power(hi, dof, crit) < power:
        hi *= 2
    return float(optimize.brentq(lambda ncp: t_power(ncp, dof, crit) - power, 0.0, hi, xtol=1e-6))


def value_level(alpha: float, n: int) -> float:
    """The level one statistic of a value's test runs at: ``alpha`` for one seed; ``alpha / 2``
    for several, where compare.value_test combines two statistics (the mean, the farthest seed)
    by Bonferroni."""
    return alpha / (2 if n > 1 else 1)


def seeds_needed(sigma: float, df: int, effect: float, alpha: float, power: float = POWER,
                 max_seeds: int = MAX_SEEDS) -> float:
    """The fewest paired seeds whose ``mde`` (at ``value_level``) is at most ``effect`` (absolute);
    NaN when more than ``max_seeds`` would be needed or no noise was measured."""
    if not np.isfinite(sigma) or effect <= 0:
        return math.nan
    for n in range(1, max_seeds + 1):
        if mde(sigma, df, n, value_level(alpha, n), power) <= effect:
            return float(n)
    return math.nan


def flip_pvalue(flips: int, n: int, calibrated_flips: int, calibrated_runs: int) -> float:
    """P(at least ``flips`` status flips among ``n`` paired seeds) when each seed flips at the
    rate calibration saw (Laplace's rule: (flips + 1) / (runs + 2), so a rate never seen is not
    taken as zero, nor one seen once as certain)."""
    from scipy import stats

    if n == 0 or flips == 0:
        return 1.0
    rate = (calibrated_flips + 1) / (calibrated_runs + 2)
    return float(stats.binom.sf(flips - 1, n, rate))
