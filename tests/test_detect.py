import math

import numpy as np
import pandas as pd
import pytest

from diagnostics.detect import COURSE_EVENTS, Monitor, Thresholds, classify
from diagnostics.detect.robust import progress, robust_threshold
from tests.traces import healthy, nan_at, rows, with_restarts

FLOOR = 1.7


def status_of(steps, loss, grad, floor=FLOOR, **kw):
    return classify(rows(steps, loss, grad), Thresholds(**kw), loss_floor=floor)


def kinds(events):
    return [e.kind for e in events]


def problems(events):
    """The events that report a problem (a plateau or a recovery describes a healthy course)."""
    return [e for e in events if e.kind not in COURSE_EVENTS]


def test_healthy_run_converges_without_events():
    v, events = status_of(*healthy())
    assert v.status == "converged"
    assert problems(events) == []
    assert math.isnan(v.divergence_step) and math.isnan(v.first_event_step)


def test_warm_restart_bumps_are_not_divergence():
    v, events = status_of(*with_restarts(bump=1.0))
    assert v.status in ("converged", "unstable")
    assert "explosion" not in kinds(events) and "nonfinite" not in kinds(events)


@pytest.mark.parametrize("k", [3, 50, 250])
def test_nonfinite_loss_diverges_at_its_step(k):
    v, events = status_of(*nan_at(k))
    assert v.status == "diverged_nonfinite"
    assert v.divergence_step == k
    assert events[0].kind == "nonfinite" and events[0].step == k


def test_nonfinite_grad_norm_diverges():
    steps, loss, grad = healthy()
    grad[99] = math.inf
    v, _ = status_of(steps, loss, grad)
    assert v.status == "diverged_nonfinite" and v.divergence_step == 100


def test_sustained_blowup_is_explosion_at_its_first_step():
    steps, loss, grad = healthy()
    loss[149:] = 15.0  # > 3 x the early loss (~3.4) from step 150 on
    v, events = status_of(steps, loss, grad)
    assert v.status == "diverged_exploded"
    assert v.divergence_step == 150
    assert "explosion" in kinds(events)


def test_short_excursion_above_the_line_is_not_explosion():
    steps, loss, grad = healthy()
    loss[149:155] = 15.0  # 6 steps < patience 10
    v, events = status_of(steps, loss, grad)
    assert v.status != "diverged_exploded"
    assert kinds(events)[0] == "loss_shift" and events[0].step == 150  # one incident, longer than a spike


def test_monitor_stops_deciding_after_divergence():
    m = Monitor(loss_floor=FLOOR)
    m.update(1, 3.0, 1.0)
    m.update(2, math.nan, 1.0)
    assert m.diverged and m.divergence_step == 2
    m.update(3, 3.0, 1.0)
    assert m.losses == [3.0]


def test_loss_spike_detected_at_its_step_and_recovery_follows():
    steps, loss, grad = healthy(noise=0.005)
    loss[199] *= 1.5
    v, events = status_of(steps, loss, grad)
    spikes = [e for e in events if e.kind == "loss_spike"]
    assert [e.step for e in spikes] == [200]
    assert any(e.kind == "recovery" and e.step == 201 for e in events)
    assert v.n_loss_spikes == 1 and v.status == "converged"


def test_grad_spike_detected():
    steps, loss, grad = healthy()
    grad[119] = 100.0
    v, events = status_of(steps, loss, grad)
    assert [(e.kind, e.step) for e in problems(events)] == [("grad_spike", 120)]
    assert v.n_grad_spikes == 1 and v.first_event_step == 120


def test_spikes_are_judged_from_the_sixth_point_with_a_rough_scale_before_the_ninth():
    steps, loss, grad = healthy()
    grad[4] = 100.0  # step 5: the level, the trend and 2 residuals seen: not judged yet
    _, events = status_of(steps, loss, grad)
    assert "grad_spike" not in kinds(events)
    grad[4], grad[5] = 1.0, 100.0  # step 6: 3 residuals, the threshold raised 8/3 x
    _, events = status_of(steps, loss, grad)
    assert [(e.kind, e.step) for e in problems(events)] == [("grad_spike", 6)] and "x2.7: few residuals" in events[0].detail
    grad[5] = 1.25  # 25% above a 5%-noise level: a spike with a full history (9 x MAD), not with 3 residuals
    _, events = status_of(steps, loss, grad)
    assert "grad_spike" not in kinds(events)


