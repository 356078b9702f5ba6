"""Every number a status depends on, with where it comes from (``Thresholds``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """Every number a status depends on, with where it comes from. "Points" are logged points.
    Numbers marked *tuned* were chosen on the tuning families of benchmarks/detection.py and are
    reported on its held-out families too (docs/measured/detection.md)."""

    # Spikes: OLMo-core's stability monitor flags a value above mean + 6 std of the last 128. Here
    # a positive signal's residual is taken in log space (its noise is multiplicative) from the
    # level a short Holt smoother predicts (SpikeTracker.follow: level weight 0.3, about 3 points;
    # trend weight 0.1, against log(step + 1), where a power-law descent is straight), and compared
    # with a robust location and scale of the last ``spike_window`` residuals: median + k * 1.4826
    # * MAD (the MAD scaled to a normal sigma), so heavy-tailed noise does not inflate the scale
    # and one outlier does not move it. k = 7.5 (*tuned* on the tuning families in log space: 9
    # found 92% of their spikes, 8 98% with no healthy run called unstable, when the level was a
    # plain EMA; 6 had called 4% of Student-t(3) healthy runs unstable. Re-tuned on 2026-12-04:
    # with the Holt trend, the residual's scale is 1.1-1.4x the noise and 8 found 94.5% of the
    # `spike` family, 93.5% with the condition below; with it, 7.5 finds 96.5%, 7 97.5% but
    # called 1.8% of the held-out multiplicative_0.1 healthy runs unstable, 7.5 0.9% as 8 did;
    # docs/measured/detection.md). Besides, a spike is above
    # the median of the ``spike_recent_points`` values before it (SpikeTracker.above_recent): a
    # loss that stops falling after a step decay, which the trend carries the level past, is no
    # spike and no shift. The rule judges from the sixth point (the level,
    # the trend, then ``spike_min_history`` residuals), with k raised by 8 / n while fewer than
    # ``spike_full_history`` residuals are seen (a daily log's first week), and its window grows
    # with the log up to 128.
    spike_window: int = 128
    spike_window_fraction: float = 0.5  # ... and at most half the points seen (a sparse log's early descent drops out)
    spike_min_history: int = 3
    spike_full_history: int = 8  # below this many residuals the threshold is k x 8 / n (a scale from 3 is rough)
    spike_sigmas: float = 7.5
    spike_ema: float = 0.3
    spike_trend: float = 0.1  # Holt's trend weight (SpikeTracker.follow); 0 would make the level a plain EMA
    spike_recent_points: int = 3  # ... and a spike is above the median of this many values before it too
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
    # calibration changed status under it). Over a whole log (``Monitor.lost_all``), a run that
    # closed ``relapse_min_progress`` of its gap and ends back at its untrained loss (each of its
    # last ``relapse_median_points`` points above the initial loss less ``stall_sigmas`` of its
    # noise, and above the relapse level) diverged without the patience: a log of a few epochs,
    # or a relapse in its last points, has no 25 points to wait (960 real changelog runs and every
    # benchmark family: no status moved).
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
    # stalled: the run did not learn, judged over its whole curve (``Monitor.why_stalled``). It
    # learned when its final level (the median of the last ``late_fraction`` of points) is below
    # its starting level (the median of the first ``early_steps`` points, the untrained model; the
    # first point alone where it is above that median by more than ``stall_sigmas`` of the noise:
    # a log written every few hundred steps may reach its floor by its second point) by more than
    # ``stall_sigmas`` standard errors of that difference (the loss's own robust noise per point,
    # SpikeTracker.sigma), *and* by a practical margin: ``stall_min_progress`` (20%) of the gap to
    # the floor where the floor is known (as before: a classifier that closes a tenth of the way
    # to its entropy learned nothing that matters), ``stall_min_gain`` (5%) of its starting level
    # where it is not (no floor is assumed: a fine-tuning log starts near its floor). 3 standard
    # errors and 5% are the plateau rule's own significance and practical gain (below), set
    # before the held-out families were written and not tuned on them (docs/measured/detection.md:
    # no healthy family above 0.5% stalled, every never-learning one found). A run that fell and
    # then sat still *learned*: its plateau is an event (below), not a failure. A log too short for
    # both windows (fewer than ``early_steps`` + 3 points: a few epochs) is judged on its first
    # half's median against its second half's, never on windows that overlap (a 3-epoch log that
    # fell 1.51, 1.10, 0.90 had read as "went from 1.101 to 1.101": stalled).
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
    # that stays is judged like a one-point spike at k = 7.5). A jump up is judged against the
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
    # by more than ``sparse_spike_sigmas`` times the noise of one change beyond the local trend
    # (the median of the ``sparse_trend_points`` point-to-point changes either side, the spike's
    # own two left out) and by ``sparse_min_jump``. That noise is the whole log's (a day's noise
    # is the same all through a log in log space; ten changes nearby are too few to put a
    # threshold on): the robust sigma of its second differences over sqrt 3 (robust.change_noise:
    # a second difference of white noise spreads sqrt 3 times a change's, and a smooth trend hardly
    # moves it). The MAD of the changes about their local trend, used before 2026-12-04, read
    # 1.25x the changes' noise on healthy `daily` logs (median; 1.44x at the 90th percentile: the
    # trend's own error, and an early descent's curvature), so its threshold was higher than its
    # odds said. A change is the difference of two points' noise, so 3.5 noises put each side at
    # about 4.9 sigmas of one point: a healthy point with normal noise passes both with odds of
    # 7e-6 (the integral of phi(x) Phi(x - 3.5 sqrt 2)^2), about 1e-3 over a 128-point log; a
    # point of a daily log is a mean over thousands of steps, near normal. Set on `daily`
    # (benchmarks/detection.py; 1,000 fresh logs, seeds 1-5, 766 incidents, located: the former
    # scale and k = 4, 93.5%; this noise and 4, 94.5%; 3.5, 95.6%; 3, 95.6%), its 234 healthy logs
    # with a loss event 4 times each way (the other rules'); `sparse`'s 320 healthy logs 24 -> 27
    # (two at the second and third points of a steep early descent). `daily` is not held out for
    # it. A bump that stays (a restart, a jump that lasts) is not down the next point: see below.
    sparse_spike_sigmas: float = 3.5
    # ... and a jump that stays: up from the point before by more than ``sparse_stay_sigmas``
    # scales beyond the trend (the scale: 1.4826 x the MAD of every change about its local
    # trend; and up, not only a fall that stopped), and the next ``shift_points`` points all
    # still that far above where the trend would have taken the loss (``loss_shift``). Four
    # points above a line drawn from one are the evidence a one-day spike lacks: a healthy log
    # passes with odds of about 1e-5 a point (the first point 3 scales low and the next three
    # each above the line). Set on `daily_jumps` (4: 175 of 200 located,
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


