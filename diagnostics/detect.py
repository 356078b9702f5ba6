"""Divergence, spike and stall detection: one set of rules, used two ways.

``Monitor`` is fed one step at a time inside the training loop (``update``) and decides early
abort (``diverged``); ``classify`` replays a recorded trace through the very same ``Monitor``.
Statuses (DESIGN.md's vocabulary) are decided here and nowhere else:

- ``diverged_nonfinite``: the loss or the gradient norm became NaN/inf;
- ``diverged_exploded``: the loss stayed above ``explode_factor`` x its initial level for
  ``explode_patience`` consecutive steps, or went back above the initial level after closing
  half of the gap;
- ``stalled``: the run closed less than ``stall_min_progress`` of the gap between its initial
  loss and the loss floor (the data's entropy rate where known, else 0);
- ``unstable``: converged, but with at least ``unstable_min_spikes`` loss/gradient spikes and a
  spike rate above ``unstable_spike_rate``;
- ``converged``: none of the above. ``error`` (the run raised) is set by the trainer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

STATUSES = ("converged", "unstable", "stalled", "diverged_nonfinite", "diverged_exploded", "error")
# better first: a candidate whose status ranks lower than its baseline's got worse
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}
# status_reason prefix of an ``error`` row for a run that could not start on this stack (e.g. a
# model that needs torchvision where none loads): the suite reports it as a skip with the reason
SKIPPED = "skipped: "
EVENT_KINDS = ("nonfinite", "explosion", "loss_spike", "grad_spike", "catastrophic_spike", "recovery")


@dataclass(frozen=True)
class Thresholds:
    """Every number a verdict depends on, with where it comes from."""

    # OLMo-core's stability monitor: a value above mean + 6 std of the previous 128 steps is a
    # spike; the rule is active once 64 values are seen. Applied here to the value's relative
    # residual from a short EMA of the signal (weight 0.3: about 3 steps), so neither the
    # downward trend of a decaying loss nor its falling noise level hide a spike (on raw values,
    # 67% of spikes of 10-50 noise sigmas were located in benchmarks/detection.py; on absolute
    # residuals 85%; on relative residuals from a 10-step EMA 95%, from this 3-step one 98%).
    spike_window: int = 128
    spike_min_history: int = 64
    spike_sigmas: float = 6.0
    spike_ema: float = 0.3
    # The relative residual's scale is floored at 10% of the signal's initial level: a loss near
    # zero has heavy-tailed batch noise not proportional to its level (seen here: ResNet-8 with SGD
    # at loss ~0.05 swings 0.02-0.2 from batch to batch, which without the floor read as spikes).
    spike_min_scale: float = 0.1
    # An LR that rises by more than 10% in one step (warm restart, warmup) legitimately lifts the
    # loss and gradients: no spike is flagged for 30 steps after it (and the history keeps
    # absorbing values meanwhile). A rise to more than twice the largest LR seen before is no
    # schedule (warmup at most doubles it, from step 1 to 2; a restart returns to a seen level):
    # it gets no grace, so an LR bomb's spike is reported.
    lr_rise: float = 1.10
    lr_grace_steps: int = 30
    lr_rise_max: float = 2.0
    # Megatron-LM: a loss >= 10x the largest of the first 100 values is "spiky" (catastrophic).
    catastrophic_factor: float = 10.0
    catastrophic_reference_steps: int = 100
    # Explosion, either of: the loss stays above 3x its initial level for 10 steps in a row (cross-
    # entropy starts near ln(classes): 3x that is no warm-restart bump, which brings the loss back
    # towards, not past, where training began); or a run that had closed half of its gap to the
    # floor is back above its initial level for 10 steps (all learning lost).
    explode_factor: float = 3.0
    explode_patience: int = 10
    relapse_min_progress: float = 0.5
    # The initial loss is that of the first step, computed before any update: the untrained
    # model's, the same for every LR and schedule. (A mean over the first steps let a run whose
    # huge LR blew the loss up to ~10 and back to chance level, 3.6, read as "converged"; seen
    # here with AdamW at 1000x its LR.) A spike rule's smallest scale uses the first 5 values.
    early_steps: int = 5
    late_fraction: float = 0.1  # the final loss level is the mean of the last 10% of steps
    # Stalled: less than 20% of the gap between initial loss and floor closed.
    stall_min_progress: float = 0.2
    # Unstable: >= 3 spikes and more than 1 spike per 100 steps.
    unstable_min_spikes: int = 3
    unstable_spike_rate: float = 0.01
    # Recovery: back within 10% of the pre-spike mean within 50 steps.
    recovery_band: float = 0.1
    recovery_window: int = 50


@dataclass(frozen=True)
class Event:
    step: int
    kind: str  # one of EVENT_KINDS
    signal: str  # loss, grad_norm, ...
    value: float
    threshold: float
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    status: str
    status_reason: str
    divergence_step: float  # NaN when the run did not diverge
    first_event_step: float  # NaN when there was no event
    n_loss_spikes: int
    n_grad_spikes: int
    initial_loss: float
    final_loss: float
    min_loss: float


def is_finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


class RollingStats:
    """Mean and standard deviation of the last ``window`` values, O(1) per update."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.total_sq = 0.0

    def push(self, x: float) -> None:
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            self.total -= old
            self.total_sq -= old * old
        self.values.append(x)
        self.total += x
        self.total_sq += x * x

    def __len__(self) -> int:
        return len(self.values)

    def mean(self) -> float:
        return self.total / len(self.values)

    def std(self) -> float:
        n = len(self.values)
        var = max(self.total_sq / n - (self.total / n) ** 2, 0.0)
        return math.sqrt(var * n / (n - 1)) if n > 1 else 0.0