def test_catastrophic_spike_megatron_rule():
    steps, loss, grad = healthy(n=300)
    loss[249] = 40.0  # >= 10 x max of first 100 (~3.5); one step only
    v, events = status_of(steps, loss, grad)
    assert ("catastrophic_spike", 250) in [(e.kind, e.step) for e in events]
    assert v.status != "diverged_exploded"


def test_stalled_when_little_of_the_gap_closes():
    steps, loss, grad = healthy(rate=0.0005)  # barely moves
    v, _ = status_of(steps, loss, grad)
    assert v.status == "stalled"
    v2, _ = status_of(*healthy(rate=0.02))
    assert v2.status == "converged"


def test_stall_uses_zero_floor_when_unknown():
    steps, loss, grad = healthy(start=2.3, floor=0.0, rate=0.02)
    v, _ = status_of(steps, loss, grad, floor=math.nan)
    assert v.status == "converged"


def test_unstable_when_loss_spike_rate_above_threshold():
    steps, loss, grad = healthy(n=400, noise=0.002)
    for k in (150, 200, 250, 300, 350):
        loss[k] *= 1.5
    v, _ = status_of(steps, loss, grad)
    assert v.status == "unstable" and v.n_loss_spikes == 5 and "5 loss spike incidents" in v.status_reason
    v2, _ = status_of(steps, loss, grad, unstable_min_spikes=6)
    assert v2.status == "converged"


def test_gradient_spikes_are_events_but_do_not_make_a_run_unstable():
    steps, loss, grad = healthy(n=400, noise=0.002)
    for k in (150, 200, 250, 300, 350):
        grad[k] = 50.0
    v, events = status_of(steps, loss, grad)
    assert v.status == "converged" and v.n_grad_spikes == 5
    assert [e.step for e in events if e.kind == "grad_spike"] == [steps[k] for k in (150, 200, 250, 300, 350)]


def test_multiplicative_noise_is_judged_in_log_space():
    """A gradient norm wobbling 20% (log scale) with 3x blips on 2% of points: its linear residuals
    are skewed, and a linear robust scale reads the blips as 10-sigma spikes; in log space they are
    part of the noise."""
    rng = np.random.default_rng(3)
    steps, loss, grad = healthy(n=400, noise=0.002)
    grad = 1.0 * np.exp(0.2 * rng.standard_normal(400)) * np.where(rng.random(400) < 0.02, 3.0, 1.0)
    v, events = status_of(steps, loss, grad)
    assert v.n_grad_spikes == 0 and v.status == "converged"
    grad[300] = 40.0  # a real spike still shows
    v, events = status_of(steps, loss, grad)
    assert [e.step for e in events if e.kind == "grad_spike"] == [steps[300]]


def test_classify_accepts_a_dataframe_and_matches_streaming():
    steps, loss, grad = nan_at(120)
    df = pd.DataFrame({"step": steps, "loss": loss, "grad_norm": grad})
    a, ea = classify(df, loss_floor=FLOOR)
    m = Monitor(loss_floor=FLOOR)
    for step, value, grad_norm in rows(steps, loss, grad):
        m.update(step, value, grad_norm)
    assert repr(a) == repr(m.status()) and repr(ea) == repr(m.events)  # repr: NaN == NaN


def test_robust_threshold_ignores_one_outlier():
    h = [1.0, -1.0] * 10
    assert robust_threshold(h, 8, 0.0) == pytest.approx(8 * 1.4826)
    with_outlier = h + [1000.0]  # mean + 8 std would be above 1700: the outlier would hide the next one
    assert robust_threshold(with_outlier, 8, 0.0) == pytest.approx(1 + 8 * 1.4826 * 2)
    assert robust_threshold([0.0] * 20, 8, 0.01) == pytest.approx(0.08)  # the scale's floor


def test_progress():
    assert progress(3.0, 2.0, 1.0) == pytest.approx(0.5)
    assert progress(3.0, 3.5, 1.0) < 0
    assert progress(1.0, 1.0, 1.0) == 0.0


def lr_curve(n=300, restart_at=(100, 200), lr=1e-3):
    out = np.full(n, lr)
    for r in restart_at:
        out[r - 20:r] = lr * 0.05  # annealed, then back up (a warm restart)
    return out


