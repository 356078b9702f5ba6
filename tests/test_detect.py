import math

import numpy as np
import pandas as pd
import pytest

from diagnostics.detect import Monitor, RollingStats, Thresholds, classify, progress, spike_threshold
from tests.traces import healthy, nan_at, rows, with_restarts

FLOOR = 1.7


def verdict_of(steps, loss, grad, floor=FLOOR, **kw):
    return classify(rows(steps, loss, grad), Thresholds(**kw), loss_floor=floor)


def kinds(events):
    return [e.kind for e in events]


def test_healthy_run_converges_without_events():
    v, events = verdict_of(*healthy())
    assert v.status == "converged"
    assert events == []
    assert math.isnan(v.divergence_step) and math.isnan(v.first_event_step)


def test_warm_restart_bumps_are_not_divergence():
    v, events = verdict_of(*with_restarts(bump=1.0))
    assert v.status in ("converged", "unstable")
    assert "explosion" not in kinds(events) and "nonfinite" not in kinds(events)


@pytest.mark.parametrize("k", [3, 50, 250])
def test_nonfinite_loss_diverges_at_its_step(k):
    v, events = verdict_of(*nan_at(k))
    assert v.status == "diverged_nonfinite"
    assert v.divergence_step == k
    assert events[0].kind == "nonfinite" and events[0].step == k


def test_nonfinite_grad_norm_diverges():
    steps, loss, grad = healthy()
    grad[99] = math.inf
    v, _ = verdict_of(steps, loss, grad)
    assert v.status == "diverged_nonfinite" and v.divergence_step == 100


def test_sustained_blowup_is_explosion_at_its_first_step():
    steps, loss, grad = healthy()
    loss[149:] = 15.0  # > 3 x the early loss (~3.4) from step 150 on
    v, events = verdict_of(steps, loss, grad)
    assert v.status == "diverged_exploded"
    assert v.divergence_step == 150
    assert "explosion" in kinds(events)


def test_short_excursion_above_the_line_is_not_explosion():
    steps, loss, grad = healthy()
    loss[149:155] = 15.0  # 6 steps < patience 10
    v, events = verdict_of(steps, loss, grad)
    assert v.status != "diverged_exploded"
    assert "loss_spike" in kinds(events)


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
    v, events = verdict_of(steps, loss, grad)
    spikes = [e for e in events if e.kind == "loss_spike"]
    assert [e.step for e in spikes] == [200]
    assert any(e.kind == "recovery" and e.step == 201 for e in events)
    assert v.n_loss_spikes == 1 and v.status == "converged"


def test_grad_spike_detected():
    steps, loss, grad = healthy()
    grad[119] = 100.0
    v, events = verdict_of(steps, loss, grad)
    assert [(e.kind, e.step) for e in events] == [("grad_spike", 120)]
    assert v.n_grad_spikes == 1 and v.first_event_step == 120


def test_no_spike_rule_before_min_history():
    steps, loss, grad = healthy()
    grad[30] = 100.0  # step 31: fewer than 64 values seen
    _, events = verdict_of(steps, loss, grad)
    assert "grad_spike" not in kinds(events)


def test_catastrophic_spike_megatron_rule():
    steps, loss, grad = healthy(n=300)
    loss[249] = 40.0  # >= 10 x max of first 100 (~3.5); one step only
    v, events = verdict_of(steps, loss, grad)
    assert ("catastrophic_spike", 250) in [(e.kind, e.step) for e in events]
    assert v.status != "diverged_exploded"


def test_stalled_when_little_of_the_gap_closes():
    steps, loss, grad = healthy(rate=0.0005)  # barely moves
    v, _ = verdict_of(steps, loss, grad)
    assert v.status == "stalled"
    v2, _ = verdict_of(*healthy(rate=0.02))
    assert v2.status == "converged"


def test_stall_uses_zero_floor_when_unknown():
    steps, loss, grad = healthy(start=2.3, floor=0.0, rate=0.02)
    v, _ = verdict_of(steps, loss, grad, floor=math.nan)
    assert v.status == "converged"


def test_unstable_when_spike_rate_above_threshold():
    steps, loss, grad = healthy(n=400, noise=0.002)
    for k in (150, 200, 250, 300, 350):
        grad[k] = 50.0
    v, _ = verdict_of(steps, loss, grad)
    assert v.status == "unstable" and v.n_grad_spikes == 5
    v2, _ = verdict_of(steps, loss, grad, unstable_min_spikes=6)
    assert v2.status == "converged"


def test_classify_accepts_a_dataframe_and_matches_streaming():
    steps, loss, grad = nan_at(120)
    df = pd.DataFrame({"step": steps, "loss": loss, "grad_norm": grad})
    a, ea = classify(df, loss_floor=FLOOR)
    m = Monitor(loss_floor=FLOOR)
    for step, value, grad_norm in rows(steps, loss, grad):
        m.update(step, value, grad_norm)
    assert repr(a) == repr(m.verdict()) and repr(ea) == repr(m.events)  # repr: NaN == NaN


def test_rolling_stats_match_numpy():
    rng = np.random.default_rng(0)
    xs = rng.normal(5, 2, 500)
    r = RollingStats(128)
    for x in xs:
        r.push(float(x))
    assert r.mean() == pytest.approx(xs[-128:].mean(), rel=1e-10)
    assert r.std() == pytest.approx(xs[-128:].std(ddof=1), rel=1e-8)


def test_spike_threshold_is_infinite_until_history_is_long_enough():
    r = RollingStats(128)
    for _ in range(63):
        r.push(1.0)
    assert spike_threshold(r, Thresholds()) == math.inf
    r.push(1.0)
    assert spike_threshold(r, Thresholds()) == pytest.approx(1.0)


def test_progress():
    assert progress(3.0, 2.0, 1.0) == pytest.approx(0.5)
    assert progress(3.0, 3.5, 1.0) < 0
    assert progress(1.0, 1.0, 1.0) == 0.0
