"""`diagnostics compare` and `merge`, and the statistics behind them."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from diagnostics import report
from diagnostics.judge import compare
from tests import rows
from tests.conftest import cli, write_rounding_noise


def test_curve_distance_first_difference_and_separation():
    steps = pd.Index(range(1, 101))
    base = pd.Series(np.linspace(3, 2, 100), index=steps)
    assert all(math.isnan(x) or x == 0 for x in compare.curve_distance(base, base.copy(), 3.0))
    cand = base.copy()
    cand.loc[60:] += 0.5  # apart by 0.5 / 3 = 17% of the initial loss from step 60
    first, dist, apart = compare.curve_distance(base, cand, 3.0)
    assert first == 60 and dist == pytest.approx(0.5 / 3) and 60 <= apart <= 60 + compare.CURVE_WINDOW


def runs_frame(losses_by_seed, status="converged", **cfg):
    base = dict(model="gpt", optimizer="adamw", scheduler="cosine", warmup="none", device="cpu", precision="fp32",
                lr_scale=1.0, steps=200, model_size="tiny", status_reason="", initial_loss=3.5, steps_per_s=60.0,
                peak_rss_mb=800.0, peak_device_mem_mb=math.nan, val_metric_name="val_loss", divergence_step=math.nan)
    base.update(cfg)
    return rows.frame([dict(base, run_id=f"{base['optimizer']}-s{s}", seed=s, status=status, final_loss=v,
                              val_loss=v, val_metric=v, weights_sha256=f"{v!r}")
                         for s, v in losses_by_seed.items()])


def verdict(b, c, **kw):
    return compare.compare_reports(b, c, **kw).iloc[0]


def test_tolerances_are_matched_by_config():
    b = runs_frame({0: 1.8})
    c = runs_frame({0: 1.8001})
    tol = report.with_axis_defaults(b)[compare.CONFIG].assign(
        run_id="adamw-s0", statuses_seen="converged", status_flips=0, status_runs=10, final_loss_noise=1e-3,
        final_loss_df=10, val_loss_noise=1e-3, val_loss_df=10, val_metric_noise=1e-3, val_metric_df=10)
    assert verdict(b, c)["verdict"] == "unjudged"  # no noise measured: never beyond noise, and it fails
    assert verdict(b, c, tolerances=tol)["verdict"] == "equivalent"
    assert verdict(b, c, tolerances=tol.assign(steps=100))["verdict"] == "unjudged"  # another config's noise


def test_cost_flags_a_2x_slowdown():
    b = runs_frame({0: 1.8})
    c = runs_frame({0: 1.8}, steps_per_s=25.0)
    c["weights_sha256"] = "other"
    r = verdict(b, c)
    assert r["verdict"] == "equivalent" and r["cost"] == "slower" and r["slowdown"] == pytest.approx(2.4)


@pytest.mark.slow
def test_compare_a_report_with_itself_and_with_a_rerun(smoke_reports, tmp_path):
    (d0, _), (d2, _) = smoke_reports["0"], smoke_reports["2"]
    proc = cli("compare", str(d0), str(d0), "--out", str(tmp_path / "self"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 configs: 4 identical" in proc.stdout and "torch" in proc.stdout and "control:" in proc.stdout
    assert set(pd.read_csv(tmp_path / "self" / "compare.csv")["verdict"]) == {"identical"}
    proc = cli("compare", str(d0), str(d2), "--out", str(tmp_path / "rerun"))  # -n 0 vs -n 2 rerun
    assert proc.returncode == 0 and "FAILED" not in proc.stdout


def calibrated_copy(src, dst, rel_noise=1e-4):
    """A copy of a report with a rounding-sized tolerances.csv beside it (conftest.write_rounding_noise)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data"))
    write_rounding_noise(dst / "runs.csv", rel_noise)
    return dst


def edited_copy(src, dst, edit):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data"))
    runs = report.read(dst / "runs.csv")
    report.write_atomic(dst / "runs.csv", edit(runs))
    return dst


@pytest.mark.slow
def test_injected_regressions_are_flagged_exactly(smoke_reports, tmp_path):
    d0 = calibrated_copy(smoke_reports["0"][0], tmp_path / "base")
    worse, flipped = "gpt-sgd-cosine-linear-cpu-fp32-s0", "resnet-adamw-cosine-linear-cpu-fp32-s0"

    def edit(runs):
        runs.loc[runs.run_id == worse, "final_loss"] *= 1.2
        runs.loc[runs.run_id == worse, "weights_sha256"] = "x"
        runs.loc[runs.run_id == flipped, ["status", "weights_sha256"]] = ["diverged_exploded", "y"]
        return runs
    cand = edited_copy(d0, tmp_path / "cand", edit)
    proc = cli("compare", str(d0), str(cand))
    assert proc.returncode == 1 and f"FAILED REGRESSED {worse}" in proc.stdout
    t = pd.read_csv(cand / "compare.csv").set_index("run_id")
    assert sorted(t.index[t["failure"].notna()]) == sorted([worse, flipped])
    assert t.loc[worse, "verdict"] == "regressed" and t.loc[flipped, "verdict"] == "status_changed"
    assert (t.drop([worse, flipped])["verdict"] == "identical").all()