def classify_rows(steps, loss, grad, lr, floor=FLOOR):
    return classify(list(zip(steps.tolist(), loss.tolist(), grad.tolist(), list(lr))), loss_floor=floor)


def test_a_blank_grad_norm_or_lr_is_not_logged_not_nonfinite():
    steps, loss, grad = healthy()
    v, events = classify(list(zip(steps.tolist(), loss.tolist(), [None] * len(steps), [None] * len(steps))),
                         loss_floor=FLOOR)
    assert v.status == "converged" and problems(events) == []


def test_one_incident_is_one_event():
    steps, loss, grad = healthy(noise=0.005)
    grad[150:153] = 40.0  # three points in a row
    grad[155] = 40.0  # and one more after two calm points: the same incident
    v, events = status_of(steps, loss, grad)
    assert [(e.kind, e.step) for e in problems(events)] == [("grad_spike", 151)] and v.n_grad_spikes == 1


def test_heavy_tailed_noise_is_not_instability():
    rng = np.random.default_rng(0)
    unstable = 0
    for seed in range(50):
        steps, loss, grad = healthy(noise=0.0, seed=seed)
        loss = loss * (1 + 0.02 * rng.standard_t(3, len(loss)) / np.sqrt(3))
        grad = grad * (1 + 0.05 * rng.standard_t(3, len(grad)) / np.sqrt(3))
        unstable += status_of(steps, loss, grad)[0].status == "unstable"
    assert unstable <= 1


def test_after_an_lr_rise_thresholds_are_raised_not_blanked():
    steps, loss, grad = healthy(noise=0.005)
    lr = lr_curve()
    loss[100:] += 0.3 * np.exp(-0.05 * np.arange(200))  # the restart's bump: no event
    v, events = classify_rows(steps, loss, grad, lr)
    assert "loss_spike" not in kinds(events) and v.status == "converged"
    grad[114] = 100.0  # a 100x gradient spike 15 steps after the restart still shows
    _, events = classify_rows(steps, loss, grad, lr)
    assert ("grad_spike", 115) in [(e.kind, e.step) for e in events]


def test_a_second_lr_bomb_gets_no_grace_and_a_nan_lr_is_ignored():
    steps, loss, grad = healthy(noise=0.005)
    lr = np.full(300, 1e-3)
    for k in (120, 220):  # two bombs of the same size, each spiking the gradient
        lr[k] = 1e-1
        grad[k] = 60.0
    lr[50] = math.nan
    _, events = classify_rows(steps, loss, grad, lr)
    assert [(e.kind, e.step) for e in events if e.kind == "grad_spike"] == [("grad_spike", 121), ("grad_spike", 221)]


def test_a_loss_that_climbs_back_to_twice_its_best_and_stays_diverges_where_it_climbed():
    steps, loss, grad = healthy(start=3.5, floor=0.0, rate=0.01, noise=0.01)
    best = loss[150]  # 0.78: 78% of the gap closed
    loss[150:170] = np.linspace(best, 3 * best, 20)
    loss[170:] = 3 * best * (1 + 0.01 * np.random.default_rng(1).standard_normal(130))
    v, events = status_of(steps, loss, grad, floor=0.0)
    assert v.status == "diverged_exploded" and "relapse" in kinds(events)
    assert 150 <= v.divergence_step <= 165


def test_a_sparse_daily_log_still_gets_spike_detection():
    steps, loss, grad = healthy(n=3000, rate=0.003, noise=0.01)
    keep = np.arange(0, 3000, 50)  # 60 points
    steps, loss, grad = steps[keep], loss[keep].copy(), grad[keep].copy()
    loss[40] *= 1.6
    v, events = classify(list(zip(steps.tolist(), loss.tolist())), loss_floor=FLOOR)
    assert [(e.kind, e.step) for e in events if e.kind == "loss_spike"] == [("loss_spike", int(steps[40]))]
    assert v.status == "converged"


def test_status_registry_answers_every_status_question():
    from diagnostics import detect
    from diagnostics.judge import stability
    from diagnostics.present import plots

    assert detect.STATUSES[0] == "converged" and detect.STATUSES[-1] == "error"
    assert set(detect.STATUS_COLOUR) == set(detect.STATUSES) and plots.STATUS_COLOUR is detect.STATUS_COLOUR
    assert stability.CONVERGED == ("converged", "unstable")