def spike_threshold(stats: RollingStats, t: Thresholds) -> float:
    """mean + k*std of the history, or +inf while the history is shorter than required."""
    if len(stats) < t.spike_min_history:
        return math.inf
    return stats.mean() + t.spike_sigmas * stats.std()


class SpikeRule:
    """OLMo-core's rule on relative residuals from an EMA, (value - EMA) / EMA: the noise of a
    loss scales with its level, so relative residuals early and late in a run are comparable.
    ``check`` returns the value the signal exceeded (a spike) or None, then takes the residual
    into the history (a spike's is left out: one spike does not hide the next)."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.stats = RollingStats(t.spike_window)
        self.ema: float | None = None
        self.early: list[float] = []  # the first values: their mean sets the smallest scale

    def scale(self, base: float) -> float:
        return max(abs(base), self.t.spike_min_scale * abs(sum(self.early) / len(self.early)), 1e-12)

    def check(self, value: float, grace: bool) -> float | None:
        t = self.t
        if len(self.early) < t.early_steps:
            self.early.append(value)
        if self.ema is None:
            self.ema = value
            return None
        base = self.ema
        residual = (value - base) / self.scale(base)  # relative: loss noise scales with the loss
        limit = spike_threshold(self.stats, t)
        spike = residual > limit and not grace
        if not spike:
            self.stats.push(residual)
        self.ema += t.spike_ema * (value - base)
        return base + limit * self.scale(base) if spike else None


def progress(initial: float, final: float, floor: float) -> float:
    """Fraction of the gap between the initial loss and the floor that was closed."""
    gap = initial - floor
    return (initial - final) / gap if gap > 0 else 0.0


@dataclass
class Monitor:
    """Streaming detector. Feed ``update(step, loss, grad_norm)`` in step order; read
    ``diverged`` to abort early; call ``verdict()`` at the end. ``loss_floor`` is the lowest
    reachable loss when known (NaN: unknown, taken as 0)."""

    loss_floor: float = float("nan")
    thresholds: Thresholds = field(default_factory=Thresholds)
    events: list[Event] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    divergence_step: float = float("nan")
    divergence_reason: str = ""

    def __post_init__(self):
        t = self.thresholds
        self._loss_rule = SpikeRule(t)
        self._grad_rule = SpikeRule(t)
        self._above = 0  # consecutive steps above the explosion line
        self._lr: float | None = None
        self._lr_max = 0.0
        self._grace_until = 0  # no spikes flagged up to this step (after an LR rise)
        self._best = math.inf
        self._open_spike: tuple[int, float] | None = None  # (step, pre-spike mean) awaiting recovery
        self._early_max = -math.inf
        self._layer_stats: dict[str, RollingStats] = {}

    def _spiking_layer(self, layer_norms: dict[str, float]) -> str:
        """The layer whose gradient norm rose most, in standard deviations over its history."""
        def score(name):
            st = self._layer_stats.get(name)
            if st is None or len(st) < 2:
                return -math.inf
            return (layer_norms[name] - st.mean()) / max(st.std(), 1e-12)
        worst = max(layer_norms, key=score)
        return f"largest rise in {worst} ({score(worst):.1f} std)"

    @property
    def diverged(self) -> bool:
        return not math.isnan(self.divergence_step)

    def _emit(self, step, kind, signal, value, threshold, detail=""):
        self.events.append(Event(step, kind, signal, float(value), float(threshold), detail))

    def _diverge(self, step: int, reason: str) -> None:
        if not self.diverged:
            self.divergence_step, self.divergence_reason = step, reason

    def update(self, step: int, loss: float, grad_norm: float, lr: float | None = None,
               layer_norms: dict[str, float] | None = None) -> None:
        """Judge one step. ``lr`` (optional) lets a rise in the LR excuse the loss rise it causes;
        ``layer_norms`` (gradient norm per layer, optional) lets a gradient spike name the layer
        that moved most against its own history."""
        t = self.thresholds
        if self.diverged:
            return
        if not is_finite(loss) or not is_finite(grad_norm):
            signal, value = ("loss", loss) if not is_finite(loss) else ("grad_norm", grad_norm)
            self._emit(step, "nonfinite", signal, value, math.nan)
            self._diverge(step, f"non-finite {signal} ({value}) at step {step}")
            return
        self.losses.append(loss)
        n = len(self.losses)
        if lr is not None:
            if self._lr is not None and self._lr * t.lr_rise < lr <= self._lr_max * t.lr_rise_max:
                self._grace_until = step + t.lr_grace_steps
            self._lr, self._lr_max = lr, max(lr, self._lr_max)
        if n <= t.catastrophic_reference_steps:
            self._early_max = max(self._early_max, loss)
        elif loss >= t.catastrophic_factor * self._early_max:
            self._emit(step, "catastrophic_spike", "loss", loss, t.catastrophic_factor * self._early_max,
                       f">= {t.catastrophic_factor:g}x the largest of the first {t.catastrophic_reference_steps} losses")
        if n > 1 and self._explosion(step, loss):
            return
        grace = step <= self._grace_until
        for signal, value, rule, kind in (("loss", loss, self._loss_rule, "loss_spike"),
                                          ("grad_norm", grad_norm, self._grad_rule, "grad_spike")):
            pre = rule.ema
            limit = rule.check(value, grace)
            if limit is not None:
                detail = f"> EMA + {t.spike_sigmas:g} std of the last {len(rule.stats)} residuals"
                if kind == "grad_spike" and layer_norms:
                    detail += f"; {self._spiking_layer(layer_norms)}"
                self._emit(step, kind, signal, value, limit, detail)
                if kind == "loss_spike" and self._open_spike is None:
                    self._open_spike = (step, pre)
        if layer_norms:
            for name, value in layer_norms.items():
                self._layer_stats.setdefault(name, RollingStats(t.spike_window)).push(value)
        if self._open_spike is not None:
            s0, pre = self._open_spike
            if step > s0 and loss <= pre * (1 + t.recovery_band):
                self._emit(step, "recovery", "loss", loss, pre * (1 + t.recovery_band),
                           f"{step - s0} steps after the spike at {s0}")
                self._open_spike = None
            elif step - s0 >= t.recovery_window:
                self._open_spike = None

    def _explosion(self, step: int, loss: float) -> bool:
        """The two explosion rules (see Thresholds); True once the run has diverged."""
        t = self.thresholds
        initial = self.initial_loss
        floor = 0.0 if math.isnan(self.loss_floor) else self.loss_floor
        self._best = min(self._best, loss)
        relapsed = progress(initial, self._best, floor) >= t.relapse_min_progress and loss > initial
        line = t.explode_factor * initial
        self._above = self._above + 1 if (loss > line or relapsed) else 0
        if self._above < t.explode_patience:
            return False
        first = step - t.explode_patience + 1
        if loss > line:
            how = f"above {line:.3g} ({t.explode_factor:g}x its initial level)"
        else:
            how = f"back above its initial level {initial:.3g} after reaching {self._best:.3g}"
        self._emit(first, "explosion", "loss", loss, line if loss > line else initial, f"{how} for {t.explode_patience} steps")
        self._diverge(first, f"loss {how} from step {first} for {t.explode_patience} steps")
        return True

    @property
    def initial_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        if not self.losses:
            return math.nan
        k = max(1, round(self.thresholds.late_fraction * len(self.losses)))
        tail = self.losses[-k:]
        return sum(tail) / len(tail)

    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    def verdict(self) -> Verdict:
        t = self.thresholds
        n_loss, n_grad = self.count("loss_spike"), self.count("grad_spike")
        first_event = min((e.step for e in self.events if e.kind != "recovery"), default=math.nan)
        initial, final = self.initial_loss, self.final_loss
        stats = dict(divergence_step=self.divergence_step, first_event_step=first_event, n_loss_spikes=n_loss,
                     n_grad_spikes=n_grad, initial_loss=initial, final_loss=final,
                     min_loss=min(self.losses, default=math.nan))
        if self.diverged:
            kind = "diverged_nonfinite" if any(e.kind == "nonfinite" for e in self.events) else "diverged_exploded"
            return Verdict(kind, self.divergence_reason, **stats)
        floor = 0.0 if math.isnan(self.loss_floor) else self.loss_floor
        closed = progress(initial, final, floor)
        if not self.losses or closed < t.stall_min_progress:
            return Verdict("stalled", f"closed {closed:.0%} of the gap from {initial:.3g} to the floor {floor:.3g} "
                                      f"(< {t.stall_min_progress:.0%})", **stats)
        spikes = n_loss + n_grad
        if spikes >= t.unstable_min_spikes and spikes / len(self.losses) > t.unstable_spike_rate:
            return Verdict("unstable", f"{spikes} spikes in {len(self.losses)} steps", **stats)
        return Verdict("converged", f"closed {closed:.0%} of the gap to the floor {floor:.3g}", **stats)


def classify(steps, thresholds: Thresholds | None = None, loss_floor: float = float("nan")) -> tuple[Verdict, list[Event]]:
    """Replay one run's trace (an iterable of (step, loss, grad_norm[, lr]), or a DataFrame with
    those columns, ``lr`` optional) through a ``Monitor`` and return its verdict and events."""
    m = Monitor(loss_floor=loss_floor, thresholds=thresholds or Thresholds())
    if hasattr(steps, "columns"):
        cols = ["step", "loss", "grad_norm"] + (["lr"] if "lr" in steps.columns else [])
        steps = steps[cols].itertuples(index=False)
    for step, loss, gn, *lr in steps:
        m.update(int(step), float(loss), float(gn), float(lr[0]) if lr else None)
        if m.diverged:
            break
    return m.verdict(), m.events


VERDICT_COLUMNS = ["run_id", "status", "status_reason", "divergence_step", "first_event_step", "n_loss_spikes",
                   "n_grad_spikes", "initial_loss", "final_loss", "min_loss"]


def classify_table(steps, thresholds: Thresholds | None = None, loss_floor: float = float("nan")):
    """Classify every run of a steps table (columns run_id, step, loss, grad_norm; numeric).
    Returns (verdict rows, event rows) as lists of dicts in run order."""
    verdicts, events = [], []
    for run_id, trace in steps.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=True):
        v, evs = classify(trace, thresholds, loss_floor)
        verdicts.append(dict(run_id=run_id, **{k: getattr(v, k) for k in VERDICT_COLUMNS[1:]}))
        events += [dict(run_id=run_id, **e.__dict__) for e in evs]
    return verdicts, events
