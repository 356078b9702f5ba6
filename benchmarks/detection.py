"""Detector quality on generated traces with known faults (``detect.classify``: the rules the
training loop uses), on the families the thresholds were tuned on and on held-out ones.

    python benchmarks/detection.py [--n 200] [--seed 0]      # the docs table (one invocation)
    python benchmarks/detection.py --families daily,multiplicative_0.2 [--seeds 1,2,3,4,5]
                                                             # a larger sample, with 95% intervals

A trace is a loss decaying exponentially from 2-4 towards a floor (0-1.8) with noise, a gradient
norm noisy around a level, and an LR. Families (label: what a right verdict is):

tuned on
- healthy: normal noise (0.5-3%), half with warm restarts and an LR column -> not diverged, not unstable
- nonfinite: NaN/inf in the loss or gradient norm at a random step -> diverged there
- explosion: geometric runaway, a jump to 3.5-50x the start, or a relapse above the start -> diverged
- stall: closes 0-10% of the gap -> stalled
- spike: one loss or gradient spike of 10-50 noise sigmas -> located within 2 logged points

held out (never used to choose a number)
- heavy_tailed: healthy with Student-t (3 degrees of freedom) noise -> not diverged, not unstable
- restarts_no_lr: warm restarts and no LR column -> not diverged, not unstable
- sparse: healthy / explosion / spike traces logged every 5-40 steps or at irregular steps,
  down to 60 points -> as their family
- step1: a NaN at the first logged step, or a loss exploding from the start -> diverged there
- drift: after converging, the loss drifts back up to 2-4x its best and stays -> diverged
- grad_only: a gradient spike of 20-100x with no trace in the loss, 15-25 steps after a warm restart
  (LR column present) -> located

and, per family a row, those written after them (``NEW``, ``NEWER``) and from the classes public
logs were misread in (``READER``: rose_and_stayed, recovered_spikes, weight_resets, grad_first,
daily_jumps, epoch_lr_drops), each described in its docstring.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

from diagnostics.cli import int_at_least
from diagnostics.detect import classify

N_STEPS = 250


def base(rng, n=N_STEPS, heavy=False):
    start, floor = rng.uniform(2.0, 4.0), rng.uniform(0.0, 1.8)
    rate, noise = rng.uniform(0.01, 0.05), rng.uniform(0.005, 0.03)
    t = np.arange(1, n + 1)
    clean = floor + (start - floor) * np.exp(-rate * t)
    draw = (lambda k: rng.standard_t(3, k) / math.sqrt(3)) if heavy else rng.standard_normal
    loss = clean * (1 + noise * draw(n))
    g_level, g_noise = rng.uniform(0.3, 3.0), rng.uniform(0.02, 0.1)
    grad = g_level * np.abs(1 + g_noise * draw(n))
    lr = np.full(n, 1e-3)
    return dict(t=t, loss=loss, grad=grad, lr=lr, floor=floor, noise=noise, clean=clean, g_noise=g_noise,
                g_level=g_level)


def restarts(rng, p, with_lr=True):
    gap = p["loss"][0] - p["floor"]
    period = int(rng.integers(40, 90))
    n = len(p["t"])
    lr = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (np.arange(n) % period) / period)) + 1e-6
    for r in range(period, n, period):
        p["loss"][r:] += rng.uniform(0.1, 0.4) * gap * np.exp(-rng.uniform(0.03, 0.1) * np.arange(n - r))
    p["lr"] = lr if with_lr else None
    return p


def healthy(rng):
    p = base(rng)
    return dict(restarts(rng, p) if rng.random() < 0.5 else p, expect="healthy")


def nonfinite(rng):
    p = base(rng)
    k = int(rng.integers(2, N_STEPS))
    (p["loss"] if rng.random() < 0.7 else p["grad"])[k - 1:] = rng.choice([math.nan, math.inf])
    return dict(p, k=k, expect="diverged", exact=True)


def explosion(rng):
    p = base(rng)
    loss, early = p["loss"], p["loss"][:5].mean()
    kind = rng.integers(3)
    if kind == 0:  # runaway: geometric growth, 8-30% a step
        k = int(rng.integers(20, N_STEPS - 60))
        loss[k - 1:] *= (1 + rng.uniform(0.08, 0.3)) ** np.arange(N_STEPS - k + 1)
    elif kind == 1:  # blow-up: jumps to 3.5-50x where training started, and stays
        k = int(rng.integers(20, N_STEPS - 30))
        loss[k - 1:] = early * rng.uniform(3.5, 50) * (1 + p["noise"] * rng.standard_normal(N_STEPS - k + 1))
    else:  # relapse: after closing >= 60% of the gap, back to 1.1-3x the early level
        closed = (early - p["clean"]) / (early - p["floor"])
        first = int(np.argmax(closed >= 0.6)) + 1 if (closed >= 0.6).any() else N_STEPS
        k = int(rng.integers(min(first + 5, N_STEPS - 30), N_STEPS - 29))
        loss[k - 1:] = early * rng.uniform(1.1, 3.0) * (1 + p["noise"] * rng.standard_normal(N_STEPS - k + 1))
    p["grad"][k - 1:] *= 10
    return dict(p, k=k, expect="diverged")


def stall(rng):
    p = base(rng)
    start, frac = p["loss"][0], rng.uniform(0.0, 0.1)
    p["loss"] = (start - frac * (start - p["floor"]) * (1 - np.exp(-0.02 * p["t"]))) * (
        1 + p["noise"] * rng.standard_normal(N_STEPS))
    return dict(p, expect="stalled")


def spike(rng, p=None, k=None):
    p = p or base(rng)
    k = k or int(rng.integers(80, N_STEPS - 5))
    if rng.random() < 0.5:
        p["loss"][k - 1] += rng.uniform(10, 50) * p["noise"] * p["clean"][k - 1]
        signal = "loss_spike"
    else:
        p["grad"][k - 1] += rng.uniform(10, 50) * p["g_noise"] * p["g_level"]
        signal = "grad_spike"
    return dict(p, k=k, signal=signal, expect="spike")


def heavy_tailed(rng):
    return dict(base(rng, heavy=True), expect="healthy")


def restarts_no_lr(rng):
    return dict(restarts(rng, base(rng), with_lr=False), expect="healthy")


def thin(p, rng):
    """Keep every s-th step (s 5-40) or a random sorted subset, at least 60 points; the fault's
    step moves to the first kept step at or after it."""
    n = len(p["t"])
    if rng.random() < 0.5:
        keep = np.arange(0, n, int(rng.integers(5, 41)))
    else:
        keep = np.sort(rng.choice(n, size=int(rng.integers(60, 120)), replace=False))
    if "k" in p and p.get("expect") == "spike":  # the spike's step is logged
        keep = np.union1d(keep, [p["k"] - 1])
    out = dict(p)
    for key in ("t", "loss", "grad", "clean"):
        out[key] = p[key][keep]
    out["lr"] = None if p["lr"] is None else p["lr"][keep]
    if "k" in p:
        after = out["t"][out["t"] >= p["k"]]
        out["k"] = int(after[0]) if len(after) else int(out["t"][-1])
    return out


def sparse(rng):
    n = 1500  # a long run, logged sparsely
    kind = rng.integers(3)
    if kind == 0:
        p = dict(base(rng, n), expect="healthy")
    elif kind == 1:
        p = base(rng, n)
        k = int(rng.integers(300, n - 400))
        p["loss"][k - 1:] = p["loss"][:5].mean() * rng.uniform(3.5, 20) * (1 + p["noise"] * rng.standard_normal(n - k + 1))
        p = dict(p, k=k, expect="diverged")
    else:
        p = spike(rng, base(rng, n), int(rng.integers(400, n - 100)))
        p["loss"][p["k"] - 1] = max(p["loss"][p["k"] - 1], p["clean"][p["k"] - 1] * (1 + 40 * p["noise"]))
        p["grad"][p["k"] - 1] = max(p["grad"][p["k"] - 1], p["g_level"] * (1 + 40 * p["g_noise"]))
    p = thin(p, rng)
    return dict(p, window=1)  # located within one logged point either side counts


def step1(rng):
    p = base(rng)
    if rng.random() < 0.5:
        p["loss"][0] = math.nan
        return dict(p, k=1, expect="diverged", exact=True)
    p["loss"] = p["loss"][0] * (1 + rng.uniform(0.1, 0.3)) ** np.arange(N_STEPS)
    return dict(p, k=1, expect="diverged")


def drift(rng):
    p = base(rng)
    p["floor"] = 0.0
    best_at = int(rng.integers(100, 150))
    best = p["clean"][best_at]
    k = best_at + 1
    target = best * rng.uniform(2.0, 4.0)
    climb = int(rng.integers(10, 40))
    level = np.concatenate([np.linspace(best, target, climb), np.full(N_STEPS - best_at - climb, target)])
    p["loss"][best_at:] = level * (1 + p["noise"] * rng.standard_normal(N_STEPS - best_at))
    return dict(p, k=k, expect="diverged", tolerance=climb + 20)


def grad_only(rng):
    p = restarts(rng, base(rng))
    period = int(np.argmax(np.diff(p["lr"]) > 0)) + 1
    k = period + int(rng.integers(15, 26))
    p["grad"][k - 1] *= rng.uniform(20, 100)
    return dict(p, k=k, signal="grad_spike", expect="spike")


def multiplicative(sigma: float):
    """Small-batch noise: the gradient norm wobbles by ``sigma`` (log scale, Student-t with 3
    degrees of freedom) with occasional 2-4x blips (2% of points), the loss by a fifth of that.
    Half the traces are healthy; the others diverge (a NaN, or a runaway) -> diverged."""
    def make(rng):
        p = base(rng)
        n = len(p["t"])
        t3 = lambda: rng.standard_t(3, n) / math.sqrt(3)  # noqa: E731
        p["grad"] = p["g_level"] * np.exp(sigma * t3()) * np.where(rng.random(n) < 0.02, rng.uniform(2, 4, n), 1.0)
        p["loss"] = p["clean"] * np.exp(sigma / 5 * t3())
        p["noise"] = sigma / 5
        kind = rng.integers(4)
        if kind >= 2:
            return dict(p, expect="healthy")
        k = int(rng.integers(30, n - 30))
        if kind == 0:
            p["loss"][k - 1:] = math.nan
            return dict(p, k=k, expect="diverged", exact=True)
        p["loss"][k - 1:] *= (1 + rng.uniform(0.1, 0.3)) ** np.arange(n - k + 1)
        p["grad"][k - 1:] *= 10
        return dict(p, k=k, expect="diverged")
    make.__name__ = f"multiplicative_{sigma:g}"
    return make


def pandas_written(rng):
    """A log written through a pandas DataFrame (NaN -> empty cell) and read back by
    ``diagnostics detect``'s reader: a run that went NaN at step k has a blank loss from k to the
    end while its step and LR (and, half the time, a gradient norm) go on -> diverged at k. The
    healthy half ends with evaluation rows that log no training column -> healthy."""
    import pandas as pd

    from diagnostics.detect import logs

    p = base(rng)
    n = len(p["t"])
    df = pd.DataFrame(dict(step=p["t"], loss=p["loss"], grad_norm=p["grad"], learning_rate=p["lr"]))
    if rng.random() < 0.5:
        k = int(rng.integers(20, n - 10))
        df.loc[df.step >= k, "loss"] = math.nan
        if rng.random() < 0.5:
            df.loc[df.step >= k, "grad_norm"] = math.nan
        out = dict(expect="diverged", k=k, exact=True)
    else:
        evals = pd.DataFrame(dict(step=[n, n], eval_loss=[p["loss"][-1] * 1.05] * 2))
        df = pd.concat([df, evals], ignore_index=True)
        out = dict(expect="healthy")
    path = TMP / f"pandas-{rng.integers(1 << 62)}.csv"
    df.to_csv(path, index=False)
    table = logs.read(path)
    path.unlink()
    return dict(p, table=table, **out)


def daily(rng):
    """A long pretraining logged once a day: 70 points of a power-law loss (noise 0.3-1%,
    multiplicative) with one incident an operator would note, from the third day on: a one-day
    jump of 5-30% (back the next day), or a climb over 3-6 days of 10-40% in all (then training
    goes on) -> located within 2 logged points. A quarter are healthy."""
    n = 70
    t = np.arange(1, n + 1) * 1000
    floor, amp, alpha = rng.uniform(1.5, 2.5), rng.uniform(4, 8), rng.uniform(0.2, 0.6)
    clean = floor + amp * (t / 1000) ** -alpha
    noise = rng.uniform(0.003, 0.01)
    loss = clean * np.exp(noise * rng.standard_normal(n))
    grad = rng.uniform(0.3, 3) * np.exp(0.05 * rng.standard_normal(n))
    p = dict(t=t, loss=loss, grad=grad, lr=None, floor=math.nan, noise=noise, clean=clean)
    kind = rng.integers(4)
    if kind == 0:
        return dict(p, expect="healthy")
    i = int(rng.integers(2, n - 8))  # index of the incident's first day
    if kind in (1, 2):
        loss[i] *= 1 + rng.uniform(0.05, 0.3)
    else:
        days = int(rng.integers(3, 7))
        loss[i:i + days] *= np.linspace(1, 1 + rng.uniform(0.1, 0.4), days + 1)[1:]
        loss[i + days:] *= 1 + rng.uniform(0.1, 0.4) * 0.5
    return dict(p, k=int(t[i]), signal="loss", expect="spike", window=2)


def plateau(rng):
    """5000 steps logged every 10, floor unknown. Half reach a plateau within the first 4% of the
    run having closed 15-25% of the distance to zero, and sit on it; half improve all the way
    (power law). Both learned -> not stalled (until the stall rule judged the whole curve, the
    first half was labelled stalled: "the later half did not improve")."""
    n = 500
    t = np.arange(1, n + 1) * 10
    start, noise = rng.uniform(2, 6), rng.uniform(0.005, 0.03)
    if rng.random() < 0.5:
        level = start * (1 - rng.uniform(0.15, 0.25))
        clean = level + (start - level) * np.exp(-t / rng.uniform(30, 60))
    else:
        clean = start * (t / 10) ** -rng.uniform(0.1, 0.3)
    expect = "not stalled"
    p = dict(t=t, loss=clean * np.exp(noise * rng.standard_normal(n)), grad=np.exp(0.05 * rng.standard_normal(n)),
             lr=np.full(n, 1e-3), floor=math.nan, noise=noise, clean=clean)
    return dict(p, expect=expect)


# ---------------------------------------------------------------------------------------------
# written with the whole-curve stall rule and the recent-range spike rule, never used to choose
# a number (the range factor was read off the older families' healthy ratios: ``range_ratios``)
# ---------------------------------------------------------------------------------------------

def log_noise(rng, n, sigma):
    """Multiplicative noise: exp(sigma x Student-t(3) / sqrt 3), heavy-tailed."""
    return np.exp(sigma * rng.standard_t(3, n) / math.sqrt(3))


def fast_floor(rng):
    """Converges within the first 5-25% of the run (to 1% of its gap) and sits at its floor for
    the rest: 1000-4000 steps logged every 1-10, noise 0.5-3%, floor unknown half the time ->
    healthy (not stalled, not unstable), with a plateau located where the floor is reached."""
    n, every = int(rng.integers(1000, 4001)), int(rng.integers(1, 11))
    t = np.arange(every, n + 1, every)
    start, floor = rng.uniform(2.5, 7.0), rng.uniform(0.5, 2.5)
    tau = rng.uniform(0.05, 0.25) * n / math.log(100)
    clean = floor + (start - floor) * np.exp(-t / tau)
    noise = rng.uniform(0.005, 0.03)
    loss = clean * np.exp(noise * rng.standard_normal(len(t)))
    grad = rng.uniform(0.3, 3) * np.exp(0.1 * rng.standard_normal(len(t)))
    known = rng.random() < 0.5
    return dict(t=t, loss=loss, grad=grad, lr=np.full(len(t), 1e-3), floor=floor if known else math.nan, noise=noise,
                clean=clean, expect="healthy")


def slow_tail(rng):
    """Long runs (10K-200K steps, 500-2000 points) whose later half improves by less than 5%: a
    power law with a small exponent over a floor, noise 0.3-2% -> healthy."""
    n_pts = int(rng.integers(500, 2001))
    t = np.linspace(1, rng.uniform(1e4, 2e5), n_pts).round().astype(int)
    t = np.unique(t)
    start, floor = rng.uniform(6.0, 11.0), rng.uniform(1.5, 3.0)
    alpha = rng.uniform(0.15, 0.5)
    clean = floor + (start - floor) * (1 + t / rng.uniform(50, 500)) ** -alpha
    noise = rng.uniform(0.003, 0.02)
    loss = clean * np.exp(noise * rng.standard_normal(len(t)))
    grad = rng.uniform(0.2, 2) * log_noise(rng, len(t), 0.1)
    return dict(t=t, loss=loss, grad=grad, lr=None, floor=math.nan, noise=noise, clean=clean, expect="healthy")


def never_learn(rng):
    """Runs that truly never learn: flat from the start, a slow drift of at most 2% in all, a
    quick drop of at most 3% in the first steps and nothing after, or only a warmup transient
    (the LR warms up linearly over the first 10%, and the loss dips by 30-90% of the stall margin,
    i.e. of 20% of its gap to a known floor or 5% of its level, and returns to where it started
    by the end of it: it never learned even at its best); 200-3000 points, noise 0.5-3%, floor
    known half the time (20-60% below the start) -> stalled."""
    n = int(rng.integers(200, 3001))
    t = np.arange(1, n + 1)
    start, noise = rng.uniform(1.0, 7.0), rng.uniform(0.005, 0.03)
    floor = start * (1 - rng.uniform(0.2, 0.6)) if rng.random() < 0.5 else math.nan
    margin = 0.05 if math.isnan(floor) else 0.2 * (start - floor) / start  # relative to the start
    warm = max(3, int(0.1 * n))
    lr = np.full(n, 1e-3)
    kind = rng.integers(4)
    clean = np.full(n, start)
    if kind == 1:
        clean = start * (1 - rng.uniform(0, 0.02) * t / n)
    elif kind == 2:
        clean = start * (1 - rng.uniform(0, 0.03) * (1 - np.exp(-t / rng.uniform(2, 10))))
    elif kind == 3:
        lr = 1e-3 * np.minimum(t / warm, 1.0)
        shape = np.sin(np.pi * np.clip(t / warm, 0, 1))  # 0 -> 1 -> 0 over the warmup
        clean = start * (1 - rng.uniform(0.3, 0.9) * margin * shape)
    loss = clean * np.exp(noise * rng.standard_normal(n))
    grad = rng.uniform(0.2, 2) * np.exp(0.1 * rng.standard_normal(n))
    return dict(t=t, loss=loss, grad=grad, lr=lr, floor=floor, noise=noise, clean=clean, expect="stalled")


def heavy_spikes(rng):
    """A healthy descent whose gradient norm wobbles by 10-50% (log scale, Student-t(3)) with 2-4x
    blips at 2-8% of points, and one gradient spike of 8-100x the largest of the 20 values before
    it, from the 40th point on -> located within 2 logged points, not diverged."""
    p = base(rng)
    n = len(p["t"])
    sigma, blips = rng.uniform(0.1, 0.5), rng.uniform(0.02, 0.08)
    grad = p["g_level"] * log_noise(rng, n, sigma) * np.where(rng.random(n) < blips, rng.uniform(2, 4, n), 1.0)
    k = int(rng.integers(40, n - 5))
    grad[k - 1] = grad[k - 21:k - 1].max() * rng.uniform(8, 100)
    p["grad"] = grad
    return dict(p, k=k, signal="grad_spike", expect="spike")


def lr_schedules(rng):
    """The loss follows its LR schedule (logged): a step decay (x0.1 at 60%: the loss drops to a
    lower floor), warm restarts (each restart lifts the loss 10-40% of its gap, then it falls
    again), or one cycle (warmup to the peak at 30%, then annealing: the loss falls faster as the
    LR falls); 250-1000 steps -> healthy."""
    n = int(rng.integers(250, 1001))
    t = np.arange(1, n + 1)
    start, floor, noise = rng.uniform(2, 5), rng.uniform(0.2, 1.5), rng.uniform(0.005, 0.03)
    kind = rng.integers(3)
    if kind == 0:
        lr = np.where(t < 0.6 * n, 1e-3, 1e-4)
        clean = floor + (start - floor) * np.exp(-t / (0.15 * n))
        clean = np.where(t < 0.6 * n, clean + 0.3 * floor, clean + 0.3 * floor * np.exp(-(t - 0.6 * n) / (0.03 * n)))
    elif kind == 1:
        period = int(rng.integers(n // 6, n // 3))
        lr = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (t % period) / period)) + 1e-6
        clean = floor + (start - floor) * np.exp(-t / (0.1 * n))
        for r in range(period, n, period):
            clean[r:] += rng.uniform(0.1, 0.4) * (start - floor) * 0.3 * np.exp(-np.arange(n - r) / (0.05 * period))
    else:
        peak = int(0.3 * n)
        lr = np.where(t < peak, 1e-3 * t / peak, 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (t - peak) / (n - peak)))) + 1e-7
        progress_ = np.cumsum(lr) / lr.sum()
        clean = floor + (start - floor) * np.exp(-5 * progress_)
    loss = clean * np.exp(noise * rng.standard_normal(n))
    grad = rng.uniform(0.3, 3) * np.exp(0.1 * rng.standard_normal(n)) * np.sqrt(lr / lr.max() + 0.1)
    return dict(t=t, loss=loss, grad=grad, lr=lr, floor=math.nan if rng.random() < 0.5 else floor, noise=noise,
                clean=clean, expect="healthy")


# ---------------------------------------------------------------------------------------------
# written from the classes public logs were misread in (a reader's status order, sparse logs),
# kept apart and never used to choose a number
# ---------------------------------------------------------------------------------------------

def rose_and_stayed(rng):
    """The loss rises from its start to 3-15x within 2-5 points, from the 5th-60th point on, and
    wanders there to the end (log-normal, 30-60% per point: between about 2x and 14x the start,
    so it dips under any fixed 3x line) -> diverged, at the rise (within 5 points)."""
    n = int(rng.integers(150, 400))
    p = base(rng, n)
    k = int(rng.integers(5, 60))
    rise = int(rng.integers(2, 6))
    high = p["loss"][0] * rng.uniform(3, 15)
    path = np.concatenate([np.geomspace(p["clean"][k - 1], high, rise), np.full(n - k + 1 - rise, high)])
    p["loss"][k - 1:] = path * np.exp(rng.uniform(0.3, 0.6) * rng.standard_normal(n - k + 1))
    p["floor"] = math.nan if rng.random() < 0.5 else p["floor"]
    return dict(p, k=k, expect="diverged", tolerance=5)


def recovered_spikes(rng):
    """A healthy run with 10-30 loss spikes, some of 100-300x its running level, each back on
    its course within 1-3 points (the gradient norm spikes with it) -> not diverged, unstable."""
    p = base(rng, int(rng.integers(300, 1000)))
    n = len(p["t"])
    for k in rng.choice(np.arange(20, n - 5), size=int(rng.integers(10, 31)), replace=False):
        width = int(rng.integers(1, 4))
        size = rng.uniform(100, 300) if rng.random() < 0.2 else rng.uniform(3, 30)
        p["loss"][k:k + width] *= size * np.geomspace(1, 1 / size, width + 1)[:-1] ** 0.5
        p["grad"][k:k + width] *= size
    return dict(p, expect="spiky")


def weight_resets(rng):
    """A run whose weights are reset 1-3 times on purpose: the loss goes back to its starting
    level at once and learns again (as fast as the first time) -> not diverged."""
    n = int(rng.integers(400, 1000))
    p = base(rng, n)
    resets = np.sort(rng.choice(np.arange(100, n - 80), size=int(rng.integers(1, 4)), replace=False))
    t0 = 0
    clean = p["clean"].copy()
    for r in resets:
        clean[r:] = p["clean"][: n - r]
        t0 = r
    p["loss"] = clean * (1 + p["noise"] * rng.standard_normal(n))
    return dict(p, expect="spiky", resets=t0)


def grad_first(rng):
    """The gradient norm leaves its level for good at step k (it grows 10-30% a point, up to
    1e19) while the loss stays on its course for 30-120 more points, then the loss becomes NaN
    -> diverged at k (within 3 points), the NaN an event of its own."""
    n = 400
    p = base(rng, n)
    k = int(rng.integers(50, 200))
    later = int(rng.integers(30, 121))
    p["grad"][k - 1:] *= np.minimum((1 + rng.uniform(0.1, 0.3)) ** np.arange(n - k + 1), 1e19)
    p["loss"][k - 1 + later:] = math.nan
    return dict(p, k=k, expect="diverged", tolerance=3, nan_at=k + later)


def daily_jumps(rng):
    """A log of one point a day (70 points of a power-law loss, noise 0.3-1%) where the loss
    jumps up 5-10% from one day to the next and stays up (then goes on falling), from the 3rd day
    to the 60th -> located within 2 logged points. The jump is from the day before: the clean loss
    of its day is 5-10% above the clean loss of the day before. (Until 2026-12-04 the whole rest
    of the curve was raised by 5-10%, which on days 3-4, where the power law falls 7-13% a day,
    left some "jumps" that never rose at all; the docs give both figures.)"""
    n = 70
    t = np.arange(1, n + 1) * 1000
    floor, amp, alpha = rng.uniform(1.5, 2.5), rng.uniform(4, 8), rng.uniform(0.2, 0.6)
    clean = floor + amp * (t / 1000) ** -alpha
    noise = rng.uniform(0.003, 0.01)
    i = int(rng.integers(2, 60))
    clean[i:] *= (1 + rng.uniform(0.05, 0.10)) * clean[i - 1] / clean[i]
    loss = clean * np.exp(noise * rng.standard_normal(n))
    grad = rng.uniform(0.3, 3) * np.exp(0.05 * rng.standard_normal(n))
    return dict(t=t, loss=loss, grad=grad, lr=None, floor=math.nan, noise=noise, clean=clean, k=int(t[i]),
                signal="loss", expect="spike", window=2)


def epoch_lr_drops(rng):
    """A healthy per-epoch log (90-300 epochs, a point each) under a step schedule: the LR drops
    10x at 2-3 milestones and the loss drops 20-50% within an epoch or two; the LR is logged
    half the time -> converged, with no spike or shift event."""
    n = int(rng.integers(90, 301))
    t = np.arange(1, n + 1)
    start, floor, noise = rng.uniform(1.5, 2.5), rng.uniform(0.0, 0.3), rng.uniform(0.005, 0.02)
    milestones = np.sort(rng.choice(np.arange(int(0.3 * n), int(0.9 * n)), size=int(rng.integers(2, 4)),
                                    replace=False))
    lr = 0.1 * 0.1 ** np.searchsorted(milestones, t, side="right")
    plateau = floor + 0.4 * (start - floor)  # where the first LR leaves it
    clean = plateau + (start - plateau) * np.exp(-t / (0.1 * n))
    for m in milestones:
        clean = np.where(t > m, floor + (clean - floor) * rng.uniform(0.5, 0.8), clean)
    loss = clean * np.exp(noise * rng.standard_normal(n))
    grad = rng.uniform(0.3, 3) * np.sqrt(lr / 0.1) ** 0.5 * np.exp(0.05 * rng.standard_normal(n))
    return dict(t=t, loss=loss, grad=grad, lr=lr if rng.random() < 0.5 else None, floor=math.nan, noise=noise,
                clean=clean, expect="healthy", quiet=True)


def range_ratios(families, n, rng) -> dict[str, float]:
    """Largest ratio of a healthy trace's value to the largest of the 20 before it, per family and
    signal (99th percentile over traces): where the recent-range factor has to sit above."""
    out = {}
    for name, make in families.items():
        for sig in ("grad", "loss"):
            worst = []
            for _ in range(n):
                p = make(rng)
                if p["expect"] not in ("healthy", "not stalled") or p.get("lr") is not None and sig == "loss":
                    continue  # a schedule's LR rise raises the factor (Thresholds.lr_raise_factor)
                x = np.log(np.asarray(p[sig], float))
                worst.append(max(x[i] - x[i - 20:i].max() for i in range(20, len(x))))
            if worst:
                out[f"{name} {sig}"] = float(np.exp(np.quantile(worst, 0.99)))
    return out


TUNED = {"healthy": healthy, "nonfinite": nonfinite, "explosion": explosion, "stall": stall, "spike": spike}
HELD_OUT = {"heavy_tailed": heavy_tailed, "restarts_no_lr": restarts_no_lr, "sparse": sparse, "step1": step1,
            "drift": drift, "grad_only": grad_only}
# written after the rules for noisy, sparse and pandas-written logs were, and never used to tune them
NEW = {f.__name__: f for f in (multiplicative(0.1), multiplicative(0.2), multiplicative(0.3), pandas_written, daily,
                               plateau)}
# written with the whole-curve stall rule and the range rule, never used to choose a number
NEWER = {f.__name__: f for f in (fast_floor, slow_tail, never_learn, heavy_spikes, lr_schedules)}
# written from the classes public logs were misread in, never used to choose a number
READER = {f.__name__: f for f in (rose_and_stayed, recovered_spikes, weight_resets, grad_first, daily_jumps,
                                  epoch_lr_drops)}
TMP = Path(tempfile.gettempdir())


def judge(p) -> dict[str, bool]:
    """What this trace scores on: {measure: hit}."""
    if "table" in p:  # read back from a file
        v, events = classify(p["table"], loss_floor=p["floor"])
    else:
        lr = p["lr"] if p.get("lr") is not None else [None] * len(p["t"])
        rows = list(zip(p["t"].tolist(), p["loss"].tolist(), p["grad"].tolist(), list(lr)))
        v, events = classify(rows, loss_floor=p["floor"])
    diverged = v.status.startswith("diverged")
    if p["expect"] in ("healthy", "not stalled"):
        out = {"healthy called diverged": diverged, "healthy called unstable": v.status == "unstable",
               "healthy called stalled": v.status == "stalled"}
        if p.get("quiet"):  # nothing happened a reader would note: no spike or shift event either
            out["healthy with a spike event"] = any(e.kind.endswith(("_spike", "_shift")) for e in events)
        return out
    if p["expect"] == "spiky":  # excursions that come back: spikes, never a divergence
        return {"spike called diverged": diverged, "spiky runs unstable": v.status == "unstable"}
    if p["expect"] == "diverged":
        tol = 0 if p.get("exact") else p.get("tolerance", 20)
        located = diverged and abs(v.divergence_step - p["k"]) <= tol
        out = {"divergence recall": diverged, "divergence located": located}
        if "nan_at" in p:  # the log's first NaN is recorded too
            out["first NaN recorded"] = any(e.step == p["nan_at"] and e.kind in ("nonfinite", "first_nonfinite")
                                            for e in events)
        return out
    if p["expect"] == "stalled":
        return {"stalls found": v.status == "stalled"}
    window = p.get("window", 2)
    steps = list(p["t"])
    i = steps.index(p["k"])
    near = set(steps[max(0, i - window): i + window + 1])
    if p["signal"] == "loss":  # an incident on the loss: a spike, a shift, or where a divergence starts
        hits = [e.step for e in events if e.signal == "loss" and e.kind != "recovery"] + [v.divergence_step]
        return {"spikes located": any(s in near for s in hits)}
    hits = [e.step for e in events if e.kind == p["signal"]]
    return {"spikes located": any(s in near for s in hits), "spike called diverged": diverged}


def run(families, n, rng) -> dict[str, list[bool]]:
    tally: dict[str, list[bool]] = {}
    for make in families.values():
        for _ in range(n):
            for k, v in judge(make(rng)).items():
                tally.setdefault(k, []).append(bool(v))
    return tally


REAL = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stability_traces.csv"
THIN = 10  # the real traces thinned to every 10th step


def real_traces() -> dict[str, list[bool]]:
    """The stability sweep's real traces (tests/fixtures), judged dense and thinned to every
    THIN-th step: does sparse logging give the same verdict, and the divergence within one
    logged point? (Their dense verdicts are the reference; no label is invented.)"""
    from diagnostics.detect import logs

    table = logs.read(REAL)
    tally: dict[str, list[bool]] = {}
    for _, trace in table.groupby("run_id"):
        dense, _ = classify(trace)
        thin = trace[trace["step"] % THIN == 0]
        if len(thin) < 5:  # it ended (diverged) within its first few logged points: nothing to thin
            continue
        sparse, _ = classify(thin)
        tally.setdefault("same verdict dense and thinned", []).append(
            dense.status.startswith("diverged") == sparse.status.startswith("diverged"))
        if dense.status.startswith("diverged") and sparse.status.startswith("diverged"):
            tally.setdefault("divergence within one logged point", []).append(
                abs(sparse.divergence_step - dense.divergence_step) <= THIN)
        tally.setdefault("diverged (dense)", []).append(dense.status.startswith("diverged"))
    return tally


MEASURES = ("divergence recall", "divergence located", "healthy called diverged", "healthy called unstable",
            "healthy called stalled", "stalls found", "spikes located", "spike called diverged", "spiky runs unstable",
            "healthy with a spike event", "first NaN recorded")


def fresh_sample(names: list[str], seeds: list[int], n: int) -> None:
    """Each named family on its own generator per seed (``[seed, crc32(name)]``: draws apart from
    the table's, which share one generator in family order), n traces a seed: each measure's
    rate over all of them with its 95% interval (Clopper-Pearson)."""
    import zlib

    from scipy.stats import binomtest

    families = {**TUNED, **HELD_OUT, **NEW, **NEWER, **READER}
    unknown = [name for name in names if name not in families]
    if unknown:
        raise SystemExit(f"detection.py: unknown families {', '.join(unknown)}; valid: {', '.join(families)}")
    for name in names:
        tally: dict[str, list[bool]] = {}
        for seed in seeds:
            for k, v in run({name: families[name]}, n, np.random.default_rng([seed, zlib.crc32(name.encode())])).items():
                tally.setdefault(k, []).extend(v)
        cells = []
        for key, hits in tally.items():
            ci = binomtest(sum(hits), len(hits)).proportion_ci()
            cells.append(f"{key} {100 * sum(hits) / len(hits):.1f}% ({sum(hits)}/{len(hits)}; 95% CI "
                         f"{100 * ci.low:.1f}-{100 * ci.high:.1f}%)")
        print(f"{name} (seeds {','.join(map(str, seeds))}, {n} a seed): " + "; ".join(cells))


def seeds_arg(text: str) -> list[int]:
    """``--seeds``: the grid's seed list (spec.parse_seeds), an argparse error where it is not one."""
    from diagnostics.grid.spec import SpecError, parse_seeds

    try:
        return list(parse_seeds(text))
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int_at_least(1), default=200, help="traces per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ratios", action="store_true", help="print the healthy range ratios (Thresholds.spike_range_factor)")
    ap.add_argument("--families", help="a larger sample of these families (comma list), apart from the table: "
                                       "--seeds of them, --n traces a seed")
    ap.add_argument("--seeds", type=seeds_arg, default=[1, 2, 3, 4, 5], help="with --families (default 1,2,3,4,5)")
    args = ap.parse_args()
    if args.families:
        fresh_sample(args.families.split(","), args.seeds, args.n)
        return
    rng = np.random.default_rng(args.seed)
    if args.ratios:
        older = {"healthy": healthy, "heavy_tailed": heavy_tailed, "restarts_no_lr": restarts_no_lr, **NEW}
        for key, ratio in range_ratios(older, args.n, rng).items():
            print(f"{key}: 99th percentile of a healthy value / the largest of the 20 before it = {ratio:.2f}")
        return
    tuned, held = run(TUNED, args.n, rng), run(HELD_OUT, args.n, rng)
    print(f"{args.n} traces per family, seed {args.seed}; tuned: {', '.join(TUNED)}; held out: {', '.join(HELD_OUT)}\n")
    print("| measure | tuned families | held-out families |\n|---|---|---|")
    cell = lambda t, key: f"{100 * sum(t[key]) / len(t[key]):.1f}% ({sum(t[key])}/{len(t[key])})" if key in t else "-"  # noqa: E731
    for key in MEASURES:
        print(f"| {key} | {cell(tuned, key)} | {cell(held, key)} |")
    per_family = {name: run({name: make}, args.n, rng) for name, make in {**NEW, **NEWER, **READER}.items()}
    print(f"\nheld out, one family a row ({args.n} traces per family; fast_floor to lr_schedules written with the "
          "whole-curve stall rule and the range rule, rose_and_stayed to epoch_lr_drops from the classes public logs "
          "were misread in):\n")
    print("| family | " + " | ".join(MEASURES) + " |\n|---|" + "---|" * len(MEASURES))
    for name, t in per_family.items():
        print(f"| {name} | " + " | ".join(cell(t, key) for key in MEASURES) + " |")
    if REAL.exists():
        real = real_traces()
        n = len(real["diverged (dense)"])
        print(f"\nreal traces ({REAL.name}: {n} runs of the stability sweep long enough to thin), dense vs every "
              f"{THIN}th step:")
        for key in real:
            print(f"- {key}: {cell(real, key)}")


if __name__ == "__main__":
    main()