def test_real_traces_of_the_stability_sweep_keep_their_verdicts_when_logged_sparsely():
    """tests/fixtures/stability_traces.csv: real runs at x30 and x300 the recipes' LRs (some
    diverge to NaN within 10 steps, some stall, most converge). A divergence is placed where its
    climb began, at or before the first NaN, which has its own event. Thinned to every 10th step,
    the divergent ones are still divergent, within one logged point, and the others are not."""
    from pathlib import Path

    from diagnostics.detect import logs

    table = logs.read(Path(__file__).parent / "fixtures" / "stability_traces.csv")
    assert table["run_id"].nunique() == 24
    for run_id, trace in table.groupby("run_id"):
        dense, events = classify(trace)
        first_nan = trace.loc[trace["loss"].isna() | trace["grad_norm"].map(lambda g: g is not None and g != g), "step"]
        if len(first_nan):
            assert dense.status == "diverged_nonfinite" and dense.divergence_step <= first_nan.iloc[0], run_id
            assert [e.step for e in events if e.kind == "nonfinite"] == [first_nan.iloc[0]]
        if run_id == "gpt-sgd-cosine-linear-cpu-fp32-s0-lrx30":  # loss 3.2 -> 5.7 at step 6, 1.8e9 at 13, NaN at 14
            assert dense.divergence_step == 6 and "climbing from step 6" in dense.status_reason
        thin = trace[trace["step"] % 10 == 0]
        if len(thin) < 5:
            continue  # diverged within its first 10 steps: nothing left to thin
        sparse, _ = classify(thin)
        assert sparse.status.startswith("diverged") == dense.status.startswith("diverged"), run_id
        if dense.status.startswith("diverged"):
            assert abs(sparse.divergence_step - dense.divergence_step) <= 10, run_id


def daily_log(jump_day=None, n=70, seed=0):
    """A pretraining loss logged once a day (a power law in the step), noise 0.5%."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1) * 1000
    loss = (2.0 + 6.0 * (steps / 1000) ** -0.4) * np.exp(0.005 * rng.standard_normal(n))
    if jump_day is not None:
        loss[jump_day - 1] *= 1.2
    return steps, loss, np.ones(n)


@pytest.mark.parametrize("day", [7, 12, 40])
def test_a_jump_in_a_daily_log_is_located_on_its_day(day):
    steps, loss, grad = daily_log(jump_day=day)
    v, events = status_of(steps, loss, grad, floor=math.nan)
    assert [e.step for e in events if e.kind == "loss_spike"] == [day * 1000] and v.status == "converged"
    v, events = status_of(*daily_log(), floor=math.nan)
    assert not [e for e in events if e.signal == "loss"] and v.status == "converged"


def test_a_run_that_learned_and_then_plateaued_converges_with_a_plateau_event():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 501) * 10
    flat = (2.2 + 0.9 * np.exp(-steps / 40)) * np.exp(0.01 * rng.standard_normal(500))  # fell 29%, then sat
    for floor in (math.nan, 2.1):
        v, events = status_of(steps, flat, np.ones(500), floor=floor)
        assert v.status == "converged", v.status_reason
        (plateau,) = [e for e in events if e.kind == "plateau"]
        # 2.2 + 0.9 exp(-s/40) is within the 5% band (0.11) above 2.2 from s = 40 ln(0.9/0.11) = 84
        assert 60 <= plateau.step <= 130 and plateau.value == pytest.approx(2.2, rel=0.01)
        assert math.isnan(v.first_event_step)  # a plateau is no problem
    improving = 3.0 * (steps / 10) ** -0.2 * np.exp(0.01 * rng.standard_normal(500))
    v, events = status_of(steps, improving, np.ones(500), floor=math.nan)
    assert v.status == "converged" and not [e for e in events if e.kind == "plateau"]


def test_the_public_lm_log_shape_learned_then_plateaued_is_not_stalled():
    """A long LM log: 6.94 -> 2.84 over 200K steps, most of the fall early, one spike on the way."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, 2001) * 100
    loss = (2.8 + 4.14 * np.exp(-steps / 8000)) * np.exp(0.01 * rng.standard_normal(2000))
    loss[300] *= 1.6
    v, events = status_of(steps, loss, np.ones(2000), floor=math.nan)
    assert v.status == "converged" and "plateau" in kinds(events) and "loss_spike" in kinds(events)


