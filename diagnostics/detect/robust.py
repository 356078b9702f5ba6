"""Robust statistics of a loss curve, as small pure functions: the robust sigma (a scaled MAD),
a threshold above the median, where a signal left its level, progress toward a floor, centred
medians and local trends."""

from __future__ import annotations

import math

import numpy as np

from diagnostics.detect.thresholds import Thresholds


def is_finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


NORMAL_MAD = 1.4826  # a normal's sigma over its median absolute deviation (1 / 0.6745: its quartile)


def median(values) -> float:
    """The median of a sequence of finite floats, the same float np.median gives (the mean of the
    two middle values of an even count), without numpy's per-call cost: the streaming rules take
    several medians of at most a few hundred values at every logged point, where sorting a list is
    about ten times faster than np.median (benchmarks/monitor_overhead.py). NaN where empty."""
    s = sorted(values)
    n, m = len(s), len(s) // 2
    if n == 0:
        return math.nan
    return s[m] if n % 2 else (s[m - 1] + s[m]) / 2


def robust_sigma(values, floor: float = 0.0, about=None) -> float:
    """The robust sigma of ``values``: NORMAL_MAD x their median absolute deviation about their
    median, or about ``about`` where given (a trend: a value or an array like ``values``), at
    least ``floor``. Heavy-tailed noise does not inflate it and one outlier does not move it."""
    if about is None and not isinstance(values, np.ndarray):  # a short history, at every point
        xs = list(values)
        centre = median(xs)
        return max(NORMAL_MAD * median([abs(v - centre) for v in xs]), floor)
    x = np.asarray(values, float)
    centre = np.median(x) if about is None else about
    return max(NORMAL_MAD * float(np.median(np.abs(x - centre))), floor)


def change_noise(change: np.ndarray, floor: float = 0.0) -> float:
    """The noise of one point-to-point change of a log (in log space), the whole log's: the
    robust sigma of its second differences over sqrt 3 (a second difference of white noise spreads
    sqrt 3 times as wide as a change, and a smooth trend hardly moves it), at least ``floor``."""
    return max(robust_sigma(np.diff(change)) / math.sqrt(3), floor)


def robust_threshold(history, k: float, min_sigma: float) -> float:
    """median + k * the robust sigma of the history (at least ``min_sigma``)."""
    h = list(history)
    return median(h) + k * robust_sigma(h, min_sigma)


def departure(values, t: Thresholds) -> tuple[int, float] | None:
    """Where a positive signal left its level for good: the earliest point from which every
    value to the end sits more than 2 robust sigmas above the median of the
    ``spike_range_window`` points before that point (log space; sigma from their interquartile
    range), with that median; None where there is none. A runaway that grows 10% a point, or
    climbs and then sits high, is followed by the spike rule's smoother, which opens an incident
    late or never: this reads the whole series instead."""
    import pandas as pd

    h = pd.Series(np.log(np.asarray(values, float)))
    w = t.spike_range_window
    before = h.rolling(w).quantile(0.5).shift(1)
    sigma = ((h.rolling(w).quantile(0.75) - h.rolling(w).quantile(0.25)) / 1.349).shift(1).clip(lower=t.spike_min_sigma)
    lowest_from = np.minimum.accumulate(h.to_numpy()[::-1])[::-1]
    left = np.flatnonzero(lowest_from > (before + 2 * sigma).to_numpy())
    return (int(left[0]), float(np.exp(before.iloc[left[0]]))) if len(left) else None


def progress(initial: float, final: float, floor: float) -> float:
    """Fraction of the gap between the initial loss and the floor that was closed."""
    gap = initial - floor
    return (initial - final) / gap if gap > 0 else 0.0


def centred_median(values, w: int) -> np.ndarray:
    """The median of the ``w`` points centred on each point (fewer at the ends)."""
    import pandas as pd  # a rolling median in O(n log w): a 200K-point log takes milliseconds

    return pd.Series(np.asarray(values, float)).rolling(w, center=True, min_periods=1).median().to_numpy()


def local_trend(change: np.ndarray, half: int, leave_out: int = 1) -> np.ndarray:
    """The local trend of a log's point-to-point changes: element ``k`` is the median of the
    ``half`` changes either side of the ``leave_out`` changes from ``k`` on, those left out (fewer
    at the ends). ``leave_out=1``: each change's own trend; ``leave_out=2``: the trend around the
    point between changes ``k`` and ``k + 1``, its way in and its way out both left out."""
    return np.array([float(np.median(np.delete(change[max(0, k - half):k + leave_out + half],
                                               np.arange(leave_out) + min(k, half))))
                     for k in range(len(change) - leave_out + 1)])


