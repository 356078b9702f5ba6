"""Detector quality on generated traces with known faults (``detect.classify``, the same rules
the training loop uses).

    python benchmarks/detection.py [--n 400] [--seed 0]

Trace families (steps 250 unless noted; loss decays exponentially from ~ln(V) towards a floor
with multiplicative noise of 0.5-3%; grad norm noisy around a level):

- healthy: plain, and with warm restarts (the LR jumps back up; the loss bumps by 10-40% of the
  gap, then decays);
- nonfinite: NaN/inf in the loss or the grad norm at a random step;
- explosion: from a random step the loss grows geometrically (8-30% a step), or jumps to
  3.5-50x where training started, or (after closing >= 60% of the gap) relapses to 1.1-3x it;
- stall: the loss closes only 0-10% of the gap;
- spike: one loss or grad-norm spike (10-50 noise standard deviations) at a random step >= 80.

Prints recall / false-alarm figures for the README.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from diagnostics.detect import classify

N_STEPS = 250


def base(rng, n=N_STEPS):
    start, floor = rng.uniform(2.0, 4.0), rng.uniform(0.0, 1.8)
    rate, noise = rng.uniform(0.01, 0.05), rng.uniform(0.005, 0.03)
    t = np.arange(1, n + 1)
    clean = floor + (start - floor) * np.exp(-rate * t)
    loss = clean * (1 + noise * rng.standard_normal(n))
    g_level, g_noise = rng.uniform(0.3, 3.0), rng.uniform(0.02, 0.1)
    grad = g_level * (1 + g_noise * rng.standard_normal(n))
    lr = np.full(n, 1e-3)
    return t, loss, grad, dict(floor=floor, noise=noise, clean=clean, g_noise=g_noise, g_level=g_level, lr=lr)


def healthy(rng):
    t, loss, grad, p = base(rng)
    if rng.random() < 0.5:  # warm restarts: the LR jumps back up, the loss bumps, then decays
        gap = loss[0] - p["floor"]
        period = int(rng.integers(40, 90))
        p["lr"] = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (np.arange(N_STEPS) % period) / period)) + 1e-6
        for r in range(period, N_STEPS, period):
            loss[r:] += rng.uniform(0.1, 0.4) * gap * np.exp(-rng.uniform(0.03, 0.1) * np.arange(N_STEPS - r))
    return t, loss, grad, p


def nonfinite(rng):
    t, loss, grad, p = base(rng)
    k = int(rng.integers(2, N_STEPS))
    target = loss if rng.random() < 0.7 else grad
    target[k - 1 :] = rng.choice([math.nan, math.inf])
    return t, loss, grad, dict(p, k=k)


def explosion(rng):
    t, loss, grad, p = base(rng)
    early = loss[:5].mean()
    kind = rng.integers(3)
    if kind == 0:  # runaway: geometric growth, 8-30% a step
        k = int(rng.integers(20, N_STEPS - 60))
        loss[k - 1 :] *= (1 + rng.uniform(0.08, 0.3)) ** np.arange(N_STEPS - k + 1)
    elif kind == 1:  # blow-up: jumps to 3.5-50x where training started, and stays
        k = int(rng.integers(20, N_STEPS - 30))
        loss[k - 1 :] = early * rng.uniform(3.5, 50) * (1 + p["noise"] * rng.standard_normal(N_STEPS - k + 1))
    else:  # relapse: after closing >= 60% of the gap, back to 1.1-3x the early level
        closed = (early - p["clean"]) / (early - p["floor"])
        first = int(np.argmax(closed >= 0.6)) + 1 if (closed >= 0.6).any() else N_STEPS
        k = int(rng.integers(min(first + 5, N_STEPS - 30), N_STEPS - 29))
        loss[k - 1 :] = early * rng.uniform(1.1, 3.0) * (1 + p["noise"] * rng.standard_normal(N_STEPS - k + 1))
    grad[k - 1 :] *= 10
    return t, loss, grad, dict(p, k=k)


def stall(rng):
    t, loss, grad, p = base(rng)
    start, frac = loss[0], rng.uniform(0.0, 0.1)
    loss = (start - frac * (start - p["floor"]) * (1 - np.exp(-0.02 * t))) * (1 + p["noise"] * rng.standard_normal(N_STEPS))
    return t, loss, grad, p


def spike(rng):
    t, loss, grad, p = base(rng)
    k = int(rng.integers(80, N_STEPS - 5))
    if rng.random() < 0.5:
        loss[k - 1] += rng.uniform(10, 50) * p["noise"] * p["clean"][k - 1]
        signal = "loss_spike"
    else:
        grad[k - 1] += rng.uniform(10, 50) * p["g_noise"] * p["g_level"]
        signal = "grad_spike"
    return t, loss, grad, dict(p, k=k, signal=signal)


FAMILIES = {"healthy": healthy, "nonfinite": nonfinite, "explosion": explosion, "stall": stall, "spike": spike}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="traces per family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    tally = {k: [] for k in ("div_recall", "div_step_ok", "healthy_diverged", "healthy_spiky", "stall_found",
                             "spike_located", "spike_diverged")}
    for family, make in FAMILIES.items():
        for _ in range(args.n):
            t, loss, grad, p = make(rng)
            rows = list(zip(t.tolist(), loss.tolist(), grad.tolist(), p["lr"].tolist()))
            v, events = classify(rows, loss_floor=p["floor"])
            diverged = v.status.startswith("diverged")
            if family in ("nonfinite", "explosion"):
                tally["div_recall"].append(diverged)
                tally["div_step_ok"].append(diverged and abs(v.divergence_step - p["k"]) <= (0 if family == "nonfinite" else 20))
            elif family == "healthy":
                tally["healthy_diverged"].append(diverged)
                tally["healthy_spiky"].append(v.status == "unstable")
            elif family == "stall":
                tally["stall_found"].append(v.status == "stalled")
            else:
                hits = [e.step for e in events if e.kind == p["signal"]]
                tally["spike_located"].append(any(abs(s - p["k"]) <= 2 for s in hits))
                tally["spike_diverged"].append(diverged)
    total = args.n * len(FAMILIES)
    print(f"{total} traces ({args.n} per family: {', '.join(FAMILIES)}), seed {args.seed}")
    labels = {
        "div_recall": "divergence recall (nonfinite + explosion called diverged)",
        "div_step_ok": "divergence located (nonfinite: exact step; explosion: within 20 steps)",
        "healthy_diverged": "healthy runs called diverged",
        "healthy_spiky": "healthy runs called unstable",
        "stall_found": "stalls found",
        "spike_located": "spikes located within +/-2 steps",
        "spike_diverged": "single spikes called diverged",
    }
    for key, label in labels.items():
        v = tally[key]
        print(f"{label:<75} {100 * sum(v) / len(v):6.2f}%  ({sum(v)}/{len(v)})")


if __name__ == "__main__":
    main()
