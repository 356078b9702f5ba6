"""The detectors people already use, side by side with this project's rules, on every family of
benchmarks/detection.py and on the real logs in tests/fixtures.

    python benchmarks/detection_peers.py [--n 100] [--seed 0]     # docs/measured/detection.md

Each peer is implemented as its source documents it (read from the projects themselves), fed the
same logged points (step, loss, gradient norm) in order:

- **Lightning** ``EarlyStopping(monitor="loss", check_finite=True, divergence_threshold=D)``
  (lightning/pytorch/callbacks/early_stopping.py, ``_evaluate_stopping_criteria``): stops at the
  first non-finite monitored value, or the first value above ``D``. It monitors one metric (the
  loss here; a gradient norm that goes NaN alone is not seen). ``D`` is the user's to choose: here
  3x the run's first loss, the factor this project's explosion rule uses (the most favourable
  fixed choice we know for these traces). ``patience`` is left out (it is early stopping on a
  plateau, not a divergence or spike rule).
- **llm-foundry** ``KillLossSpike()`` defaults (llmfoundry/callbacks/kill_loss_spike_callback.py):
  once 100 losses are in its window, a loss >= 2x their mean is an outlier; more than 4 (patience)
  outliers in a row raise ``LossSpikeError`` (the kill: a divergence call at that step); half the
  window above ``loss_cap`` = 10 after 200 points raises ``HighLossError``. Every outlier is logged
  ("Potential loss spike detected"): those are its spike locations.
- **OLMo-core** ``StabilityMonitorCallback()`` defaults (olmo_core/train/callbacks/stability_monitor.py):
  a loss or gradient norm above mean + 6 std of its last 128 values (full window only) is a spike;
  the spike score is their rate. It gives no divergence verdict.
- **ZClip** (``zclip/zclip.py``, ``mode="zscore"``, alpha 0.97, z_thresh 2.5, 25 warmup steps,
  ``adaptive_scaling``): an EMA mean and variance of the gradient norm; z > 2.5 is a spike (it
  clips it, and the EMA takes the clipped value). It gives no divergence verdict.

Measures, per family and detector (a run "flagged" is one the detector raises an alarm on: a
divergence, a kill, any spike; for this project a status other than ``converged``):
divergence recall and the median step error of the calls (families with a known divergence),
false ``diverged`` (families without one), spikes located within 2 logged points (spike
families), healthy runs flagged (families whose runs are healthy).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection  # noqa: E402  (the families, beside this file)

from diagnostics import detect  # noqa: E402
from diagnostics.detect import logs


@dataclass
class Calls:
    """What a detector said about one trace."""

    diverged_at: float = math.nan  # the step of its divergence call (NaN: none)
    spikes: list[int] = field(default_factory=list)  # steps it flagged as spikes
    flagged: bool = False  # any alarm


class Lightning:
    name = "Lightning EarlyStopping"
    diverges = True

    def __call__(self, points) -> Calls:
        threshold = None
        for step, loss, _grad in points:
            if threshold is None:
                threshold = 3.0 * loss if math.isfinite(loss) else math.inf
            if not math.isfinite(loss) or loss > threshold:  # check_finite, then divergence_threshold
                return Calls(step, [], True)
        return Calls()


class KillLossSpike:
    name = "llm-foundry KillLossSpike"
    diverges = True

    def __init__(self, patience=4, outlier_multiplier=2.0, window_size=100, loss_cap=10.0):
        self.patience, self.mult, self.window, self.cap = patience, outlier_multiplier, window_size, loss_cap

    def __call__(self, points) -> Calls:
        window: deque[float] = deque(maxlen=self.window)
        outliers, calls = 0, Calls()
        for i, (step, loss, _grad) in enumerate(points):
            if len(window) == self.window:
                mean = float(np.mean(window))
                if loss >= mean * self.mult:
                    outliers += 1
                    calls.spikes.append(step)
                    if outliers > self.patience:
                        calls.diverged_at, calls.flagged = step, True
                        return calls
                else:
                    outliers = 0
                    if i >= 2 * self.window and sum(x > self.cap for x in window) >= self.window / 2:
                        calls.diverged_at, calls.flagged = step, True
                        return calls
            window.append(loss)
        calls.flagged = bool(calls.spikes)
        return calls


class OlmoStability:
    name = "OLMo-core StabilityMonitor"
    diverges = False

    def __init__(self, window_size=128, threshold_std=6.0):
        self.window, self.k = window_size, threshold_std

    def spike(self, value, history) -> bool:
        if len(history) < self.window:
            return False
        h = np.asarray(history)
        std = float(h.std())
        return std >= 1e-10 and value > float(h.mean()) + self.k * std

    def __call__(self, points) -> Calls:
        loss_h: deque[float] = deque(maxlen=self.window)
        grad_h: deque[float] = deque(maxlen=self.window)
        calls = Calls()
        for step, loss, grad in points:
            hit = self.spike(loss, loss_h)
            loss_h.append(loss)
            if grad is not None:
                hit = self.spike(grad, grad_h) or hit
                grad_h.append(grad)
            if hit:
                calls.spikes.append(step)
        calls.flagged = bool(calls.spikes)
        return calls


class ZClip:
    name = "ZClip (EMA z-score)"
    diverges = False

    def __init__(self, alpha=0.97, z_thresh=2.5, eps=1e-6, warmup_steps=25):
        self.alpha, self.z, self.eps, self.warmup = alpha, z_thresh, eps, warmup_steps

    def __call__(self, points) -> Calls:
        buffer, mean, var, calls = [], None, None, Calls()
        for step, _loss, grad in points:
            if grad is None:
                continue
            if mean is None:
                buffer.append(grad)
                if len(buffer) >= self.warmup:
                    mean = sum(buffer) / len(buffer)
                    var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
                continue
            std = var ** 0.5
            z = (grad - mean) / (std + self.eps)
            effective = grad
            if z > self.z:
                calls.spikes.append(step)
                effective = mean + (self.z * std) / (z / self.z)  # adaptive_scaling's clip value
            mean = self.alpha * mean + (1 - self.alpha) * effective
            var = self.alpha * var + (1 - self.alpha) * (effective - mean) ** 2
        calls.flagged = bool(calls.spikes)
        return calls


class Project:
    name = "this project (detect.classify)"
    diverges = True

    def __call__(self, points, floor=math.nan, lr=None, table=None) -> Calls:
        if table is not None:
            v, events = detect.classify(table, loss_floor=floor)
        else:
            lr = lr if lr is not None else [None] * len(points)
            v, events = detect.classify([(s, x, g, r) for (s, x, g), r in zip(points, lr)], loss_floor=floor)
        spikes = [e.step for e in events if e.kind in ("loss_spike", "grad_spike", "loss_shift", "grad_shift",
                                                       "catastrophic_spike")]
        return Calls(v.divergence_step, spikes, v.status != "converged"), v, events


DETECTORS = (Project(), Lightning(), KillLossSpike(), OlmoStability(), ZClip())


def points_of(p) -> list[tuple[int, float, float | None]]:
    """A generated trace's (step, loss, grad_norm) points (a table read back from a file too)."""
    if "table" in p:  # a loss the log left blank while training went on (logs.TABLE's loss_blank) was a NaN
        t = p["table"]
        blank = t["loss_blank"].fillna(False).astype(bool).tolist() if "loss_blank" in t else [False] * len(t)
        grad = t["grad_norm"].tolist() if "grad_norm" in t else [None] * len(t)
        return [(int(s), math.nan if b else float(x), None if g is None or g != g else float(g))
                for s, x, g, b in zip(t["step"], t["loss"], grad, blank)]
    return [(int(s), float(x), float(g)) for s, x, g in zip(p["t"], p["loss"], p["grad"])]