@pytest.mark.parametrize("shape", ["flat", "drift", "dip"])
def test_a_run_that_never_learned_is_stalled_with_or_without_a_floor(shape):
    rng = np.random.default_rng(2)
    n = 800
    t = np.arange(1, n + 1)
    clean = {"flat": np.full(n, 4.0), "drift": 4.0 * (1 - 0.02 * t / n),
             "dip": 4.0 * (1 - 0.04 * np.sin(np.pi * np.clip(t / 80, 0, 1)))}[shape]  # a warmup transient
    loss = clean * np.exp(0.01 * rng.standard_normal(n))
    for floor in (math.nan, 2.0):
        v, _ = status_of(t, loss, np.ones(n), floor=floor)
        assert v.status == "stalled" and v.status_reason.startswith("did not learn"), (floor, v.status_reason)


def test_a_fall_within_the_noise_is_stalled_even_past_the_margin():
    """6% lower at the end, but the loss's noise is 20% a point and the run has 40 points."""
    rng = np.random.default_rng(3)
    t = np.arange(1, 41)
    loss = 4.0 * (1 - 0.06 * t / 40) * np.exp(0.2 * rng.standard_normal(40))
    v, _ = status_of(t, loss, np.ones(40), floor=math.nan)
    assert v.status == "stalled" and "within its own noise" in v.status_reason
    v, _ = status_of(t, 4.0 * (1 - 0.3 * t / 40) * np.exp(0.01 * rng.standard_normal(40)), np.ones(40), floor=math.nan)
    assert v.status == "converged"


def test_a_blatant_gradient_spike_in_heavy_tailed_noise_is_found_by_the_recent_range():
    rng = np.random.default_rng(4)
    steps, loss, _ = healthy(n=300)
    grad = np.exp(0.45 * rng.standard_t(3, 300) / math.sqrt(3)) * np.where(rng.random(300) < 0.08, 3.0, 1.0)
    k = 200
    grad[k - 1] = grad[k - 21:k - 1].max() * 8
    v, events = status_of(steps, loss, grad)
    (spike,) = [e for e in events if e.kind == "grad_spike" and e.step == k]
    assert v.status == "converged"
    off = classify(rows(steps, loss, grad), Thresholds(spike_range_factor=1e9), loss_floor=FLOOR)[1]
    assert "largest of the last" in spike.detail  # found by the recent range ...
    assert k not in [e.step for e in off if e.kind == "grad_spike"]  # ... and not without it
    # the same trace without the spike: nothing near it
    grad[k - 1] = np.median(grad)
    _, events = status_of(steps, loss, grad)
    assert not [e for e in events if e.kind == "grad_spike" and abs(e.step - k) <= 2]


# ---------------------------------------------------------------------------------------------
# a reader's status order: rose and stayed, excursions that come back, where a divergence began
# ---------------------------------------------------------------------------------------------

def wandering_high(n=300, rise_at=40, factor=6.0, seed=0):
    """A loss that rises from ~3.4 to ``factor`` x within 3 points at ``rise_at`` and wanders
    there to the end (50% log-normal noise: it dips under 3x its start now and then)."""
    rng = np.random.default_rng(seed)
    steps, loss, grad = healthy(n=n)
    high = loss[0] * factor
    loss[rise_at - 1:] = np.concatenate([np.geomspace(loss[rise_at - 2], high, 4)[1:], np.full(n - rise_at - 2, high)])
    loss[rise_at - 1:] *= np.exp(0.5 * rng.standard_normal(n - rise_at + 1))
    return steps, loss, grad


def test_a_loss_that_rose_far_and_stayed_up_is_exploded_not_stalled():
    steps, loss, grad = wandering_high()
    assert (loss[39:] < 3 * loss[0]).any()  # the streaming 3x line is crossed back and forth
    v, events = status_of(steps, loss, grad, floor=float("nan"))
    assert v.status == "diverged_exploded" and abs(v.divergence_step - 40) <= 2, v
    assert "stayed up" in v.status_reason
    # a run that stalls near its start, or rose only a little, is not one
    flat = np.full(300, 3.4) * np.exp(0.02 * np.random.default_rng(1).standard_normal(300))
    assert status_of(steps, flat, grad, floor=float("nan"))[0].status == "stalled"
    assert status_of(steps, flat * np.where(steps > 100, 1.3, 1.0), grad, floor=float("nan"))[0].status == "stalled"


