"""Synthetic loss / grad-norm traces for detector tests: a decaying loss with noise."""

import math

import numpy as np


def healthy(n=300, start=3.5, floor=1.7, rate=0.02, noise=0.01, seed=0):
    """Exponential approach from ``start`` to ``floor`` with multiplicative noise."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    loss = floor + (start - floor) * np.exp(-rate * steps)
    loss = loss * (1 + noise * rng.standard_normal(n))
    grad = 1.0 + 0.05 * rng.standard_normal(n)
    return steps, loss, grad


def rows(steps, loss, grad):
    return list(zip(steps.tolist(), loss.tolist(), grad.tolist()))


def with_restarts(n=300, every=80, bump=0.6, seed=0):
    """A healthy trace whose loss jumps up by ``bump`` at each warm restart, then decays again."""
    steps, loss, grad = healthy(n, seed=seed)
    for r in range(every, n, every):
        loss[r:] += bump * np.exp(-0.05 * np.arange(n - r))
    return steps, loss, grad


def nan_at(k, n=300, seed=0):
    steps, loss, grad = healthy(n, seed=seed)
    loss[k - 1 :] = math.nan
    return steps, loss, grad