def score(p, calls: Calls, project_verdict=None, project_events=None) -> dict[str, bool | float]:
    """The trace's measures for one detector's calls (detection.judge's labels)."""
    expect = p["expect"]
    diverged = not math.isnan(calls.diverged_at)
    if expect == "diverged":
        out = {"divergence recall": diverged}
        if diverged:
            out["step error"] = abs(calls.diverged_at - p["k"])
        return out
    out = {"false diverged": diverged}
    if expect in ("healthy", "not stalled"):
        out["healthy flagged"] = calls.flagged
    elif expect == "spike":
        steps = [int(s) for s in p["t"]]
        i = steps.index(p["k"])
        w = p.get("window", 2)
        near = set(steps[max(0, i - w): i + w + 1])
        hits = list(calls.spikes) + ([calls.diverged_at] if p["signal"] == "loss" and diverged else [])
        out["spikes located"] = any(s in near for s in hits)
    elif expect == "stalled":  # no peer judges whether a run learned: NaN, "no verdict"
        out["stalls found"] = math.nan if project_verdict is None else project_verdict.status == "stalled"
    return out


def run_family(make, n, rng) -> dict[str, dict[str, list]]:
    """{detector: {measure: values}} over n traces of one family."""
    tally: dict[str, dict[str, list]] = {d.name: {} for d in DETECTORS}
    for _ in range(n):
        p = make(rng)
        pts = points_of(p)
        for d in DETECTORS:
            if isinstance(d, Project):
                calls, v, _ = d(pts, p["floor"], p.get("lr"), p.get("table"))
                measures = score(p, calls, v)
            else:
                measures = score(p, d(pts))
            for k, x in measures.items():
                tally[d.name].setdefault(k, []).append(float(x))
    return tally