def spiky(n=600, spikes=(80, 140, 200, 260, 320, 380, 440, 500), size=200.0, width=2):
    steps, loss, grad = healthy(n=n)
    for k in spikes:
        loss[k:k + width] *= size
        grad[k:k + width] *= size
    return steps, loss, grad


def test_excursions_that_come_back_are_spikes_however_large_and_many_make_it_unstable():
    v, events = status_of(*spiky())
    assert not v.status.startswith("diverged") and v.status == "unstable", v
    assert len([e for e in events if e.kind in ("loss_spike", "loss_shift")]) >= 8
    # one that lasts long enough to trip the explosion rule, then comes back: a shift, not a divergence
    steps, loss, grad = healthy(n=600)
    loss[299:340] *= 20
    v, events = status_of(steps, loss, grad)
    assert not v.status.startswith("diverged"), v
    assert any(e.kind in ("loss_spike", "loss_shift") and 298 <= e.step <= 302 for e in events)
    # ... while the same excursion that never comes back is a divergence at its start
    loss[299:] = loss[299:] * 20
    v, _ = status_of(steps, loss, grad)
    assert v.status == "diverged_exploded" and v.divergence_step == 300


def test_weights_reset_to_their_start_learn_again_and_did_not_diverge():
    steps, loss, grad = healthy(n=600)
    loss[300:] = loss[:300]  # reset at step 301: back to the untrained loss, learning again as before
    v, events = status_of(steps, loss, grad, floor=float("nan"))
    assert not v.status.startswith("diverged"), v
    assert any(e.signal == "loss" and 299 <= e.step <= 303 for e in events if e.kind not in COURSE_EVENTS)


def test_a_divergence_is_placed_where_the_gradient_norm_left_its_level_and_the_first_nan_recorded():
    steps, loss, grad = healthy(n=400)
    grad[149:] *= np.minimum(1.2 ** np.arange(251), 1e19)  # runs away from step 150, loss unmoved
    loss[249:] = math.nan  # the loss goes NaN 100 points later
    v, events = status_of(steps, loss, grad)
    assert v.status == "diverged_nonfinite" and abs(v.divergence_step - 150) <= 2, v
    assert "left its level for good" in v.status_reason
    assert [e.step for e in events if e.kind == "nonfinite"] == [250]
    # a gradient norm with a spike that came back does not move the divergence
    steps, loss, grad = healthy(n=400)
    grad[149:152] *= 50
    loss[249:] = math.nan
    v, _ = status_of(steps, loss, grad)
    assert v.divergence_step == 250
    # an explosion whose log goes on to a NaN keeps its onset and records that NaN as its own event
    steps, loss, grad = healthy(n=400)
    loss[149:] = 30.0 * 1.1 ** np.arange(251)
    loss[300:] = math.inf
    v, events = status_of(steps, loss, grad)
    assert v.divergence_step == 150 and [e.step for e in events if e.kind == "first_nonfinite"] == [301]


def daily_shift_log(jump_at=None, size=0.07, n=70, seed=0):
    """One point a day of a power-law loss with 0.5% noise; ``jump_at``: from that day on the
    loss is ``size`` higher (then goes on falling)."""
    rng = np.random.default_rng(seed)
    days = np.arange(1, n + 1)
    clean = 2.0 + 6.0 * days ** -0.4
    if jump_at is not None:
        clean[jump_at - 1:] *= 1 + size
    return pd.DataFrame(dict(step=days * 1000, loss=clean * np.exp(0.005 * rng.standard_normal(n))))


def test_a_sparse_log_s_jump_that_stays_is_a_shift_judged_against_its_neighbours():
    for seed, day in zip(range(6), (30, 45, 40, 50, 60, 33)):  # 4% on 0.5% noise: 8 sigmas, the spike rule's k
        _, events = classify(daily_shift_log(jump_at=day, size=0.04, seed=seed))
        assert any(e.kind in ("loss_shift", "loss_spike") and abs(e.step - day * 1000) <= 2000 for e in events), seed
        v, events = classify(daily_shift_log(seed=seed))
        assert v.status == "converged" and problems(events) == [], seed


