"""`diagnostics compare` and `merge`, and the statistics behind them."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from diagnostics import compare, report
from tests.conftest import diagnostics


def test_holm_matches_the_textbook_example():
    # Holm (1979) step-down: sorted p * (m - rank), made monotone
    assert compare.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert compare.holm([]) == []


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
                peak_rss_mb=800.0, peak_device_mem_mb=math.nan)
    base.update(cfg)
    return pd.DataFrame([dict(base, run_id=f"r-s{s}", seed=s, status=status, final_loss=v, weights_sha256=f"{v!r}")
                         for s, v in losses_by_seed.items()])


def verdict(b, c):
    return compare.compare_reports(b, c).iloc[0]


def test_seeds_decide_with_a_bootstrap_ci():
    rng = np.random.default_rng(0)
    b = runs_frame({s: 1.80 + 0.01 * rng.standard_normal() for s in range(5)})
    same = runs_frame({s: 1.80 + 0.01 * rng.standard_normal() for s in range(5)})
    worse = runs_frame({s: 2.20 + 0.01 * rng.standard_normal() for s in range(5)})
    better = runs_frame({s: 1.40 + 0.01 * rng.standard_normal() for s in range(5)})
    assert verdict(b, same)["verdict"] == "equivalent"
    r = verdict(b, worse)
    assert r["verdict"] == "regressed" and r["regression"] and r["ci_low"] > 0 and "bootstrap" in r["method"]
    assert verdict(b, better)["verdict"] == "improved"
    # significant but smaller than the practical threshold (the band): equivalent
    tiny = runs_frame({s: 1.83 + 0.001 * rng.standard_normal() for s in range(5)})
    assert verdict(b, tiny)["verdict"] == "equivalent"


def test_one_seed_uses_the_band_or_the_baselines_seed_spread():
    assert verdict(runs_frame({0: 1.8}), runs_frame({0: 1.85}))["verdict"] == "equivalent"  # band 0.3
    assert verdict(runs_frame({0: 1.8}), runs_frame({0: 2.2}))["verdict"] == "regressed"
    two_seed_base = runs_frame({0: 1.80, 1: 1.81})  # std 0.007 -> threshold 0.028
    r = verdict(two_seed_base, runs_frame({0: 1.85}))
    assert r["verdict"] == "regressed" and "seed std" in r["method"]


def test_status_changes_identity_and_one_sided_configs():
    b = runs_frame({0: 1.8})
    assert verdict(b, b)["verdict"] == "identical"
    worse = verdict(b, runs_frame({0: math.nan}, status="diverged_nonfinite"))
    assert worse["verdict"] == "status_changed" and worse["regression"]
    better = verdict(runs_frame({0: 3.0}, status="stalled"), b)
    assert better["verdict"] == "status_changed" and not better["regression"] and "update the baseline" in better["detail"]
    other = runs_frame({0: 1.8}, optimizer="sgd")
    t = compare.compare_reports(b, other).set_index("optimizer")
    assert t.loc["adamw", "verdict"] == "missing" and t.loc["sgd", "verdict"] == "new"
    skipped = runs_frame({0: math.nan}, status="error", status_reason="skipped: torchvision unavailable: x")
    assert verdict(b, skipped)["verdict"] == "skipped" and not verdict(b, skipped)["regression"]


def test_holm_keeps_chance_findings_among_many_configs_from_failing():
    rng = np.random.default_rng(1)
    frames_b, frames_c = [], []
    for k in range(60):  # 60 configs with no real change, 3 seeds each, tiny band so only p matters
        frames_b.append(runs_frame({s: 1.0 + 0.05 * rng.standard_normal() for s in range(3)}, optimizer=f"o{k}"))
        frames_c.append(runs_frame({s: 1.0 + 0.05 * rng.standard_normal() for s in range(3)}, optimizer=f"o{k}"))
    t = compare.compare_reports(pd.concat(frames_b), pd.concat(frames_c))
    assert not t["regression"].any()


def test_cost_flags_a_2x_slowdown():
    b = runs_frame({0: 1.8})
    c = runs_frame({0: 1.8}, steps_per_s=25.0)
    c["weights_sha256"] = "other"
    r = verdict(b, c)
    assert r["verdict"] == "equivalent" and r["cost"] == "slower" and r["slowdown"] == pytest.approx(2.4)


@pytest.mark.slow
def test_compare_a_report_with_itself_and_with_a_rerun(smoke_reports, tmp_path):
    (d0, _), (d2, _) = smoke_reports["0"], smoke_reports["2"]
    proc = diagnostics("compare", str(d0), str(d0), "--out", str(tmp_path / "self"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 configs: 4 identical" in proc.stdout and "torch" in proc.stdout
    assert set(pd.read_csv(tmp_path / "self" / "compare.csv")["verdict"]) == {"identical"}
    proc = diagnostics("compare", str(d0), str(d2), "--out", str(tmp_path / "rerun"))  # -n 0 vs -n 2 rerun
    assert proc.returncode == 0 and "REGRESSED" not in proc.stdout


@pytest.mark.slow
def test_injected_regressions_are_flagged_exactly(smoke_reports, tmp_path):
    d0, _ = smoke_reports["0"]
    cand = tmp_path / "cand"
    shutil.copytree(d0, cand, ignore=shutil.ignore_patterns("data"))
    runs = report.read(cand / "runs.csv")
    worse, flipped = "gpt-sgd-cosine-linear-cpu-fp32-s0", "resnet-adamw-cosine-linear-cpu-fp32-s0"
    runs.loc[runs.run_id == worse, "final_loss"] += 1.0
    runs.loc[runs.run_id == worse, "weights_sha256"] = "x"
    runs.loc[runs.run_id == flipped, ["status", "weights_sha256"]] = ["diverged_exploded", "y"]
    report.write_atomic(cand / "runs.csv", runs)
    proc = diagnostics("compare", str(d0), str(cand))
    assert proc.returncode == 1
    t = pd.read_csv(cand / "compare.csv").set_index("run_id")
    assert sorted(t.index[t["regression"]]) == sorted([worse, flipped])
    assert t.loc[worse, "verdict"] == "regressed" and t.loc[flipped, "verdict"] == "status_changed"
    assert (t.drop([worse, flipped])["verdict"] == "identical").all()


def test_compare_bad_input_is_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    proc = diagnostics("compare", str(tmp_path / "a"), str(tmp_path / "a"))
    assert proc.returncode == 2 and "no such file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "a" / "runs.csv").write_text("run_id,status\nx,converged\n")
    proc = diagnostics("compare", str(tmp_path / "a"), str(tmp_path / "a"))
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
        proc = diagnostics("run", "--grid", "smoke", "--steps", "20", "--devices", "cpu", "--shard", f"{i}/2",
                           "--report-dir", str(d), "--data-dir", str(d0 / "data"), "--quiet")
        assert proc.returncode == 0, proc.stdout[-2000:]
        shards.append(d)
    assert len(report.read(shards[0] / "runs.csv")) == 2
    proc = diagnostics("merge", *map(str, shards), "--out", str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr
    a, b = report.read(d0 / "runs.csv"), report.read(tmp_path / "merged" / "runs.csv")
    cols = ["run_id", "status", "final_loss", "weights_sha256"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    trace = ["run_id", "step", "loss", "grad_norm"]
    pd.testing.assert_frame_equal(report.read(d0 / "steps.csv")[trace], report.read(tmp_path / "merged" / "steps.csv")[trace])
    # refusals: duplicates, an existing report as --out, mixed schemas
    proc = diagnostics("merge", str(shards[0]), str(shards[0]), "--out", str(tmp_path / "dup"))
    assert proc.returncode == 2 and "appears in more than one report" in proc.stderr
    proc = diagnostics("merge", str(shards[0]), "--out", str(tmp_path / "merged"))
    assert proc.returncode == 2 and "already holds a report" in proc.stderr
    odd = tmp_path / "odd"
    shutil.copytree(shards[1], odd)
    report.write_atomic(odd / "runs.csv", report.read(odd / "runs.csv").assign(extra=1))  # one more column
    proc = diagnostics("merge", str(shards[0]), str(odd), "--out", str(tmp_path / "mixed"))
    assert proc.returncode == 2 and "mixed schemas" in proc.stderr