HIGHER_IS_BETTER = {"divergence recall": True, "step error": False, "false diverged": False, "spikes located": True,
                    "healthy flagged": False, "stalls found": True}


def ahead_of_project(family: str, tally: dict[str, dict[str, list]]) -> list[str]:
    """Lines naming each peer and measure where the peer beat this project on a family."""
    ours, lines = tally[DETECTORS[0].name], []
    for d in DETECTORS[1:]:
        for m, better in HIGHER_IS_BETTER.items():
            a, b = ours.get(m), tally[d.name].get(m)
            if not a or not b or (m in ("divergence recall", "step error") and not d.diverges):
                continue
            x, y = (np.median(a), np.median(b)) if m == "step error" else (np.mean(a), np.mean(b))
            if (y > x) if better else (y < x):
                lines.append(f"- {family}, {m}: {d.name} {cell(b, m, True)} vs {cell(a, m, True)}")
    return lines


MEASURES = ("divergence recall", "step error", "false diverged", "spikes located", "healthy flagged", "stalls found")


def cell(values: list | None, measure: str, diverges: bool) -> str:
    if not values:
        return "-"
    if all(v != v for v in values):
        return "no verdict"
    if measure in ("divergence recall", "step error") and not diverges:
        return "no verdict"
    if measure == "step error":
        return f"{np.median(values):.0f}"
    return f"{100 * np.mean(values):.0f}% ({int(sum(values))}/{len(values)})"


def real_logs() -> list[str]:
    """What each detector says about the real logs (tests/fixtures)."""
    root = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    lines = []
    for path in sorted((root / "logs").iterdir()):
        table = logs.read(path)
        pts = points_of({"table": table})
        said = []
        for d in DETECTORS:
            if isinstance(d, Project):
                calls, v, _ = d(pts, table=table)
                what = f"{v.status}"
            else:
                calls = d(pts)
                what = "diverged" if not math.isnan(calls.diverged_at) else "no divergence"
            spikes = ", ".join(map(str, calls.spikes[:6])) + (" ..." if len(calls.spikes) > 6 else "")
            said.append(f"{d.name}: {what}; spikes at [{spikes}]")
        lines.append(f"- `{path.name}` ({len(pts)} points): " + "; ".join(said))
    table = logs.read(root / "stability_traces.csv")
    counts = {d.name: [0, 0, 0] for d in DETECTORS}  # [NaN runs found, runs called diverged, runs flagged]
    n_runs, n_nan = 0, 0
    for _, trace in table.groupby("run_id"):
        n_runs += 1
        pts = points_of({"table": trace})
        has_nan = any(not math.isfinite(x) or (g is not None and not math.isfinite(g)) for _, x, g in pts)
        n_nan += has_nan
        for d in DETECTORS:
            calls = d(pts, table=trace)[0] if isinstance(d, Project) else d(pts)
            div = not math.isnan(calls.diverged_at)
            counts[d.name][0] += has_nan and div
            counts[d.name][1] += div
            counts[d.name][2] += calls.flagged
    lines.append(f"- `stability_traces.csv` ({n_runs} real runs of the stability sweep, {n_nan} of which reach NaN): "
                 + "; ".join(f"{name}: {c[0]}/{n_nan} NaN runs called diverged, {c[1]} called diverged in all, "
                             f"{c[2]} flagged" for name, c in counts.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="traces per family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    families = {**detection.TUNED, **detection.HELD_OUT, **detection.NEW, **detection.NEWER, **detection.READER}
    print(f"{args.n} traces per family, seed {args.seed}; step error: median |called - true| in steps\n")
    print("| family | detector | " + " | ".join(MEASURES) + " |\n|---|---|" + "---|" * len(MEASURES))
    pooled: dict[str, dict[str, list]] = {d.name: {} for d in DETECTORS}
    behind = []
    for fam, make in families.items():
        tally = run_family(make, args.n, rng)
        behind += ahead_of_project(fam, tally)
        for d in DETECTORS:
            t = tally[d.name]
            for k, v in t.items():
                pooled[d.name].setdefault(k, []).extend(v)
            print(f"| {fam} | {d.name} | " + " | ".join(cell(t.get(m), m, d.diverges) for m in MEASURES) + " |")
    print("\nall families pooled:\n")
    print("| detector | " + " | ".join(MEASURES) + " |\n|---|" + "---|" * len(MEASURES))
    for d in DETECTORS:
        print(f"| {d.name} | " + " | ".join(cell(pooled[d.name].get(m), m, d.diverges) for m in MEASURES) + " |")
    print("\nwhere a peer does better than this project:\n")
    print("\n".join(behind) or "- nowhere")
    print("\nreal logs:\n")
    print("\n".join(real_logs()))


if __name__ == "__main__":
    main()
