"""The verdict of one run against its baseline row (the suites' check) and the policy that
decides what fails: each rule shown firing and not firing."""

import math

import pytest

from diagnostics import compare
from diagnostics.compare import Policy


def row(status="converged", loss=2.0, val=1.9, acc=math.nan, sha="a", run_id="gpt-adamw-cosine-linear-cpu-fp32-s0",
        steps=200, div=math.nan, metric_name="val_loss"):
    return {"run_id": run_id, "steps": steps, "model_size": "tiny", "status": status, "final_loss": loss,
            "val_loss": val, "val_metric": val if metric_name == "val_loss" else acc, "val_metric_name": metric_name,
            "status_reason": "", "weights_sha256": sha, "divergence_step": div, "initial_loss": 3.5,
            "loss_floor": 1.7}


def tol(final=1e-3, val=1e-3, metric=1e-3, div=math.nan, seen="converged"):
    return {"run_id": "x", "final_loss_tol": final, "val_loss_tol": val, "val_metric_tol": metric,
            "divergence_step_noise": div, "statuses_seen": seen}


def verdict(cand, base, t=None, margin=compare.MARGIN):
    return compare.check_run(cand, base, t, margin)


def test_same_weights_are_identical():
    assert verdict(row(), row())["verdict"] == "identical"


def test_within_the_measured_tolerance_is_equivalent_and_beyond_it_changed():
    assert verdict(row(loss=2.0009, sha="b"), row(), tol())["verdict"] == "equivalent"
    v = verdict(row(loss=2.002, sha="b"), row(), tol())
    assert v["verdict"] == "changed" and "final_loss +0.002" in v["detail"] and "beyond tol" in v["detail"]


def test_held_out_loss_is_judged_on_its_own():
    v = verdict(row(val=1.95, sha="b"), row(), tol())  # training loss unchanged, held-out loss changed
    assert v["verdict"] == "changed" and "val_loss" in v["detail"]


def test_held_out_accuracy_falls_beyond_the_margin_is_a_regression():
    base = row(acc=0.90, metric_name="val_accuracy", run_id="resnet-sgd-step-none-cpu-fp32-s0")
    worse = dict(base, val_metric=0.80, weights_sha256="b")  # accuracy: higher is better
    better = dict(base, val_metric=0.99, weights_sha256="b")
    assert verdict(worse, base, tol(metric=0.01))["verdict"] == "regressed"
    assert verdict(better, base, tol(metric=0.01))["verdict"] == "improved"


def test_beyond_the_margin_is_regressed_or_improved():
    assert verdict(row(loss=2.2, sha="b"), row(), tol())["verdict"] == "regressed"  # +10% > 5%
    assert verdict(row(loss=1.8, sha="b"), row(), tol())["verdict"] == "improved"
    assert verdict(row(loss=2.08, sha="b"), row(), tol())["verdict"] == "changed"  # +4%
    assert verdict(row(loss=2.08, sha="b"), row(), tol(), margin=0.03)["verdict"] == "regressed"


def test_without_measured_tolerances_any_difference_is_beyond_noise():
    assert verdict(row(loss=2.0 + 1e-6, sha="b"), row())["verdict"] == "changed"
    assert verdict(row(loss=2.0 + 1e-6, sha="b"), row(), tol())["verdict"] == "equivalent"


def test_a_worse_status_is_a_status_change_unless_calibration_saw_it():
    v = verdict(row(status="unstable", sha="b"), row(), tol())
    assert v["verdict"] == "status_changed" and v["direction"] == "worse"
    flap = verdict(row(status="unstable", sha="b"), row(), tol(seen="converged,unstable"))
    assert flap["verdict"] == "equivalent" and "within noise" in flap["detail"]


def test_a_flip_on_the_stall_line_is_noise_and_one_far_from_it_is_not():
    line = 3.5 - 0.2 * (3.5 - 1.7)  # stall line: 20% of the gap from 3.5 to the floor 1.7 closed
    base = row(status="converged", loss=line - 0.0004, val=line)
    on_line = row(status="stalled", loss=line + 0.0004, val=line, sha="b")
    assert verdict(on_line, base, tol())["verdict"] == "equivalent"
    far = row(status="stalled", loss=3.4, val=3.4, sha="b")
    assert verdict(far, base, tol())["verdict"] == "status_changed"