def test_a_per_epoch_log_s_lr_drops_are_no_shift():
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 201)
    lr = 0.1 * 0.1 ** np.searchsorted([60, 120, 160], epochs, side="right")
    clean = 0.8 + 1.2 * np.exp(-epochs / 20)
    for m in (60, 120, 160):
        clean = np.where(epochs > m, clean * 0.6, clean)
    loss = clean * np.exp(0.01 * rng.standard_normal(200))
    for with_lr in (lr, [None] * 200):
        v, events = classify(list(zip(epochs, loss, [None] * 200, with_lr)))
        assert v.status == "converged" and not [e for e in events if e.kind.endswith(("_spike", "_shift"))]


def test_a_sparse_log_s_early_jumps_one_day_spikes_and_climbs_are_located():
    """The classes a daily log's reader notes and the trend-line rule missed: a jump that stays in
    the first weeks, where the loss still falls 2-6% a day (judged against the day before and the
    local trend of the day-to-day changes), a one-day spike of a few percent (up, then down the
    next day), and a climb over several days (located where it began)."""
    for seed, day in zip(range(5), (6, 9, 12, 15, 18)):  # 7% on 0.5% noise, while the loss falls 2-4% a day
        _, events = classify(daily_shift_log(jump_at=day, size=0.07, seed=seed))
        assert any(e.kind == "loss_shift" and abs(e.step - day * 1000) <= 2000 for e in events), (seed, day)
    for seed, day in zip(range(5), (8, 20, 33, 47, 61)):
        log = daily_shift_log(seed=seed)
        log.loc[day - 1, "loss"] *= 1.05  # 5%: 10 noise sigmas, one day
        _, events = classify(log)
        assert [e.step for e in events if e.kind in ("loss_spike", "loss_shift")] == [day * 1000], (seed, day)
    log = daily_shift_log(seed=7)
    log.loc[29:34, "loss"] *= np.linspace(1, 1.2, 7)[1:]  # 20% over six days, then it stays half up
    log.loc[35:, "loss"] *= 1.1
    _, events = classify(log)
    assert any(e.kind == "loss_shift" and abs(e.step - 30_000) <= 2000 for e in events)


def test_a_sparse_log_s_healthy_noise_and_lr_falls_raise_no_jump():
    """Not firing: 200 healthy daily logs (0.5% noise, the steep start included) and the per-epoch
    log whose LR drops make the loss fall and then flatten (a fall that stops is no rise)."""
    flagged = sum(bool([e for e in classify(daily_shift_log(seed=seed))[1] if e.kind in ("loss_spike", "loss_shift")])
                  for seed in range(200))
    assert flagged <= 2  # the benchmark's healthy daily family: 0 of 50


@pytest.mark.parametrize("seed", range(5))
def test_a_spike_of_a_noisy_gradient_norm_is_found_and_its_noise_is_not(seed):
    """10% noise (normal, in value): at 3x its level a gradient norm is 20 noise sigmas up, about
    10 of the rule's robust sigmas in log space (its residual's scale is 1.1x the noise, the log
    compresses the rise); at 1.5x, 5 noise sigmas, it is noise."""
    steps, loss, _ = healthy(seed=seed)
    grad = 1.0 + 0.1 * np.random.default_rng(seed).standard_normal(len(steps))
    _, events = status_of(steps, loss, grad)
    assert "grad_spike" not in kinds(events)  # the noise alone: nothing
    grad[149] = 3.0
    _, events = status_of(steps, loss, grad)
    assert ("grad_spike", 150) in [(e.kind, e.step) for e in events]
    grad[149] = 1.5
    _, events = status_of(steps, loss, grad)
    assert "grad_spike" not in kinds(events)


def test_a_loss_that_stops_falling_after_two_quick_lr_drops_is_no_shift():
    """Two step decays three epochs apart: the loss falls 33% at each, then sits on its new
    floor. The smoother's trend carries its level below the flat values for several epochs; the
    values are not above where the loss was, so there is no spike and no shift."""
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 201)
    clean = 0.8 + 1.2 * np.exp(-epochs / 20)
    for m in (100, 103):
        clean = np.where(epochs > m, clean * 0.67, clean)
    loss = clean * np.exp(0.005 * rng.standard_normal(200))
    v, events = classify(list(zip(epochs, loss, [None] * 200, [None] * 200)))
    assert v.status == "converged" and not [e for e in events if e.kind.endswith(("_spike", "_shift"))], events


