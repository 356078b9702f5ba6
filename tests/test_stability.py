import math

import pytest

from diagnostics.judge import stability
from tests import rows as rows_factory


def test_edge_is_the_largest_multiplier_that_converged():
    assert stability.stability_edge([0.3, 1, 3, 10], ["converged", "unstable", "stalled", "diverged_nonfinite"]) == 1
    assert stability.stability_edge([1, 3, 10], ["converged", "diverged_exploded", "converged"]) == 10
    assert math.isnan(stability.stability_edge([1, 3], ["diverged_nonfinite", "stalled"]))


def test_lr_sensitivity_caps_at_the_initial_loss():
    # losses 2.0 (best), 2.5, NaN (diverged -> initial 3.0), 50 (-> capped at 3.0)
    assert stability.lr_sensitivity([2.0, 2.5, math.nan, 50.0], 3.0) == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert stability.lr_sensitivity([2.0, 2.0], 3.0) == 0.0


def test_table_only_for_configs_swept_over_several_multipliers():
    base = dict(optimizer="sgd", seed=0, initial_loss=3.4)
    rows = [dict(base, warmup="none", lr_scale=s, status=st, val_loss=v)
            for s, st, v in ((1, "converged", 1.8), (3, "converged", 1.9), (10, "diverged_nonfinite", math.nan))]
    rows.append(dict(base, warmup="linear", lr_scale=1, status="converged", val_loss=1.8))  # one multiplier only
    t = stability.table(rows_factory.frame(rows))
    assert len(t) == 1
    r = t.iloc[0]
    assert r["warmup"] == "none" and r["stability_edge"] == 3 and r["best_lr_scale"] == 1
    assert r["statuses"] == "converged,converged,diverged_nonfinite" and r["lr_scales"] == "1,3,10"
    assert r["lr_sensitivity"] == pytest.approx((0 + 0.1 + 1.6) / 3)
    assert "x3" in stability.summary(t)
