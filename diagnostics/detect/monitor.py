"""``Monitor``: the streaming detector (one logged point at a time, inside the training loop), and
``classify``: one whole log replayed through it, looking ahead where the loop cannot."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from diagnostics.detect.robust import (
    centred_median,
    change_noise,
    departure,
    is_finite,
    local_trend,
    median,
    progress,
    robust_sigma,
)
from diagnostics.detect.rules import Point, SpikeTracker, rule_chain
from diagnostics.detect.statuses import COURSE_EVENTS, STATUS_FIELDS, Event, RunStatus
from diagnostics.detect.thresholds import Thresholds


@dataclass
class Monitor:
    """Streaming detector. Feed ``update(step, loss, grad_norm=None, lr=None)`` in step order;
    read ``diverged`` to abort early; call ``status()`` at the end. ``loss_floor`` is the lowest
    reachable loss when known (NaN: unknown, taken as 0)."""

    loss_floor: float = float("nan")
    thresholds: Thresholds = field(default_factory=Thresholds)
    events: list[Event] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    divergence_step: float = float("nan")
    divergence_reason: str = ""

    def __post_init__(self):
        t = self.thresholds
        self.spikes = {"loss": SpikeTracker(t), "grad_norm": SpikeTracker(t)}  # each signal's spike statistics
        self.steps: list[int] = []
        self.grads: list[tuple[int, float]] = []  # (step, gradient norm) of every point that logged one
        self.excused_until = -1  # an excursion that came back (``excuse``): the divergence rules skip it
        self.raised: list[bool] = []  # per point in ``losses``: an LR rise had raised the thresholds there
        self.rules = rule_chain(t)  # the rules, in order, each with its own state

    @property
    def diverged(self) -> bool:
        return not math.isnan(self.divergence_step)

    @property
    def floor(self) -> float:
        return 0.0 if math.isnan(self.loss_floor) else self.loss_floor

    @property
    def n(self) -> int:
        return len(self.losses)

    def emit(self, step, kind, signal, value, threshold, detail=""):
        self.events.append(Event(step, kind, signal, float(value), float(threshold), detail))

    def diverge(self, step: int, reason: str) -> None:
        """The run diverged; it is placed at ``step`` or, where the gradient norm's unrecovered
        excursion began earlier (``grad_onset``), there: whichever signal left its course first."""
        if not self.diverged:
            g = self.grad_onset()
            if g is not None and g < step:
                step, reason = g, f"{reason}; the gradient norm had left its level for good at step {g}"
            self.divergence_step, self.divergence_reason = step, reason

    def climb_onset(self) -> int | None:
        """Where the loss's final climb began (``onset``), when the median of its last
        ``relapse_median_points`` values is above the level that counts as lost ground
        (``RuleChain.back_level``); None where it is not (a NaN out of a calm descent)."""
        w = self.thresholds.relapse_median_points
        if not math.isfinite(self.rules.relapse.best) or len(self.losses) < w:
            return None
        level = self.rules.back_level(self)
        return self.onset(level) if median(self.losses[-w:]) > level else None

    def grad_onset(self) -> int | None:
        """Where the gradient norm left its level for good (``departure``), when its last finite
        value is ``explode_factor`` x the level it left or more; None where it did not run away
        (or was not logged)."""
        t = self.thresholds
        finite = [(s, g) for s, g in self.grads if is_finite(g) and g > 0]
        if len(finite) <= t.spike_range_window:
            return None
        found = departure([g for _, g in finite], t)
        if found is None or finite[-1][1] < t.explode_factor * found[1]:
            return None
        return finite[found[0]][0]

    def excuse(self, back: int) -> Event:
        """The divergence just called came back to the run's course by step ``back`` (offline,
        ``classify`` looked ahead): it was an excursion, not a divergence. Its event is dropped,
        its start becomes a loss incident unless the spike rule already opened one there (an
        excursion that returns is a spike or a shift, however large; many make the run
        unstable), and the divergence rules skip the points up to ``back``."""
        called = self.events.pop()
        start = int(self.divergence_step)
        self.divergence_step, self.divergence_reason = math.nan, ""
        self.excused_until = back
        self.rules.excused()
        if not any(e.signal == "loss" and e.kind in ("loss_spike", "loss_shift") and start <= e.step <= back
                   for e in self.events):
            self.emit(start, "loss_shift", "loss", called.value, called.threshold,
                      f"an excursion ({called.detail}) back on the run's course at step {back}: not a divergence")
        return self.events[-1]

    def onset(self, level: float) -> int:
        """Where the climb that ends at the last point started: the first point of the final run
        of losses above ``level`` (up to 2 points in a row below it are noise, not the start), or
        the start of the last loss incident (spike or shift) after the run's best level if that is
        earlier (the first point beyond noise)."""
        i, j = len(self.losses) - 1, len(self.losses) - 1
        while j > 0 and any(x > level for x in self.losses[max(0, j - 3):j]):  # noise may dip below for 2 points
            j -= 1
            if self.losses[j] > level:
                i = j
        start = self.spikes["loss"].last_start
        best_step = self.rules.relapse.best_step
        return min(self.steps[i], start) if start is not None and start > best_step else self.steps[i]

    def update(self, step: int, loss: float, grad_norm: float | None = None, lr: float | None = None,
               layer_norms: dict[str, float] | None = None, grad_scale: float | None = None) -> None:
        """Judge one logged point (see the module docs for the rules, in order)."""
        if self.diverged:
            return
        p = Point(int(step), float(loss), None if grad_norm is None else float(grad_norm),
                  None if lr is None else float(lr), layer_norms, None if grad_scale is None else float(grad_scale))
        for rule in self.rules:
            if rule(self, p):
                return
        self.raised.append(self.rules.lr.raised(p.step))

    def vanish(self, step: int, rows: int) -> None:
        """The log went on for ``rows`` training rows from ``step`` with a blank loss (logs.TABLE's
        ``loss_blank``): at least ``vanish_min_points`` of them is a loss that vanished, a
        divergence at ``step``."""
        if self.diverged or rows < self.thresholds.vanish_min_points:
            return
        self.emit(step, "loss_vanished", "loss", math.nan, math.nan, f"blank for {rows} logged rows to the end")
        self.diverge(step, f"the loss is blank from step {step} to the end while the log goes on ({rows} rows with a "
                           "gradient norm or LR): a NaN written as an empty cell reads this way")

    def status(self) -> RunStatus:
        t = self.thresholds
        n_loss, n_grad = self.count("loss_spike"), self.count("grad_spike")
        first_event = min((e.step for e in self.events if e.kind not in COURSE_EVENTS), default=math.nan)
        initial, final = self.initial_loss, self.final_loss
        stats = dict(divergence_step=self.divergence_step, first_event_step=first_event, n_loss_spikes=n_loss,
                     n_grad_spikes=n_grad, initial_loss=initial, final_loss=final,
                     min_loss=min(self.losses, default=math.nan))
        if not self.diverged:
            rose, lost = self.rose(), self.lost_all()
            if rose is not None or lost is not None:  # a divergence, whatever the stall rule would say
                step, how, peak, line = rose if rose is not None else lost
                self.emit(step, "explosion" if rose is not None else "relapse", "loss", peak, line, how)
                self.diverge(step, f"loss {how}, from step {step}")
                stats.update(divergence_step=self.divergence_step,
                             first_event_step=min(first_event, self.divergence_step) if math.isfinite(first_event)
                             else self.divergence_step)
        if self.diverged:
            nonfinite = any(e.kind in ("nonfinite", "scale_collapse", "loss_vanished") for e in self.events)
            kind = "diverged_nonfinite" if nonfinite else "diverged_exploded"
            return RunStatus(kind, self.divergence_reason, **stats)
        closed = progress(initial, final, self.floor)
        stuck = self.why_stalled()
        if stuck:
            return RunStatus("stalled", stuck, **stats)
        self.plateau()
        self.sparse_jumps()
        self.level_shifts()
        spikes = n_loss  # gradient-norm spikes are events; the loss is what an unstable run shows
        if spikes >= t.unstable_min_spikes and spikes / self.n > t.unstable_spike_rate:
            return RunStatus("unstable", f"{spikes} loss spike incidents in {self.n} points", **stats)
        how = (f"the loss fell {closed:.0%} from {initial:.4g} to {final:.4g} (floor unknown)" if math.isnan(self.loss_floor)
               else f"closed {closed:.0%} of the gap to the floor {self.floor:.3g}")
        return RunStatus("converged", f"learned: {how}", **stats)

    def window(self) -> int:
        """Points in the late window (``late_fraction`` of the run, at least 3)."""
        return max(3, round(self.thresholds.late_fraction * len(self.losses)))

    def median_gap_noise(self, level: float, w1: int, w2: int) -> float:
        """Standard error of the difference of two window medians (``w1`` and ``w2`` points) of
        the loss at ``level``: the loss's robust relative noise per point (SpikeTracker.sigma) x the
        level x 1.2533 (a median's standard error over a mean's); NaN while that noise is
        unknown."""
        sigma = self.spikes["loss"].sigma()
        if not math.isfinite(sigma):
            return math.nan
        return 1.2533 * sigma * abs(level) * math.sqrt(1 / w1 + 1 / w2)

    def rose(self) -> tuple[int, str, float, float] | None:
        """The loss rose far above where it started and stayed there, judged over the whole curve:
        its centred median (``relapse_median_points``) peaked at ``explode_factor`` x its starting
        level or more and the median of its late window is still ``relapse_factor`` x it or more
        (above the floor; the starting level is the first point or the early median, the lower).
        Returns (onset, how, peak, the explosion line), or None. A loss that went from 6.45 to 36
        within a few points and wandered between 14 and 89 to the end trips neither streaming
        rule (it dips under 3x its start; its own noise is huge) and did not learn: a reader
        calls it diverged, not stalled."""
        t, n = self.thresholds, len(self.losses)
        if n < t.relapse_median_points:
            return None
        floor = self.floor
        start = min(self.losses[0], float(np.median(self.losses[:min(t.early_steps, n)])))
        if not start > floor:
            return None
        peak = float(np.max(centred_median(self.losses, t.relapse_median_points)))
        late = float(np.median(self.losses[-self.window():]))
        line = floor + t.explode_factor * (start - floor)
        if peak < line or late < floor + t.relapse_factor * (start - floor):
            return None
        onset = self.onset(floor + t.relapse_factor * (start - floor))
        how = (f"rose from {start:.4g} to {peak:.4g} (a median of {t.relapse_median_points} points, >= "
               f"{t.explode_factor:g}x its start) and stayed up: {late:.4g} over its last {self.window()} points")
        return onset, how, peak, line

    def lost_all(self) -> tuple[int, str, float, float] | None:
        """The loss learned, then went back to the level training started from and ended there,
        judged over the whole curve: its best median (the relapse rule's) had closed
        ``relapse_min_progress`` of the gap to the floor, and each of its last
        ``relapse_median_points`` losses is above its initial loss (the untrained model's) less
        ``stall_sigmas`` of its own noise, and above the relapse rule's level (lost ground).
        Returns (onset, how, the last median, that line), or None. The relapse rule with the end
        of the log for its ``relapse_patience``: a log of a few epochs, or a relapse in a log's
        last points, never has 25 points to wait; a run that ends back at its untrained loss lost
        everything it learned, which no warm restart's bump (a fraction of the gap, decaying)
        does, and a warmup dip that comes back had not learned 20% of its gap (never_learn)."""
        t, n = self.thresholds, len(self.losses)
        best, initial, floor = self.rules.relapse.best, self.initial_loss, self.floor
        sigma = self.spikes["loss"].sigma()
        if n < 2 * t.relapse_median_points or not math.isfinite(best) or not math.isfinite(sigma):
            return None
        if not initial > floor or progress(initial, best, floor) < t.relapse_min_progress:
            return None
        back = initial - t.stall_sigmas * sigma * abs(initial)  # where it started, within its noise
        tail = self.losses[-t.relapse_median_points:]
        if not min(tail) > max(back, self.rules.relapse.level(self, best)):
            return None
        onset = self.onset(back)
        last = median(tail)
        how = (f"learned (its best {best:.4g}, from {initial:.4g}), then climbed back to where it started and "
               f"ended there: {last:.4g}, each of its last {t.relapse_median_points} points above {back:.4g}")
        return onset, how, last, back

    def why_stalled(self) -> str:
        """Why the run did not learn over its whole curve (Thresholds.stall_*), or "" when it did.
        A run with no loss did not learn; one whose noise is not yet known (a handful of points)
        is judged on the practical margin alone."""
        t = self.thresholds
        if not self.losses:
            return "no loss was logged"
        n = len(self.losses)
        w0, w = min(t.early_steps, n), self.window()
        if w0 + w > n:  # a short log (a few epochs): its first half against its second, never overlapping
            w0 = max(1, n // 2)
            w = max(1, n - w0)
        start, end = float(np.median(self.losses[:w0])), float(np.median(self.losses[-w:]))
        noise = self.median_gap_noise(end, w0, w)
        sigma = self.spikes["loss"].sigma()
        first = self.losses[0]
        if start > 0 and first > start and math.isfinite(sigma) and math.log(first / start) > t.stall_sigmas * sigma:
            # a sparse log's second point may already sit at the floor: its first point, beyond the
            # noise above the early median, is the untrained model's level
            start, noise = first, sigma * abs(end) * math.sqrt(1 + 1.5708 / w)
        gained = start - end
        if math.isnan(self.loss_floor):
            margin, what = t.stall_min_gain * abs(start), f"{t.stall_min_gain:.0%} of its starting level (floor unknown)"
        else:
            margin = t.stall_min_progress * (start - self.loss_floor)
            what = f"{t.stall_min_progress:.0%} of the gap to the floor {self.loss_floor:.3g}"
        if gained < margin:
            return f"did not learn: the loss went from {start:.4g} to {end:.4g}, less than {what}"
        if math.isfinite(noise) and gained < t.stall_sigmas * noise:
            return (f"did not learn: the loss went from {start:.4g} to {end:.4g}, within its own noise "
                    f"({gained / noise:.1f} standard errors < {t.stall_sigmas:g})")
        return ""

    def plateau(self) -> Event | None:
        """A plateau after learning (Thresholds.plateau_*): emits a ``plateau`` event at the step
        it began, with its level, and returns it; None when the later half improved beyond its
        own noise (or the run is too short, or its noise unknown)."""
        t, n = self.thresholds, len(self.losses)
        if n < t.plateau_min_points or any(e.kind == "plateau" for e in self.events):
            return None
        w = self.window()
        mid = float(np.median(self.losses[n // 2 - w // 2: n // 2 - w // 2 + w]))
        last = float(np.median(self.losses[-w:]))
        noise = self.median_gap_noise(last, w, w)
        if not math.isfinite(noise):
            return None
        band = max(t.plateau_sigmas * noise, t.plateau_min_gain * abs(mid))
        if mid - last >= band:
            return None
        smooth = centred_median(self.losses, max(t.relapse_median_points, round(t.plateau_locate_fraction * n)))
        above = np.nonzero(smooth > last + band)[0]
        begin = int(above[-1]) + 1 if len(above) else 0
        begin = min(begin, n - 1)
        detail = (f"from step {self.steps[begin]} the loss stayed within {band:.3g} of {last:.4g} (the later half improved "
                  f"{mid - last:.3g}, < {t.plateau_sigmas:g} standard errors and < {t.plateau_min_gain:.0%})")
        self.emit(self.steps[begin], "plateau", "loss", last, last + band, detail)
        return self.events[-1]

    def level_shifts(self) -> list[Event]:
        """Upward level shifts of a sparse log's loss (Thresholds.sparse_*), each a ``loss_shift``
        event at its first point unless a loss incident was already reported within
        ``shift_points`` of it; returns the new events. Logs of more than ``sparse_max_points``
        points (the spike rule's window is long there), with a non-positive loss (no log scale),
        or too short for a trend and a shift, get none."""
        t = self.thresholds
        n, wa = len(self.losses), t.shift_points
        if n > t.sparse_max_points or n < t.early_steps + wa or min(self.losses) <= 0:
            return []
        x = np.log(np.asarray(self.losses, float))
        u = np.log(np.asarray(self.steps, float) + 1.0)
        seen = [e.step for e in self.events if e.signal == "loss" and e.kind not in COURSE_EVENTS]
        found, i = [], t.early_steps
        while i <= n - wa:
            wb = min(t.sparse_before, i)
            if any(self.raised[i:i + wa]) or u[i - 1] <= u[i - wb]:
                i += 1
                continue
            slope, intercept = np.polyfit(u[i - wb:i], x[i - wb:i], 1)
            before = x[i - wb:i] - (slope * u[i - wb:i] + intercept)
            steps_ = np.diff(x[i - wb:i])  # point to point: no trend to fit, twice the variance
            scatter = max(robust_sigma(before), robust_sigma(steps_) / math.sqrt(2), t.spike_min_sigma)
            # a climb: the points from i on that each rose from the one before (at most
            # sparse_climb_points); the shift is judged from its top and located at its start
            top = i
            while top + 1 < min(n - wa + 1, i + t.sparse_climb_points) and x[top + 1] > x[top]:
                top += 1
            if any(self.raised[i:top + wa]):  # an LR rise lifts the loss on purpose somewhere in the climb
                i += 1
                continue
            # above the trend for shift_points points, and a jump up from where the loss was (a
            # descent that stops is above its trend, but no jump)
            jump = x[top:top + wa] - (slope * u[top:top + wa] + intercept)
            least = max(t.sparse_shift_sigmas * scatter, math.log(1 + t.sparse_min_jump))
            if jump.min() > t.sparse_shift_sigmas * scatter and jump.mean() > least and x[top] - x[i - 1] > least:
                # the climb began at its first point clearly above the trend (noise rises before it are not it)
                above = x[i:top + 1] - (slope * u[i:top + 1] + intercept) > t.sparse_onset_sigmas * scatter
                if not above.any():
                    i += 1
                    continue
                i = i + int(np.argmax(above))
                step = self.steps[i]
                near = [s for s in seen if abs(self.steps.index(s) - i) <= wa] if seen else []
                if not near:
                    self.emit(step, "loss_shift", "loss", self.losses[i], math.exp(intercept + slope * u[i]),
                              f"a jump of {math.expm1(jump.mean()):.1%} that stayed for {wa} points, > "
                              f"{t.sparse_shift_sigmas:g}x the scatter ({scatter:.2%}) of the {wb} points before it "
                              f"about their trend{f', after a climb of {top - i + 1} points' if top > i else ''} (a sparse log)")
                    found.append(self.events[-1])
                i = top + wa + wb
                continue
            i += 1
        return found

    def sparse_jumps(self) -> list[Event]:
        """One-point loss spikes of a sparse log (Thresholds.sparse_spike_sigmas), each a
        ``loss_spike`` event unless a loss incident was already reported within ``shift_points``
        of it, never where an LR rise raised the thresholds; returns the new events. They are
        reported, not counted towards ``unstable`` (a sparse log's few points make a rate
        meaningless). Only logs of at most ``spike_window`` points: a longer one fills the spike
        rule's window, which judges a point against 128 of its own (on 250-point dense logs this
        rule's one global scale put events on 24% of healthy traces with warm restarts and 72% of
        Student-t ones)."""
        t = self.thresholds
        n = len(self.losses)
        if n > t.spike_window or n < 2 * t.sparse_trend_points + 2 or min(self.losses) <= 0:
            return []
        change = np.diff(np.log(np.asarray(self.losses, float)))  # change[i - 1]: from point i - 1 to i
        trend = local_trend(change, t.sparse_trend_points)
        scale = robust_sigma(change, t.spike_min_sigma, about=trend)  # their scatter about it: a jump that stays
        around = local_trend(change, t.sparse_trend_points, leave_out=2)  # around[i - 1]: the trend about point i
        noise = change_noise(change, t.spike_min_sigma)  # one change's noise: a one-point spike
        least = max(t.sparse_spike_sigmas * noise, math.log(1 + t.sparse_min_jump))
        shift_least = max(t.sparse_stay_sigmas * scale, math.log(1 + t.sparse_min_jump))
        seen = [self.steps.index(e.step) for e in self.events if e.signal == "loss" and e.kind not in COURSE_EVENTS]
        found = []
        for i in range(1, n - 1):
            g = around[i - 1]  # the trend around the spike, its own two changes left out
            up, down = change[i - 1] - g, g - change[i]
            if up <= shift_least or self.raised[i] or any(abs(j - i) <= t.shift_points for j in seen):
                continue
            expected = math.log(self.losses[i - 1]) + g
            if up > least and down > least:
                self.emit(self.steps[i], "loss_spike", "loss", self.losses[i], math.exp(expected),
                          f"up {math.expm1(up):.1%} from the point before and down {-math.expm1(-down):.1%} to the "
                          f"point after, beyond their trend: > {t.sparse_spike_sigmas:g}x the noise of the log's "
                          f"point-to-point changes ({noise:.2%}; a sparse log)")
            else:  # a jump that stays: a rise (not only a fall that stopped), and the next points sit
                # above where the trend would have taken the loss
                if change[i - 1] <= 0:
                    continue
                wa = min(t.shift_points, n - i)
                stay = np.log(np.asarray(self.losses[i:i + wa], float)) - (expected + g * np.arange(wa))
                if stay.min() <= shift_least:
                    continue
                self.emit(self.steps[i], "loss_shift", "loss", self.losses[i], math.exp(expected),
                          f"up {math.expm1(up):.1%} from the point before, beyond its trend, and still "
                          f"{math.expm1(stay.min()):.1%} above it {wa} points on: > {t.sparse_stay_sigmas:g}x the "
                          f"log's point-to-point scale ({scale:.2%}; a sparse log)")
            found.append(self.events[-1])
            seen.append(i)
        return found

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




# divergences a whole log can show were excursions that came back (``classify`` looks ahead; the
# training loop, which stops at a divergence, cannot)
RECOVERABLE = ("explosion", "relapse")


def came_back(points: list, i: int, m: Monitor) -> int | None:
    """The step at which the loss, after a divergence called at ``points[i]``, is back on a
    learning course: the median of its last ``relapse_median_points`` values under
    ``RuleChain.back_level``, or its excess over the run's best fallen to ``shift_fraction`` of
    the excursion's peak excess (what makes an incident a spike rather than a shift: a reset
    run that learns again crosses it on its way down long before it regains its best); None
    where it never is, or a NaN/inf comes first."""
    t = m.thresholds
    level, w, best = m.rules.back_level(m), t.relapse_median_points, m.rules.relapse.best
    recent = deque(m.losses[-w:], maxlen=w)
    start = m.steps.index(int(m.divergence_step)) if int(m.divergence_step) in m.steps else len(m.steps) - w
    peak = float(np.max(centred_median(m.losses[start:], w))) if len(m.losses) > start else -math.inf
    for step, loss, grad, _ in points[i + 1:]:
        if not is_finite(loss) or (grad is not None and not is_finite(grad)):
            return None
        recent.append(loss)
        if len(recent) < w:
            continue
        med = median(recent)
        peak = max(peak, med)
        if med <= level or (math.isfinite(best) and med - best <= t.shift_fraction * (peak - best)):
            return step
    return None


def first_nonfinite(m: Monitor, points: list) -> None:
    """After a divergence the log goes on: the first NaN/inf it holds later is recorded as a
    ``first_nonfinite`` event (the divergence's step stays its onset); nothing where the
    divergence was a NaN/inf itself."""
    if any(e.kind in ("nonfinite", "scale_collapse", "loss_vanished") for e in m.events):
        return
    for k, (step, loss, grad, _) in enumerate(points, 1):
        for signal, value in (("loss", loss), ("grad_norm", grad)):
            if value is not None and not is_finite(value):
                m.emit(step, "first_nonfinite", signal, value, math.nan,
                       f"the log's first NaN/inf, {k} logged points after the divergence called at step "
                       f"{m.divergence_step:.0f}")
                return


def classify(steps, thresholds: Thresholds | None = None, loss_floor: float = float("nan")) -> tuple[RunStatus, list[Event]]:
    """Replay one run's log through a ``Monitor``: an iterable of (step, loss[, grad_norm[, lr]])
    (None: not logged), or a DataFrame with ``step`` and ``loss`` and optionally ``grad_norm`` and
    ``lr`` (None/NaN there: not logged, except that a NaN loss is a logged NaN). With the whole
    log in hand it looks ahead where the training loop cannot: an explosion or relapse that came
    back to the run's course (``came_back``) is an excursion (``Monitor.excuse``), and after a
    divergence the log's first NaN/inf is recorded (``first_nonfinite``)."""
    m = Monitor(loss_floor=loss_floor, thresholds=thresholds or Thresholds())
    blank = None
    if hasattr(steps, "columns"):
        df = steps
        if "loss_blank" in df.columns:  # rows of a log whose loss vanished (logs.TABLE)
            flag = df["loss_blank"].fillna(False).astype(bool)
            blank, df = df[flag], df[~flag]
        cols = [c if c in df.columns else None for c in ("step", "loss", "grad_norm", "lr")]
        steps = zip(*(df[c].tolist() if c else [None] * len(df) for c in cols))
    points = [(int(step), float(loss), *(logged(x) for x in (list(rest) + [None, None])[:2]))
              for step, loss, *rest in steps]
    for i, (step, loss, grad, lr) in enumerate(points):
        m.update(step, loss, grad, lr)
        if not m.diverged:
            continue
        back = came_back(points, i, m) if m.events and m.events[-1].kind in RECOVERABLE else None
        if back is None:
            first_nonfinite(m, points[i + 1:])
            break
        m.excuse(back)
    if blank is not None and len(blank):
        m.vanish(int(blank["step"].min()), len(blank))
    return m.status(), m.events


def logged(x) -> float | None:
    """A table cell as the Monitor takes it: None when not logged (None, or a pandas NA)."""
    if x is None:
        return None
    try:
        import pandas as pd
        if x is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return float(x)


def classify_table(steps, thresholds: Thresholds | None = None, loss_floor: float = float("nan")):
    """Classify every run of a table (columns run_id, step, loss; grad_norm and lr optional,
    None where not logged). Returns (status rows, event rows) as lists of dicts in run order."""
    statuses, events = [], []
    for run_id, trace in steps.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=True):
        v, evs = classify(trace, thresholds, loss_floor)
        statuses.append(dict(run_id=run_id, **{k: getattr(v, k) for k in STATUS_FIELDS}))
        events += [dict(run_id=run_id, **e.__dict__) for e in evs]
    return statuses, events
