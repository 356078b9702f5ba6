"""The rules a ``Monitor`` runs on every logged point, in order (``rule_chain``), and the spike
tracker each signal keeps (``SpikeTracker``). Each rule owns its state; a rule that reads
another's gets it in its constructor."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from diagnostics.detect.robust import is_finite, median, progress, robust_sigma
from diagnostics.detect.statuses import Event
from diagnostics.detect.thresholds import Thresholds

if TYPE_CHECKING:
    from diagnostics.detect.monitor import Monitor


@dataclass
class Point:
    """One logged point, as the rules see it (None: not logged)."""

    step: int
    loss: float
    grad_norm: float | None
    lr: float | None
    layer_norms: dict | None = None
    grad_scale: float | None = None  # fp16 loss scale in force for this step (None: no scaling)


class SpikeTracker:
    """Robust spike incidents on one signal. ``check(step, value, raise_factor)`` returns
    ("new", limit) when a new incident opens at this point, ("shift", start) when the open
    incident turns out to be a level shift, else (None, None).

    A positive signal (a loss, a gradient norm: the first value decides) is judged in log space:
    its residual is log(value) minus an EMA of log(value). Its noise is multiplicative (a batch
    5x harder moves a small loss as much as a large one), and in linear space that noise is
    skewed: the robust scale of linear residuals fits their body and mistakes the long upper tail
    of healthy noise (2-4x blips of a small batch's gradient norm) for spikes. A signal that
    starts at or below zero is judged in linear space, relative to its level."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.history: deque[float] = deque(maxlen=t.spike_window)
        self.ema: float | None = None  # the level, in the rule's space (log or linear)
        self.trend = 0.0  # the level's change per unit of log(step + 1) (Holt's linear trend), same space
        self.u = 0.0  # log(step + 1) of the last point
        self.log_space: bool | None = None
        self.early: list[float] = []
        self.recent_values: deque[float] = deque(maxlen=t.spike_range_window)  # in the rule's space
        self.by_range = False  # the last point exceeded the recent range
        self.seen = 0  # points seen
        self.incident: int | None = None  # step where the open incident started
        self.last_start: int | None = None  # step where the latest incident (open or not) started
        self.incident_points = 0  # points since it started
        self.calm = 0  # calm points since its last exceedance
        self.before = 0.0  # the level before it
        self.peak = 0.0  # its largest excess over that level
        self.appended = 0  # residuals ever added to the history (what the location and scale are taken at)
        self.taken: tuple = (None, None)  # ((appended, residuals), (median, robust sigma)): once per history

    def scale(self, base: float) -> float:
        """Linear space only: what a residual is relative to."""
        return max(abs(base), self.t.spike_min_scale * abs(sum(self.early) / len(self.early)), 1e-12)

    def space(self, value: float) -> float:
        if not self.log_space:
            return value
        return math.log(value) if value > 0 else -math.inf

    @property
    def level(self) -> float | None:
        """The signal's recent level (the EMA), in the signal's units."""
        if self.ema is None:
            return None
        return math.exp(self.ema) if self.log_space else self.ema

    def predicted(self, u: float) -> float:
        """The expected value at log(step + 1) = ``u`` (level + trend x the log-step gap), in the
        rule's space."""
        return self.ema + self.trend * (u - self.u)

    def residual(self, value: float, u: float) -> float:
        x, pred = self.space(value), self.predicted(u)
        return x - pred if self.log_space else (x - pred) / self.scale(pred)

    def value_at(self, residual: float, u: float) -> float:
        """The signal's value whose residual is ``residual`` (an event's threshold)."""
        pred = self.predicted(u)
        return math.exp(pred + residual) if self.log_space else pred + residual * self.scale(pred)

    def follow(self, value: float, u: float) -> None:
        """Holt's double exponential smoothing against log(step + 1): the level moves
        ``spike_ema`` of the way to the value from where it was predicted, the trend
        ``spike_trend`` of the way to the level's latest slope. A loss that falls as a power of
        the step is a straight line there, so a sparse log's steep early descent is followed,
        not lagged (an EMA's lag reads as noise and hides a jump); in a dense log the log-step
        gap between points is tiny and the level is the EMA it was."""
        t = self.t
        x, pred = self.space(value), self.predicted(u)
        if not math.isfinite(x):
            return
        level = pred + t.spike_ema * (x - pred)
        if u > self.u:
            self.trend += t.spike_trend * ((level - self.ema) / (u - self.u) - self.trend)
        self.ema, self.u = level, u

    def recent(self) -> list[float] | None:
        """The residuals the scale is taken from: the last ``spike_window_fraction`` of the points
        seen (at most ``spike_window``); None while fewer than ``spike_min_history``."""
        w = max(self.t.spike_full_history, int(self.t.spike_window_fraction * self.seen))
        h = list(self.history)[-w:]
        return h if len(h) >= self.t.spike_min_history else None

    def location_scale(self) -> tuple[float, float, int] | None:
        """(median, robust sigma floored at spike_min_sigma, how many) of the recent residuals,
        taken once per state of the history (the spike limit and the relapse rule's noise both
        ask, at every point); None before there are enough of them."""
        h = self.recent()
        if h is None:
            return None
        key = (self.appended, len(h))
        if self.taken[0] != key:
            self.taken = key, (median(h), robust_sigma(h, self.t.spike_min_sigma), len(h))
        return self.taken[1]

    def sigma(self) -> float:
        """Robust sigma of the recent residuals (``robust_sigma``, floored), relative to the level; inf
        before there are enough of them."""
        taken = self.location_scale()
        return math.inf if taken is None else taken[1]

    def above_recent(self, x: float) -> float:
        """How far ``x`` (in the rule's space, already in ``recent_values``) sits above the median
        of the ``spike_recent_points`` values before it, as a residual is measured."""
        before = list(self.recent_values)[-1 - self.t.spike_recent_points:-1]
        if not before:
            return math.inf
        was = median(before)
        return x - was if self.log_space else (x - was) / self.scale(was)

    def limit(self, raise_factor: float) -> float:
        """median + k robust sigmas of the recent residuals (``robust_threshold``), k = spike_sigmas x
        the LR raise x the roughness of a scale from few residuals; inf before there are enough."""
        taken = self.location_scale()
        if taken is None:
            return math.inf
        centre, sigma, n = taken
        rough = max(1.0, self.t.spike_full_history / n)  # a scale from few residuals is uncertain
        return centre + self.t.spike_sigmas * raise_factor * rough * sigma

    def range_limit(self, raise_factor: float) -> float:
        """The recent-range threshold, in the rule's (log) space: spike_range_factor (x the raise)
        x the largest of the last spike_range_window values; inf in linear space or before
        spike_range_min values."""
        if not self.log_space or len(self.recent_values) < self.t.spike_range_min:
            return math.inf
        return max(self.recent_values) + math.log(self.t.spike_range_factor * raise_factor)

    def check(self, step: int, value: float, raise_factor: float = 1.0):
        t = self.t
        if self.log_space is None:
            self.log_space = value > 0  # the first value decides
        x = self.space(value)
        range_line = self.range_limit(raise_factor)
        self.range_n = len(self.recent_values)  # values the range was taken over
        if math.isfinite(x):
            self.recent_values.append(x)
        self.seen += 1
        if len(self.early) < t.early_steps:
            self.early.append(value)
        u = math.log(max(step, 0) + 1.0)
        if self.ema is None:
            self.log_space = value > 0
            self.ema, self.u = self.space(value), u
            return None, None
        if self.seen == 2 and t.spike_trend > 0 and u > self.u and math.isfinite(self.space(value)):
            # Holt's start: the trend of the first two points (from zero it would lag the descent)
            self.trend = (self.space(value) - self.ema) / (u - self.u)
            self.ema, self.u = self.space(value), u
            return None, None
        before = self.level
        residual = self.residual(value, u)
        limit = self.limit(raise_factor)
        # a spike rises above where the signal was, not only above where its trend was heading (a
        # descent that stops is no spike)
        by_range = self.by_range = x > range_line
        exceeds = (residual > limit and self.residual(value, self.u) > limit) or by_range
        out = None, None
        if self.incident is not None and by_range:
            self.incident = None  # far above the recent range, the open incident's peak included: a new one
        if self.incident is not None:
            self.incident_points += 1
            excess = value - self.before
            self.peak = max(self.peak, excess)
            self.calm = 0 if exceeds else self.calm + 1
            if self.incident_points == t.shift_points and excess > t.shift_fraction * self.peak:
                out = "shift", self.incident
            if self.calm >= t.incident_gap and self.incident_points >= t.shift_points:
                self.incident = None
        elif exceeds and (by_range or self.above_recent(x) > limit):
            # ... and a new incident rises above the median of the last few values too: where the
            # smoother's trend carried its level past the values (a step decay's drop, then a flat
            # loss) the values are not above where the signal was
            self.incident, self.incident_points, self.calm, self.last_start = step, 0, 0, step
            self.before, self.peak = before, value - before
            sigma_line = self.value_at(limit, u)
            out = "new", min(sigma_line, math.exp(range_line)) if by_range else sigma_line
        lasting = self.incident is not None and self.incident_points >= t.shift_points + t.incident_gap
        if math.isfinite(residual) and raise_factor == 1.0 and (lasting or (not exceeds and self.incident is None)):
            # incidents and raised stretches stay out of the history, but an incident that lasts is
            # the signal's new normal: were it kept out, a scale taken from the few residuals
            # before it would flag every later point and the incident would never close
            self.history.append(residual)
            self.appended += 1
        self.follow(value, u)
        return out


# ---------------------------------------------------------------------------------------------
# the rules, in order: rule(monitor, point) -> True when the run has diverged (stop here). Each
# rule owns its state; a rule that reads another's says so in its constructor.
# ---------------------------------------------------------------------------------------------

class ScaleRule:
    """fp16 loss scaling: a skipped step (non-finite gradients, which the scaler discards) is
    not judged on its gradient norm; a collapsed scale ends the run."""

    def __call__(self, m: Monitor, p: Point) -> bool:
        if p.grad_scale is None:
            return False
        if p.grad_norm is not None and not is_finite(p.grad_norm):
            p.grad_norm = None  # the scaler skipped this step: its gradients never reached the weights
        if p.grad_scale < m.thresholds.scale_collapse:
            m.emit(p.step, "scale_collapse", "grad_scale", p.grad_scale, m.thresholds.scale_collapse)
            m.diverge(p.step, f"fp16 grad scale collapsed to {p.grad_scale:.3g} at step {p.step} "
                              f"(< {m.thresholds.scale_collapse:g}: gradients overflow float16 unscaled)")
            return True
        return False


class NonfiniteRule:
    """A logged NaN/inf loss or gradient norm: diverged at this point. A finite point joins the
    monitor's loss history here (the rules after it read it)."""

    def __call__(self, m: Monitor, p: Point) -> bool:
        if p.grad_norm is not None:
            m.grads.append((p.step, p.grad_norm))
        for signal, value in (("loss", p.loss), ("grad_norm", p.grad_norm)):
            if value is not None and not is_finite(value):
                m.emit(p.step, "nonfinite", signal, value, math.nan)
                climb = m.climb_onset()
                m.diverge(min(p.step, climb if climb is not None else p.step),
                          f"non-finite {signal} ({value}) at step {p.step}"
                          + (f"; the loss had been climbing from step {climb}" if climb is not None else ""))
                return True
        m.losses.append(p.loss)
        m.steps.append(p.step)
        return False


class LrRule:
    """A schedule's LR rise raises the spike thresholds for a while (``raised``); an LR bomb
    does not; a non-finite LR is ignored."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.lr: float | None = None  # the last finite LR
        self.lr_max = 0.0  # the largest the schedule has used (bombs excluded)
        self.raised_until = -1  # the step up to which spike thresholds are raised

    def raised(self, step: int) -> bool:
        return step <= self.raised_until

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        if p.lr is None or not is_finite(p.lr):
            return False
        bomb = self.lr_max > 0 and p.lr > t.lr_rise_max * self.lr_max
        if self.lr is not None and p.lr > self.lr * t.lr_rise and not bomb:
            self.raised_until = p.step + t.lr_raise_steps
        if not bomb:
            self.lr_max = max(self.lr_max, p.lr)
        self.lr = p.lr
        return False


class CatastrophicRule:
    """Megatron-LM's rule: a loss >= catastrophic_factor x the largest of the first values."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.early_max = -math.inf

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        if m.n <= t.catastrophic_reference_steps:
            self.early_max = max(self.early_max, p.loss)
        elif p.loss >= t.catastrophic_factor * self.early_max:
            m.emit(p.step, "catastrophic_spike", "loss", p.loss, t.catastrophic_factor * self.early_max,
                   f">= {t.catastrophic_factor:g}x the largest of the first {t.catastrophic_reference_steps} losses")
        return False


class RelapseRule:
    """The loss (median of the last few points) back up to a multiple of its best and staying
    there, outside a raised LR stretch (see Thresholds). Reads ``LrRule.raised``; its best level
    (``best``, ``best_step``) is read by the explosion rule and ``Monitor.onset``."""

    def __init__(self, t: Thresholds, lr: LrRule):
        self.t, self.lr = t, lr
        self.medians: deque[float] = deque(maxlen=t.relapse_median_points)
        self.best = math.inf  # the lowest median so far
        self.best_step = 0  # the step at which it was reached
        self.lost = 0  # consecutive points in relapse
        self.lost_peak = -math.inf  # highest median of the current relapse streak

    def level(self, m: Monitor, best: float) -> float:
        """The lowest loss that counts as lost ground: relapse_factor x the best above the floor,
        relapse_min_gap of the initial gap above the best, and beyond the loss's own noise."""
        t = self.t
        noise = t.relapse_noise_sigmas * m.spikes["loss"].sigma() * abs(best)
        return max(m.floor + t.relapse_factor * (best - m.floor), best + t.relapse_min_gap * (m.initial_loss - m.floor),
                   best + (noise if math.isfinite(noise) else 0.0))

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        self.medians.append(p.loss)
        if len(self.medians) < t.relapse_median_points or p.step <= m.excused_until:
            return False
        med = median(self.medians)
        if med < self.best:
            self.best, self.best_step = med, p.step
        best = self.best
        initial, floor = m.initial_loss, m.floor
        gap = initial - floor
        noise = t.relapse_noise_sigmas * m.spikes["loss"].sigma() * abs(best)  # the loss's own noise, absolute
        # an LR schedule's rise excuses a bump, never a loss back above where training started
        excused = self.lr.raised(p.step) and med <= initial
        lost = gap > 0 and not excused and med - best > noise and (
            (med - floor >= t.relapse_factor * (best - floor) and med - best >= t.relapse_min_gap * gap)
            or (progress(initial, best, floor) >= t.relapse_min_progress and med > initial))
        self.lost_peak = max(self.lost_peak, med) if lost else -math.inf
        if not lost or med - best < t.relapse_stay * (self.lost_peak - best):  # gone, or coming back down
            self.lost = 0
            self.lost_peak = med if lost else -math.inf
            return False
        self.lost += 1
        if self.lost < t.relapse_patience:
            return False
        start = m.onset(self.level(m, best))
        how = (f"climbed back from its best {best:.3g} to {med:.3g} (median of {t.relapse_median_points} points) "
               f"and stayed for {t.relapse_patience} points")
        m.emit(start, "relapse", "loss", med, best, how)
        m.diverge(start, f"loss {how}, from step {start}")
        return True


class ExplosionRule:
    """The loss above explode_factor x its initial level for explode_patience points in a row.
    Its onset is located from the relapse rule's best level (``RelapseRule.level``)."""

    def __init__(self, t: Thresholds, relapse: RelapseRule):
        self.t, self.relapse = t, relapse
        self.above = 0  # consecutive points above the explosion line

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        line = t.explode_factor * m.initial_loss
        self.above = self.above + 1 if m.n > 1 and p.loss > line and p.step > m.excused_until else 0
        if self.above < t.explode_patience:
            return False
        best = self.relapse.best
        first = m.onset(self.relapse.level(m, best) if math.isfinite(best) else line)
        how = f"above {line:.3g} ({t.explode_factor:g}x its initial level) for {t.explode_patience} points"
        m.emit(first, "explosion", "loss", p.loss, line, how)
        m.diverge(first, f"loss {how}, from step {first}")
        return True


class RecoveryRule:
    """After a loss spike (``open``, called by the spike rule): back within recovery_band of the
    pre-spike level within recovery_window points is a recovery event."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.spike: tuple[int, float, int] | None = None  # (step, pre-spike level, point index)

    def open(self, step: int, pre: float, index: int) -> None:
        if self.spike is None:
            self.spike = (step, pre, index)

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        if self.spike is None:
            return False
        s0, pre, i0 = self.spike
        if p.step > s0 and p.loss <= pre * (1 + t.recovery_band):
            m.emit(p.step, "recovery", "loss", p.loss, pre * (1 + t.recovery_band),
                   f"{p.step - s0} steps after the spike at {s0}")
            self.spike = None
        elif m.n - i0 >= t.recovery_window:
            self.spike = None
        return False


class SpikesRule:
    """Spike incidents on the loss and gradient norm (``Monitor.spikes``: a SpikeTracker per signal,
    thresholds raised while ``LrRule.raised``); a gradient spike names the layer whose gradient
    norm rose most against its own history; a loss spike opens ``RecoveryRule``'s watch."""

    def __init__(self, t: Thresholds, lr: LrRule, recovery: RecoveryRule):
        self.t, self.lr, self.recovery = t, lr, recovery
        self.layer_history: dict[str, deque] = {}

    def spiking_layer(self, layer_norms: dict[str, float]) -> str:
        """The layer whose gradient norm rose most, in standard deviations over its own history."""
        def score(name):
            h = self.layer_history.get(name)
            if h is None or len(h) < 2:
                return -math.inf
            return (layer_norms[name] - float(np.mean(h))) / max(float(np.std(h, ddof=1)), 1e-12)
        worst = max(layer_norms, key=score)
        return f"largest rise in {worst} ({score(worst):.1f} std)"

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        raise_factor = t.lr_raise_factor if self.lr.raised(p.step) else 1.0
        for signal, value in (("loss", p.loss), ("grad_norm", p.grad_norm)):
            if value is None:
                continue
            rule = m.spikes[signal]
            pre = rule.level
            what, info = rule.check(p.step, value, raise_factor)
            prefix = "loss" if signal == "loss" else "grad"
            if what == "new":
                n = len(rule.recent() or [])
                detail = f"> predicted level + {t.spike_sigmas * raise_factor:g} robust sigmas of the last {n} residuals"
                if rule.by_range:
                    detail = (f"> {t.spike_range_factor * raise_factor:g}x the largest of the last "
                              f"{rule.range_n} values")
                elif n < t.spike_full_history:
                    detail += f" (x{t.spike_full_history / n:.2g}: few residuals)"
                if signal == "grad_norm" and p.layer_norms:
                    detail += f"; {self.spiking_layer(p.layer_norms)}"
                m.emit(p.step, f"{prefix}_spike", signal, value, info, detail)
                if signal == "loss":
                    self.recovery.open(p.step, pre, m.n)
            elif what == "shift":
                for i in range(len(m.events) - 1, -1, -1):  # the incident's spike event becomes a shift
                    e = m.events[i]
                    if e.kind == f"{prefix}_spike" and e.step == info:
                        m.events[i] = Event(e.step, f"{prefix}_shift", e.signal, e.value, e.threshold,
                                            e.detail + f"; not back within {t.shift_points} points: a level shift")
                        break
        if p.layer_norms:
            for name, value in p.layer_norms.items():
                self.layer_history.setdefault(name, deque(maxlen=t.spike_window)).append(value)
        return False


class RuleChain(list):
    """The rules of one monitor, in order; ``relapse`` is named for ``Monitor.onset``."""

    relapse: RelapseRule
    explosion: ExplosionRule
    lr: LrRule

    def excused(self) -> None:
        """An excursion was excused (``Monitor.excuse``): the divergence rules' streaks restart."""
        self.explosion.above = 0
        self.relapse.lost, self.relapse.lost_peak = 0, -math.inf

    def back_level(self, m: Monitor) -> float:
        """The loss a divergence's excursion must come back under to have been one: the relapse
        rule's lost-ground level from the best the run reached (the explosion line before a best
        exists)."""
        best = self.relapse.best
        return self.relapse.level(m, best) if math.isfinite(best) else m.thresholds.explode_factor * m.initial_loss


def rule_chain(t: Thresholds) -> RuleChain:
    """Fresh rules for one monitor, in order (module docs): fp16 scale, non-finite values, the LR
    schedule, Megatron's catastrophic spike, explosion, relapse, spikes, recovery."""
    lr, recovery = LrRule(t), RecoveryRule(t)
    relapse = RelapseRule(t, lr)
    explosion = ExplosionRule(t, relapse)
    chain = RuleChain([ScaleRule(), NonfiniteRule(), lr, CatastrophicRule(t), explosion, relapse,
                       SpikesRule(t, lr, recovery), recovery])
    chain.relapse, chain.explosion, chain.lr = relapse, explosion, lr
    return chain


