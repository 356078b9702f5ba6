import math

import pandas as pd

from diagnostics import compare


def row(status="converged", loss=2.0, run_id="gpt-adamw-cosine-linear-cpu-fp32-s0", steps=200):
    return {"run_id": run_id, "steps": steps, "model_size": "tiny", "status": status, "final_loss": loss,
            "status_reason": ""}


def test_same_status_and_loss_in_band_matches():
    c = compare.check(row(loss=2.05), row(loss=2.0))
    assert c.ok and c.label == "match"


def test_loss_outside_band_fails():
    band = compare.loss_band(2.0)
    assert not compare.check(row(loss=2.0 + band * 1.01), row(loss=2.0)).ok
    assert compare.check(row(loss=2.0 + band * 0.99), row(loss=2.0)).ok


def test_band_has_an_absolute_floor_for_tiny_losses():
    assert compare.loss_band(0.001) == compare.ABS_BAND
    assert compare.check(row(loss=0.03), row(loss=0.001)).ok


def test_worse_status_fails():
    c = compare.check(row(status="diverged_nonfinite", loss=math.nan), row())
    assert not c.ok and c.label == "status worse"


def test_better_status_fails_until_the_baseline_is_updated():
    c = compare.check(row(status="converged"), row(status="stalled"))
    assert not c.ok and c.label == "status better" and "--update-baseline" in c.message


def test_no_baseline_passes_and_says_so():
    c = compare.check(row(), None)
    assert c.ok and c.label == "no baseline"


def test_both_nan_losses_with_same_status_match():
    assert compare.check(row("diverged_nonfinite", math.nan), row("diverged_nonfinite", math.nan)).ok


def test_baseline_keys_include_run_length():
    base = compare.index_baseline(pd.DataFrame([row(steps=200)]))
    assert compare.key_of(row(steps=200)) in base and compare.key_of(row(steps=50)) not in base


def test_merge_replaces_rows_of_the_same_key_and_keeps_others():
    old = pd.DataFrame([row(loss=1.0, run_id="a"), row(loss=1.0, run_id="b")])
    new = pd.DataFrame([row(loss=9.0, run_id="b"), row(loss=9.0, run_id="c")])
    merged = compare.merge_baseline(old, new)
    assert dict(zip(merged.run_id, merged.final_loss)) == {"a": 1.0, "b": 9.0, "c": 9.0}