def test_diverged_runs_are_judged_on_when_they_diverged():
    base = row(status="diverged_nonfinite", loss=1e6, val=math.nan, div=100)
    later_loss = dict(base, final_loss=2.5e6, weights_sha256="b")  # same step, other last loss
    assert verdict(later_loss, base, tol(div=0.0))["verdict"] == "equivalent"
    earlier = dict(base, divergence_step=50, weights_sha256="b")
    v = verdict(earlier, base, tol(div=0.0))
    assert v["verdict"] == "regressed" and "divergence_step -50" in v["detail"]
    assert verdict(dict(base, divergence_step=104, weights_sha256="b"), base, tol(div=0.0))["verdict"] == "changed"
    assert verdict(dict(base, divergence_step=104, weights_sha256="b"), base, tol(div=1.0))["verdict"] == "equivalent"


def test_no_baseline_row_is_new():
    assert verdict(row(), None)["verdict"] == "new"


@pytest.mark.parametrize("verdict_row,policy,fails", [
    ({"verdict": "identical"}, Policy(), False),
    ({"verdict": "equivalent"}, Policy(), False),
    ({"verdict": "changed"}, Policy(), False),
    ({"verdict": "changed"}, Policy(fail_on_change=True), True),
    ({"verdict": "regressed", "direction": "worse"}, Policy(allow_improved=True), True),
    ({"verdict": "improved", "direction": "better"}, Policy(), True),
    ({"verdict": "improved", "direction": "better"}, Policy(allow_improved=True), False),
    ({"verdict": "status_changed", "direction": "worse"}, Policy(allow_improved=True), True),
    ({"verdict": "status_changed", "direction": "better"}, Policy(), True),
    ({"verdict": "status_changed", "direction": "better"}, Policy(allow_improved=True), False),
    ({"verdict": "missing"}, Policy(), True),
    ({"verdict": "missing"}, Policy(allow_missing=True), False),
    ({"verdict": "new"}, Policy(), True),
    ({"verdict": "new"}, Policy(allow_no_baseline=True), False),
    ({"verdict": "skipped"}, Policy(), False),
])
def test_policy_fails_every_hollow_or_bad_verdict(verdict_row, policy, fails):
    assert (policy.failure(verdict_row) is not None) == fails


def test_a_curve_that_leaves_the_calibrated_envelope_has_changed():
    import pandas as pd

    steps = list(range(1, 11))
    envelope = pd.DataFrame(dict(run_id="x", step=steps, loss_reference=[3.0 - 0.1 * s for s in steps],
                                 loss_noise=[0.0] + [1e-4] * 9))
    inside = [dict(step=s, loss=3.0 - 0.1 * s + (5e-4 if s > 1 else 0.0)) for s in steps]  # within 10 x 1e-4
    outside = [dict(step=s, loss=3.0 - 0.1 * s + (5e-3 if s > 4 else 0.0)) for s in steps]  # > 20 x 1e-4
    base, cand = row(), row(loss=2.0 + 1e-5, sha="b")  # final numbers within tolerance either way
    assert verdict(cand, base, tol()) == compare.check_run(cand, base, tol())  # no trace: the values decide
    assert compare.check_run(cand, base, tol(), trace=inside, envelope=envelope)["verdict"] == "equivalent"
    v = compare.check_run(cand, base, tol(), trace=outside, envelope=envelope)
    assert v["verdict"] == "changed" and "left the calibrated envelope at step 5" in v["detail"]


def test_a_change_is_described_by_its_direction_in_words():
    from diagnostics.compare import describe

    base = dict(name="val_metric", delta=0.002, tol=0.001, beyond=True)
    assert describe(dict(base, rel=-0.0052)) == "val_metric +0.002 (0.52% better) beyond tol 0.001"
    assert describe(dict(base, rel=0.0061, beyond=False)) == "val_metric +0.002 (0.61% worse) within tol 0.001"