@pytest.mark.slow
def test_no_hollow_passes(smoke_reports, tmp_path):
    d0 = calibrated_copy(smoke_reports["0"][0], tmp_path / "base")
    truncated = edited_copy(d0, tmp_path / "truncated", lambda runs: runs.iloc[:2])  # 2 of 4 rows
    proc = cli("compare", str(d0), str(truncated))
    assert proc.returncode == 1 and proc.stdout.count("FAILED MISSING") == 2
    assert cli("compare", str(d0), str(truncated), "--allow-missing").returncode == 0
    empty = edited_copy(d0, tmp_path / "empty", lambda runs: runs.iloc[:0])
    proc = cli("compare", str(d0), str(empty))
    assert proc.returncode == 1 and "holds no runs: nothing was judged" in proc.stdout
    (tmp_path / "cut").mkdir()
    text = (d0 / "runs.csv").read_text()
    (tmp_path / "cut" / "runs.csv").write_text(text[: text.index("\n", text.index("\n") + 1) + 15])  # a row cut short
    proc = cli("compare", str(d0), str(tmp_path / "cut"))
    assert proc.returncode == 2 and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    improved = edited_copy(d0, tmp_path / "better", lambda r: r.assign(final_loss=r.final_loss * 0.5, weights_sha256="z"))
    assert cli("compare", str(d0), str(improved)).returncode == 1
    assert cli("compare", str(d0), str(improved), "--allow-improved").returncode == 0
    nan = edited_copy(d0, tmp_path / "nan", lambda r: r.assign(final_loss=math.nan, val_loss=math.nan, val_metric=math.nan))
    proc = cli("compare", str(d0), str(nan))
    assert proc.returncode == 1 and proc.stdout.count("FAILED MISSING") == 4 and "empty values" in proc.stdout
    twice = edited_copy(d0, tmp_path / "twice", lambda r: pd.concat([r, r.iloc[:1]]))
    proc = cli("compare", str(d0), str(twice))
    assert proc.returncode == 2 and "2 times" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    extra = edited_copy(d0, tmp_path / "extra", lambda r: pd.concat([r, r.iloc[:1].assign(optimizer="lion", run_id="x")]))
    assert cli("compare", str(d0), str(extra)).returncode == 1  # a config with no baseline
    assert cli("compare", str(d0), str(extra), "--allow-no-baseline").returncode == 0


def test_compare_bad_input_is_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    proc = cli("compare", str(tmp_path / "a"), str(tmp_path / "a"))
    assert proc.returncode == 2 and "no such file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "a" / "runs.csv").write_text("run_id,status\nx,converged\n")
    proc = cli("compare", str(tmp_path / "a"), str(tmp_path / "a"))
    assert proc.returncode == 2 and "missing column" in proc.stderr


def test_compare_of_two_60_config_reports():
    rng = np.random.default_rng(0)
    frames = [runs_frame({0: 1.8 + 0.1 * rng.standard_normal()}, optimizer=f"o{k}") for k in range(60)]
    b = pd.concat(frames, ignore_index=True)
    b["run_id"] = [f"r{k}" for k in range(60)]
    steps = pd.DataFrame([dict(run_id=f"r{k}", step=s, loss=2.0) for k in range(60) for s in range(1, 201)])
    t = compare.compare_reports(b, b.assign(weights_sha256="other"), steps, steps)  # timed in benchmarks/
    assert len(t) == 60 and set(t["verdict"]) == {"equivalent"}



@pytest.mark.slow
def test_shards_merge_into_exactly_the_unsharded_rows(smoke_reports, tmp_path):
    d0, _ = smoke_reports["0"]
    shards = []
    for i in (1, 2):
        d = tmp_path / f"shard{i}"
        proc = cli("run", "--grid", "smoke", "--steps", "20", "--devices", "cpu", "--shard", f"{i}/2",
                   "--report-dir", str(d), "--data-dir", str(d0 / "data"), "--quiet", "--allow-no-baseline")
        assert proc.returncode == 0, proc.stdout[-2000:]
        shards.append(d)
    assert len(report.read(shards[0] / "runs.csv")) == 2
    proc = cli("merge", *map(str, shards), "--out", str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr
    a, b = report.read(d0 / "runs.csv"), report.read(tmp_path / "merged" / "runs.csv")
    cols = ["run_id", "status", "final_loss", "weights_sha256"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    trace = ["run_id", "step", "loss", "grad_norm"]
    pd.testing.assert_frame_equal(report.read(d0 / "steps.csv")[trace], report.read(tmp_path / "merged" / "steps.csv")[trace])
    # refusals: duplicates, an existing report as --out, mixed schemas
    proc = cli("merge", str(shards[0]), str(shards[0]), "--out", str(tmp_path / "dup"))
    assert proc.returncode == 2 and "appears in more than one report" in proc.stderr
    proc = cli("merge", str(shards[0]), "--out", str(tmp_path / "merged"))
    assert proc.returncode == 2 and "already holds a report" in proc.stderr
    odd = tmp_path / "odd"
    shutil.copytree(shards[1], odd)
    report.write_atomic(odd / "runs.csv", report.read(odd / "runs.csv").assign(extra=1))  # one more column
    proc = cli("merge", str(shards[0]), str(odd), "--out", str(tmp_path / "mixed"))
    assert proc.returncode == 2 and "mixed schemas" in proc.stderr
