"""Divergence, spike and stall detection: one set of rules, used two ways.

``Monitor`` is fed one logged point at a time, inside the training loop (``update``, which also
decides early abort through ``diverged``) or offline from any log (``classify``). A point has a
step and a loss; the gradient norm and the LR are optional (None: not logged), and the rules use
what is there. Every window and patience counts *logged points*, so a log written every N steps,
or irregularly, is judged like a dense one.

The rules run in the order of ``rule_chain``, each a small object that owns its state (a rule
that reads another's, e.g. the relapse rule the LR window, gets it in its constructor), with its
thresholds documented in ``Thresholds``; a rule that ends the run (divergence) stops the rest for
that point:

0. ``ScaleRule``: with fp16 loss scaling (a logged ``grad_scale``), a non-finite gradient norm
   is a step the scaler skipped, not a divergence; a scale below ``scale_collapse`` is a
   ``scale_collapse`` event and ``diverged_nonfinite`` (the gradients overflow at true size).
1. ``NonfiniteRule``: a logged NaN/inf loss or gradient norm -> ``diverged_nonfinite`` there (and,
   offline, ``Monitor.vanish``: a loss blank to the end of a log that goes on, the same).
2. ``LrRule``: an LR rise of the schedule raises the spike thresholds for a while (an LR
   bomb, far above any LR the schedule has used, does not); a NaN LR is ignored.
3. ``CatastrophicRule``: Megatron-LM's loss >= 10x the largest of the first 100 values (an event).
4. ``ExplosionRule``: the loss stays above 3x its initial level -> ``diverged_exploded``.
5. ``RelapseRule``: the loss climbs back to a multiple of its best and stays -> ``diverged_exploded``.
6. ``SpikesRule``: spike incidents on the loss and gradient norm: beyond robust sigmas of the
   residuals, or far above the recent range (``Thresholds.spike_range_factor``).
7. ``RecoveryRule``: a loss spike followed by a return to the pre-spike level.

A divergence is located where it starts (``Monitor.onset``): the first point of the final climb
above half way from the best level the run reached to the level that triggered the rule.

Statuses live in ``STATUS_TABLE`` (name, rank, colour, whether it counts as converged); plots,
the stability table and the report page read them from there. ``verdict`` decides
``stalled`` (the run did not learn over its whole curve: ``Monitor.learned``; a plateau after
learning is a ``plateau`` event, ``Monitor.plateau``), ``unstable`` (converged, with spike incidents
at more than 1 per 100 points and at least 3) and ``converged``; ``skipped`` and ``error`` are the
trainer's.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class Status:
    name: str
    colour: str  # plots and the report page
    converged: bool  # counts as converged (stability edge)
    meaning: str
    # decided by a threshold on a run that trained to the end (the fraction of the gap closed, the
    # spike rate): rounding alone can move a run across it (compare tests such flips against the
    # calibrated flip rate)
    by_threshold: bool = False


# better first: a status later in the table is worse (compare's status_changed direction)
STATUS_TABLE = (
    Status("converged", "#2e7d32", True, "it learned (beyond its noise and the stall margin), calmly; a plateau "
                                        "after learning is an event",
           by_threshold=True),
    Status("unstable", "#f9a825", True, "converged, with loss spike incidents at a rate above unstable_spike_rate",
           by_threshold=True),
    Status("stalled", "#6d4c41", False, "it did not learn: from its start to its end the loss fell by less than its "
                                        "noise or the stall margin",
           by_threshold=True),
    Status("diverged_nonfinite", "#c62828", False, "the loss or the gradient norm became NaN/inf"),
    Status("diverged_exploded", "#ad1457", False, "the loss blew up, or climbed back and stayed up"),
    Status("skipped", "#9e9e9e", False, "this stack cannot run the point: a release, device or package lacks what it "
                                        "needs (set by the trainer, with the reason)"),
    Status("error", "#424242", False, "the run raised (set by the trainer, with the reason)"),
)
STATUS = {s.name: s for s in STATUS_TABLE}
STATUSES = tuple(STATUS)
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}
STATUS_COLOUR = {s.name: s.colour for s in STATUS_TABLE}
CONVERGED = tuple(s.name for s in STATUS_TABLE if s.converged)
BY_THRESHOLD = frozenset(s.name for s in STATUS_TABLE if s.by_threshold)
# statuses of a run with no trained result to judge (its reason says why)
NO_RESULT = ("skipped", "error")
# ``nonfinite_origin``: where a trained run's first NaN/inf came from (``origin.py``: the run's
# step replayed, never a log's); written beside the ``nonfinite`` event of the same step
# ``first_nonfinite``: in a log that goes on after a divergence (``classify``), its first NaN/inf
EVENT_KINDS = ("nonfinite", "scale_collapse", "loss_vanished", "explosion", "relapse", "loss_spike", "grad_spike",
               "loss_shift", "grad_shift", "catastrophic_spike", "recovery", "plateau", "nonfinite_origin",
               "first_nonfinite")
# events that describe a healthy run's course, not a problem: not counted as its first event
COURSE_EVENTS = ("recovery", "plateau")


@dataclass(frozen=True)
class Thresholds:
    """Every number a verdict depends on, with where it comes from. "Points" are logged points.
    Numbers marked *tuned* were chosen on the tuning families of benchmarks/detection.py and are
    reported on its held-out families too (docs/measured/detection.md)."""

    # Spikes: OLMo-core's stability monitor flags a value above mean + 6 std of the last 128. Here
    # a positive signal's residual is taken in log space (its noise is multiplicative) from the
    # level a short Holt smoother predicts (SpikeRule.follow: level weight 0.3, about 3 points;
    # trend weight 0.1, against log(step + 1), where a power-law descent is straight), and compared
    # with a robust location and scale of the last ``spike_window`` residuals: median + k * 1.4826
    # * MAD (the MAD scaled to a normal sigma), so heavy-tailed noise does not inflate the scale
    # and one outlier does not move it. k = 8 (*tuned* on the tuning families in log space: 9
    # found 92% of their spikes, 8 finds 98% with no healthy run called unstable; 6 had called 4%
    # of Student-t(3) healthy runs unstable). The rule judges from the sixth point (the level,
    # the trend, then ``spike_min_history`` residuals), with k raised by 8 / n while fewer than
    # ``spike_full_history`` residuals are seen (a daily log's first week), and its window grows
    # with the log up to 128.
    spike_window: int = 128
    spike_window_fraction: float = 0.5  # ... and at most half the points seen (a sparse log's early descent drops out)
    spike_min_history: int = 3
    spike_full_history: int = 8  # below this many residuals the threshold is k x 8 / n (a scale from 3 is rough)
    spike_sigmas: float = 8.0
    spike_ema: float = 0.3
    spike_trend: float = 0.1  # Holt's trend weight (SpikeRule.follow); 0 would make the level a plain EMA
    # The robust scale is at least 0.1% of the level (losses logged with few decimals have a MAD
    # of 0), and the relative residual's denominator at least 10% of the signal's early level
    # (ResNet-8 with SGD near loss 0.05 swings 0.02-0.2 batch to batch: heavy-tailed, not
    # proportional to its level).
    spike_min_sigma: float = 1e-3
    spike_min_scale: float = 0.1
    # The recent range: a positive signal above ``spike_range_factor`` x the largest of its last
    # ``spike_range_window`` values is a spike whatever the robust scale says. In heavy-tailed
    # noise (a small batch's gradient norm: tens of percent of wobble, 2-4x blips) the MAD of the
    # log residuals grows and k robust sigmas can reach 10x the level, so a spike any reader sees
    # at a glance (8-100x the recent maximum) went unreported. 4x is half the smallest such
    # spike, and above what healthy noise does: the 99th percentile (over traces) of a healthy
    # value's ratio to the largest of the 20 before it is 1.1 (normal noise), 2.3 (Student-t),
    # 4.0 / 8.1 / 33 for the gradient norms of the multiplicative 10% / 20% / 30% families
    # (heavier-tailed than any real log we have: there the rule adds gradient-spike events, which
    # do not make a run unstable), and below 1 for a daily log's loss; a warm restart logged
    # without its LR lifts a loss near a zero floor up to 8.8x, a bump that decays slowly and so
    # is reported as a level shift, not a spike (``python benchmarks/detection.py --ratios --n
    # 100``; read off those older families, never off the families written with this rule).
    # While an LR rise raises the thresholds the factor is ``lr_raise_factor`` x higher as
    # well. It judges from ``spike_range_min`` values on.
    spike_range_factor: float = 4.0
    spike_range_window: int = 20
    spike_range_min: int = 10
    # One incident, one event: exceedances with fewer than ``incident_gap`` calm points between
    # them belong to the incident that opened first. A spike is short: ``shift_points`` points
    # after it opened, its excess over the level before it has fallen to ``shift_fraction`` of
    # its peak or less. One that has not is a level shift (``loss_shift``/``grad_shift``: a warm
    # restart logged without its LR, a change of data), reported but not counted towards
    # ``unstable``: a restart's bump decays by 3-10% a point, a spike is gone the next point.
    incident_gap: int = 3
    shift_points: int = 3
    shift_fraction: float = 0.5
    # An LR that rises by more than 10% from one point to the next (warmup, a warm restart) lifts
    # loss and gradients on purpose: for ``lr_raise_steps`` optimizer steps (steps, not points:
    # the bump lasts as many steps however often they are logged) the spike threshold is
    # ``lr_raise_factor`` times higher (a 100x gradient spike still shows) and residuals are kept
    # out of the history. A rise to more than ``lr_rise_max`` x the largest LR the schedule has
    # used is an LR bomb: no raise, and it does not become the schedule's largest LR, so a second
    # bomb of the same size gets none either.
    lr_rise: float = 1.10
    lr_raise_steps: int = 30
    lr_raise_factor: float = 4.0
    lr_rise_max: float = 2.0
    # Megatron-LM: a loss >= 10x the largest of the first 100 values is "spiky" (catastrophic).
    catastrophic_factor: float = 10.0
    catastrophic_reference_steps: int = 100
    # Explosion: the loss stays above 3x its initial level for 10 points in a row (cross-entropy
    # starts near ln(classes): 3x that is no warm-restart bump).
    explode_factor: float = 3.0
    explode_patience: int = 10
    # Relapse: the median of the last ``relapse_median_points`` losses is, for
    # ``relapse_patience`` points in a row, at least ``relapse_factor`` (1.5) x the best such
    # median above the floor and back by ``relapse_min_gap`` (0.5%) of the initial gap (or above
    # the initial loss after closing ``relapse_min_progress`` of it, as much as "converged" asks),
    # *beyond* ``relapse_noise_sigmas`` robust sigmas of the loss's own noise (what keeps a noisy
    # small loss, ResNet-8 with SGD at 0.03-0.2, from reading as one), *and it stays*: the excess
    # over the best has not fallen below ``relapse_stay`` of its peak in the streak. A warm
    # restart's bump decays (by half within 25 points at the slowest decay of the benchmark's
    # restarts), a relapse does not (*tuned*; none of the 360 real default-grid runs of the
    # calibration changed status under it).
    relapse_median_points: int = 5
    relapse_factor: float = 1.5
    relapse_min_gap: float = 0.005
    relapse_min_progress: float = 0.2
    relapse_stay: float = 0.75
    relapse_noise_sigmas: float = 8.0  # a median of 5 points is calmer than one point: 8 sigmas, not 9
    relapse_patience: int = 25
    # The initial loss is that of the first point, before any update: the untrained model's.
    early_steps: int = 5  # the early level (smallest spike scale) is the mean of the first 5 values
    late_fraction: float = 0.1  # the final loss is the mean of the last 10% of points
    # stalled: the run did not learn, judged over its whole curve (``Monitor.learned``). It
    # learned when its final level (the median of the last ``late_fraction`` of points) is below
    # its starting level (the median of the first ``early_steps`` points, the untrained model; the
    # first point alone where it is above that median by more than ``stall_sigmas`` of the noise:
    # a log written every few hundred steps may reach its floor by its second point) by more than
    # ``stall_sigmas`` standard errors of that difference (the loss's own robust noise per point,
    # SpikeRule.sigma), *and* by a practical margin: ``stall_min_progress`` (20%) of the gap to
    # the floor where the floor is known (as before: a classifier that closes a tenth of the way
    # to its entropy learned nothing that matters), ``stall_min_gain`` (5%) of its starting level
    # where it is not (no floor is assumed: a fine-tuning log starts near its floor). 3 standard
    # errors and 5% are the plateau rule's own significance and practical gain (below), set
    # before the held-out families were written and not tuned on them (docs/measured/detection.md:
    # no healthy family above 0.5% stalled, every never-learning one found). A run that fell and
    # then sat still *learned*: its plateau is an event (below), not a failure.
    stall_min_progress: float = 0.2
    stall_min_gain: float = 0.05
    stall_sigmas: float = 3.0
    # A plateau after learning (a ``plateau`` event, at the step it began, with its level): the
    # later half of the points did not improve beyond its own noise, i.e. the median of the last
    # ``late_fraction`` of points is not below the median of as many points at the half-way mark
    # by ``plateau_sigmas`` standard errors of that difference, nor by ``plateau_min_gain`` of
    # its level (a noisy loss that still fell 12% is no plateau: ResNet-8 with AdamW over the
    # smoke grid's 60 steps). It began at the first point from which the loss stays within that
    # band above the final level, read on a centred median of ``plateau_locate_fraction`` (1%) of
    # the points, at least ``relapse_median_points``: short enough to follow a fast descent,
    # long enough that noise does not leave the band (a median of 20 points of a 3% noise moves
    # 0.8%, the band is at least 5%). From ``plateau_min_points`` on.
    plateau_sigmas: float = 3.0
    plateau_min_gain: float = 0.05
    plateau_min_points: int = 20
    plateau_locate_fraction: float = 0.01
    # Level shifts in a sparse log (``Monitor.level_shifts``, logs of at most ``sparse_max_points``
    # points: daily or per-epoch ones, where the spike rule's robust window is short and a jump
    # that stays is judged like a one-point spike at k = 8). A jump up is judged against the
    # scatter of its neighbours: the ``sparse_before`` points before it (fewer at a log's start,
    # from ``early_steps`` on) give a local trend (a line in log loss against log step, where a
    # power-law descent is straight) and a robust scatter (the larger of the MAD about that line
    # and the MAD of point-to-point differences over sqrt 2: a few points' MAD alone is often far
    # too small). The jump is a shift when the next ``shift_points`` points all sit more than
    # ``sparse_shift_sigmas`` scatters above that trend, their mean and the first of them by at
    # least that and ``sparse_min_jump`` (2%), and the first is that far above the point before
    # it too (a descent that stops, as after an LR drop, is above its trend, but no jump up from
    # where the loss was; a jump in a steep early descent is not above the points that follow it
    # by as much). 4 scatters: a healthy point passes
    # one such line with odds of about 1e-2 (a scatter from 20 points, a prediction a few points
    # out) and three in a row, whose errors share the fit, with about 1e-4: under one false shift
    # in a hundred 70-point logs. Only jumps up, and never where an LR rise (LrRule) lifts the loss
    # on purpose; a drop is the LR schedule's.
    sparse_max_points: int = 1000
    sparse_before: int = 20
    sparse_shift_sigmas: float = 4.0
    sparse_min_jump: float = 0.02
    # A shift that builds over a few points (a climb of 3-6 days) is judged from the top of the
    # climb (the points that each rose from the one before, at most ``sparse_climb_points``) and
    # located where it began; the jump up from where the loss was is measured to that top.
    sparse_climb_points: int = 6
    sparse_onset_sigmas: float = 2.0  # ... where it began: its first point this many scatters above the trend
    # One-point spikes in a sparse log (``Monitor.sparse_jumps``, logs of at most ``spike_window``
    # points): a point that is up from the point before it and down to the point after it, each
    # by more than ``sparse_spike_sigmas`` scales beyond the local trend (the median of the
    # ``sparse_trend_points`` point-to-point changes either side, the spike's own two left out)
    # and by ``sparse_min_jump``. The scale is the whole log's: 1.4826 x the MAD of every change
    # about its local trend (a day's noise is the same all through a log in log space; a scale
    # from the ten changes nearby is too rough to put a threshold on). A change is the difference
    # of two points' noise, so 4 scales put each side at about 5.7 sigmas of one point: a healthy
    # normal point passes both with odds of about 1e-8. A bump that stays (a restart, a jump that
    # lasts) is not down the next point: see below. 4 was set on the `daily` family
    # (benchmarks/detection.py, 400 logs, seed 0: with 5 its incidents were located 284 of 304
    # times, with 4 289; its healthy logs got no event either way), so `daily` is no longer held
    # out for it.
    sparse_spike_sigmas: float = 4.0
    # ... and a jump that stays: up from the point before by more than ``sparse_stay_sigmas`` of
    # those scales beyond the trend (and up, not only a fall that stopped), and the next
    # ``shift_points`` points all still that far above where the trend would have taken the
    # loss (``loss_shift``). Four points above a line drawn from one are the evidence a one-day
    # spike lacks: a healthy log passes with odds of about 1e-5 a point (the first point 3 scales
    # low and the next three each above the line). Set on `daily_jumps` (4: 175 of 200 located,
    # 3: 192; the early weeks, where the loss falls 2-6% a day, are what 3 adds), so that family
    # is no longer held out for it.
    sparse_stay_sigmas: float = 3.0
    sparse_trend_points: int = 5
    # unstable: >= 3 loss spike incidents, and more than 1 per 100 points. Gradient-norm spikes are
    # events, located and reported, but do not make a run unstable: a small batch's gradient norm
    # blips 2-4x with no mark on the loss (benchmarks/detection.py, multiplicative families), and
    # a gradient spike that does reach the loss is counted there.
    unstable_min_spikes: int = 3
    unstable_spike_rate: float = 0.01  # ... and more than 1 per 100 points
    recovery_band: float = 0.1  # back within 10% of the pre-spike level ...
    recovery_window: int = 50  # ... within 50 points: a recovery event
    # A loss that is blank in a log from some step to the end while the log goes on (at least this
    # many training rows: a gradient norm or an LR logged): read as the NaN that pandas writes as
    # an empty cell, ``diverged_nonfinite`` at the first blank step. Fewer rows: the log's tail.
    vanish_min_points: int = 3
    # fp16 loss scaling (torch.amp.GradScaler: starts at 2**16, halves per overflowing step):
    # below 1 the gradients overflow float16 at their true size, not only scaled up, so every
    # step is skipped; reaching it takes 16 more overflows than growth steps gave back.
    scale_collapse: float = 1.0


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
    """A run's verdict: these fields, in this order, are runs.csv's verdict columns
    (``VERDICT_FIELDS``; ``report.OUTCOME`` starts with them)."""

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


def robust_threshold(history, k: float, min_sigma: float) -> float:
    """median + k * sigma of the history, sigma = 1.4826 * MAD (a normal's sigma), >= min_sigma."""
    h = np.fromiter(history, float)
    med = float(np.median(h))
    sigma = max(1.4826 * float(np.median(np.abs(h - med))), min_sigma)
    return med + k * sigma


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


class SpikeRule:
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

    def sigma(self) -> float:
        """Robust sigma of the recent residuals (1.4826 MAD, floored), relative to the level; inf
        before there are enough of them."""
        h = self.recent()
        if h is None:
            return math.inf
        a = np.asarray(h)
        return max(1.4826 * float(np.median(np.abs(a - np.median(a)))), self.t.spike_min_sigma)

    def limit(self, raise_factor: float) -> float:
        h = self.recent()
        if h is None:
            return math.inf
        rough = max(1.0, self.t.spike_full_history / len(h))  # a scale from few residuals is uncertain
        return robust_threshold(h, self.t.spike_sigmas * raise_factor * rough, self.t.spike_min_sigma)

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
        elif exceeds:
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
        self.follow(value, u)
        return out


@dataclass
class Point:
    step: int
    loss: float
    grad_norm: float | None
    lr: float | None
    layer_norms: dict | None = None
    grad_scale: float | None = None  # fp16 loss scale in force for this step (None: no scaling)


@dataclass
class Monitor:
    """Streaming detector. Feed ``update(step, loss, grad_norm=None, lr=None)`` in step order;
    read ``diverged`` to abort early; call ``verdict()`` at the end. ``loss_floor`` is the lowest
    reachable loss when known (NaN: unknown, taken as 0)."""

    loss_floor: float = float("nan")
    thresholds: Thresholds = field(default_factory=Thresholds)
    events: list[Event] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    divergence_step: float = float("nan")
    divergence_reason: str = ""

    def __post_init__(self):
        t = self.thresholds
        self.rules = {"loss": SpikeRule(t), "grad_norm": SpikeRule(t)}  # each signal's spike statistics
        self.steps: list[int] = []
        self.grads: list[tuple[int, float]] = []  # (step, gradient norm) of every point that logged one
        self.excused_until = -1  # an excursion that came back (``excuse``): the divergence rules skip it
        self.raised: list[bool] = []  # per point in ``losses``: an LR rise had raised the thresholds there
        self.chain = rule_chain(t)  # the rules, in order, each with its own state

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
        if not math.isfinite(self.chain.relapse.best) or len(self.losses) < w:
            return None
        level = self.chain.back_level(self)
        return self.onset(level) if float(np.median(self.losses[-w:])) > level else None

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
        self.chain.excused()
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
        start = self.rules["loss"].last_start
        best_step = self.chain.relapse.best_step
        return min(self.steps[i], start) if start is not None and start > best_step else self.steps[i]

    def update(self, step: int, loss: float, grad_norm: float | None = None, lr: float | None = None,
               layer_norms: dict[str, float] | None = None, grad_scale: float | None = None) -> None:
        """Judge one logged point (see the module docs for the rules, in order)."""
        if self.diverged:
            return
        p = Point(int(step), float(loss), None if grad_norm is None else float(grad_norm),
                  None if lr is None else float(lr), layer_norms, None if grad_scale is None else float(grad_scale))
        for rule in self.chain:
            if rule(self, p):
                return
        self.raised.append(self.chain.lr.raised(p.step))

    def vanish(self, step: int, rows: int) -> None:
        """The log went on for ``rows`` training rows from ``step`` with a blank loss (logs.TABLE's
        ``loss_blank``): at least ``vanish_min_points`` of them is a loss that vanished, a
        divergence at ``step``."""
        if self.diverged or rows < self.thresholds.vanish_min_points:
            return
        self.emit(step, "loss_vanished", "loss", math.nan, math.nan, f"blank for {rows} logged rows to the end")
        self.diverge(step, f"the loss is blank from step {step} to the end while the log goes on ({rows} rows with a "
                           "gradient norm or LR): a NaN written as an empty cell reads this way")

    def verdict(self) -> Verdict:
        t = self.thresholds
        n_loss, n_grad = self.count("loss_spike"), self.count("grad_spike")
        first_event = min((e.step for e in self.events if e.kind not in COURSE_EVENTS), default=math.nan)
        initial, final = self.initial_loss, self.final_loss
        stats = dict(divergence_step=self.divergence_step, first_event_step=first_event, n_loss_spikes=n_loss,
                     n_grad_spikes=n_grad, initial_loss=initial, final_loss=final,
                     min_loss=min(self.losses, default=math.nan))
        if not self.diverged:
            rose = self.rose()
            if rose is not None:  # a divergence, whatever the stall rule would say of the curve
                step, how, peak, line = rose
                self.emit(step, "explosion", "loss", peak, line, how)
                self.diverge(step, f"loss {how}, from step {step}")
                stats.update(divergence_step=self.divergence_step,
                             first_event_step=min(first_event, self.divergence_step) if math.isfinite(first_event)
                             else self.divergence_step)
        if self.diverged:
            nonfinite = any(e.kind in ("nonfinite", "scale_collapse", "loss_vanished") for e in self.events)
            kind = "diverged_nonfinite" if nonfinite else "diverged_exploded"
            return Verdict(kind, self.divergence_reason, **stats)
        closed = progress(initial, final, self.floor)
        stuck = self.learned()
        if stuck:
            return Verdict("stalled", stuck, **stats)
        self.plateau()
        self.sparse_jumps()
        self.level_shifts()
        spikes = n_loss  # gradient-norm spikes are events; the loss is what an unstable run shows
        if spikes >= t.unstable_min_spikes and spikes / self.n > t.unstable_spike_rate:
            return Verdict("unstable", f"{spikes} loss spike incidents in {self.n} points", **stats)
        how = (f"the loss fell {closed:.0%} from {initial:.4g} to {final:.4g} (floor unknown)" if math.isnan(self.loss_floor)
               else f"closed {closed:.0%} of the gap to the floor {self.floor:.3g}")
        return Verdict("converged", f"learned: {how}", **stats)

    def window(self) -> int:
        """Points in the late window (``late_fraction`` of the run, at least 3)."""
        return max(3, round(self.thresholds.late_fraction * len(self.losses)))

    def median_gap_noise(self, level: float, w1: int, w2: int) -> float:
        """Standard error of the difference of two window medians (``w1`` and ``w2`` points) of
        the loss at ``level``: the loss's robust relative noise per point (SpikeRule.sigma) x the
        level x 1.2533 (a median's standard error over a mean's); NaN while that noise is
        unknown."""
        sigma = self.rules["loss"].sigma()
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

    def learned(self) -> str:
        """Why the run did not learn over its whole curve (Thresholds.stall_*), or "" when it did.
        A run with no loss did not learn; one whose noise is not yet known (a handful of points)
        is judged on the practical margin alone."""
        t = self.thresholds
        if not self.losses:
            return "no loss was logged"
        w0, w = min(t.early_steps, len(self.losses)), self.window()
        start, end = float(np.median(self.losses[:w0])), float(np.median(self.losses[-w:]))
        noise = self.median_gap_noise(end, w0, w)
        sigma = self.rules["loss"].sigma()
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
            scatter = max(1.4826 * float(np.median(np.abs(before - np.median(before)))),
                          1.4826 * float(np.median(np.abs(steps_ - np.median(steps_)))) / math.sqrt(2), t.spike_min_sigma)
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
        scale = max(1.4826 * float(np.median(np.abs(change - trend))), t.spike_min_sigma)
        least = max(t.sparse_spike_sigmas * scale, math.log(1 + t.sparse_min_jump))
        shift_least = max(t.sparse_stay_sigmas * scale, math.log(1 + t.sparse_min_jump))
        seen = [self.steps.index(e.step) for e in self.events if e.signal == "loss" and e.kind not in COURSE_EVENTS]
        found = []
        for i in range(1, n - 1):
            # the trend around the spike, its own two changes left out
            g = float(np.median(np.delete(change[max(0, i - 1 - t.sparse_trend_points):i + 1 + t.sparse_trend_points],
                                          [min(i - 1, t.sparse_trend_points), min(i - 1, t.sparse_trend_points) + 1])))
            up, down = change[i - 1] - g, g - change[i]
            if up <= shift_least or self.raised[i] or any(abs(j - i) <= t.shift_points for j in seen):
                continue
            expected = math.log(self.losses[i - 1]) + g
            if up > least and down > least:
                self.emit(self.steps[i], "loss_spike", "loss", self.losses[i], math.exp(expected),
                          f"up {math.expm1(up):.1%} from the point before and down {-math.expm1(-down):.1%} to the "
                          f"point after, beyond their trend: > {t.sparse_spike_sigmas:g}x the log's point-to-point "
                          f"scale ({scale:.2%}; a sparse log)")
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


def local_trend(change: np.ndarray, half: int) -> np.ndarray:
    """Per element, the median of the ``half`` elements either side of it (itself left out):
    the local trend of a log's point-to-point changes."""
    return np.array([float(np.median(np.delete(change[max(0, k - half):k + half + 1], min(k, half))))
                     for k in range(len(change))])


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
        noise = t.relapse_noise_sigmas * m.rules["loss"].sigma() * abs(best)
        return max(m.floor + t.relapse_factor * (best - m.floor), best + t.relapse_min_gap * (m.initial_loss - m.floor),
                   best + (noise if math.isfinite(noise) else 0.0))

    def __call__(self, m: Monitor, p: Point) -> bool:
        t = self.t
        self.medians.append(p.loss)
        if len(self.medians) < t.relapse_median_points or p.step <= m.excused_until:
            return False
        med = float(np.median(self.medians))
        if med < self.best:
            self.best, self.best_step = med, p.step
        best = self.best
        initial, floor = m.initial_loss, m.floor
        gap = initial - floor
        noise = t.relapse_noise_sigmas * m.rules["loss"].sigma() * abs(best)  # the loss's own noise, absolute
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
    """Spike incidents on the loss and gradient norm (``Monitor.rules``' SpikeRule per signal,
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
            rule = m.rules[signal]
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
    level, w, best = m.chain.back_level(m), t.relapse_median_points, m.chain.relapse.best
    recent = deque(m.losses[-w:], maxlen=w)
    start = m.steps.index(int(m.divergence_step)) if int(m.divergence_step) in m.steps else len(m.steps) - w
    peak = float(np.max(centred_median(m.losses[start:], w))) if len(m.losses) > start else -math.inf
    for step, loss, grad, _ in points[i + 1:]:
        if not is_finite(loss) or (grad is not None and not is_finite(grad)):
            return None
        recent.append(loss)
        if len(recent) < w:
            continue
        median = float(np.median(recent))
        peak = max(peak, median)
        if median <= level or (math.isfinite(best) and median - best <= t.shift_fraction * (peak - best)):
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


def classify(steps, thresholds: Thresholds | None = None, loss_floor: float = float("nan")) -> tuple[Verdict, list[Event]]:
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
    return m.verdict(), m.events


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


VERDICT_FIELDS = [f.name for f in fields(Verdict)]  # the one declaration: the dataclass above
VERDICT_COLUMNS = ["run_id", *VERDICT_FIELDS]  # diagnostics detect's runs.csv


def classify_table(steps, thresholds: Thresholds | None = None, loss_floor: float = float("nan")):
    """Classify every run of a table (columns run_id, step, loss; grad_norm and lr optional,
    None where not logged). Returns (verdict rows, event rows) as lists of dicts in run order."""
    verdicts, events = [], []
    for run_id, trace in steps.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=True):
        v, evs = classify(trace, thresholds, loss_floor)
        verdicts.append(dict(run_id=run_id, **{k: getattr(v, k) for k in VERDICT_FIELDS}))
        events += [dict(run_id=run_id, **e.__dict__) for e in evs]
    return verdicts, events