@pytest.mark.parametrize("sigmas,k,found", [(7.9, None, True), (7.1, None, False), (7.9, 8.0, False)])
def test_a_spike_opens_at_k_robust_sigmas_above_the_predicted_level(sigmas, k, found):
    """Thresholds.spike_sigmas (7.5, tuned): a gradient norm that many robust sigmas of the recent
    residuals above the level the smoother predicts opens an incident; 7.1 does not, nor 7.9 at the
    k = 8 the rule had before."""
    import math

    from diagnostics.detect.rules import SpikeTracker

    steps, _, grad = healthy(seed=0)
    t = Thresholds() if k is None else Thresholds(spike_sigmas=k)
    tracker = SpikeTracker(t)
    for step, g in zip(steps[:149], grad[:149]):
        tracker.check(int(step), float(g))
    centre, sigma, _ = tracker.location_scale()
    value = math.exp(tracker.predicted(math.log(steps[149] + 1)) + centre + sigmas * sigma)
    kind, _ = tracker.check(int(steps[149]), value)
    assert (kind == "new") is found


@pytest.mark.parametrize("noises,k,found", [(3.7, None, True), (3.3, None, False), (3.7, 4.0, False)])
def test_a_one_day_spike_of_a_sparse_log_is_judged_by_the_noise_of_its_changes(noises, k, found):
    """Thresholds.sparse_spike_sigmas (3.5) and robust.change_noise: a day whose rise from the day
    before and fall to the day after, beyond their local trend, are each that many noises of one
    change is a spike; 3.3 is not, nor 3.7 at the k = 4 the rule had before."""
    from diagnostics.detect.robust import change_noise, local_trend

    t = Thresholds() if k is None else Thresholds(sparse_spike_sigmas=k)
    log, day = daily_shift_log(seed=3), 40
    x, lift = np.log(log["loss"].to_numpy()), 0.0
    for _ in range(6):  # the lift that makes the lesser side `noises` noises (the noise is the spiked log's)
        change = np.diff(np.where(np.arange(len(x)) == day - 1, x + lift, x))
        g = local_trend(change, t.sparse_trend_points, leave_out=2)[day - 2]
        lift += noises * change_noise(change) - min(change[day - 2] - g, g - change[day - 1])
    log.loc[day - 1, "loss"] *= math.exp(lift)
    assert 0.02 < math.expm1(lift) < 0.05  # a few percent on 0.5% noise: above sparse_min_jump
    _, events = classify(log, thresholds=t)
    assert ([e.step for e in events if e.kind == "loss_spike"] == [day * 1000]) is found, events


@pytest.mark.parametrize("losses,stalled", [([1.512, 1.101, 0.901], False), ([2.3, 1.9, 1.6, 1.5, 1.45, 1.41], False),
                                            ([2.30, 2.31, 2.29], True), ([2.30, 2.29, 2.31, 2.30, 2.30, 2.29], True)])
def test_a_log_of_a_few_epochs_is_judged_on_its_halves(losses, stalled):
    """Thresholds.stall_*: fewer points than the early and late windows need are split in halves,
    so a few epochs that fell learned (they read as "from 1.101 to 1.101" when the windows
    overlapped), and a few that did not fall did not."""
    v, _ = classify(list(enumerate(losses, start=1)))
    assert (v.status == "stalled") is stalled, v


LEARNED = [2.3, 1.9, 1.6, 1.4, 1.2, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8, 0.78, 0.76, 0.75]


@pytest.mark.parametrize("tail,status", [([2.2, 2.35, 2.4, 2.35, 2.36, 2.4], "diverged_exploded"),  # back at the start
                                         ([1.4, 1.5, 1.5, 1.45, 1.5, 1.5], "converged"),  # halfway back: kept some
                                         ([2.35, 2.4, 2.3, 1.2, 0.9, 0.8], "converged")])  # back, then learned again
def test_a_short_log_that_ended_back_where_it_started_lost_what_it_learned(tail, status):
    """Monitor.lost_all: 20 epochs that learned, then went back to the untrained loss for their
    last 6 (the relapse rule would wait 25 points) diverged there; a relapse halfway, or one the
    run learned its way out of, did not."""
    v, _ = classify(list(enumerate(LEARNED + tail, start=1)))
    assert v.status == status, v
    assert v.status != "diverged_exploded" or v.divergence_step == 15
