"""Calibration (perturbations, measured tolerances, the envelope) and the baseline folder."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diagnostics import report
from diagnostics.judge import baseline, calibrate, stats
from diagnostics.judge.compare import CONFIG
from diagnostics.run import perturb
from tests import rows


def test_ulp_nudge_moves_every_nonzero_value_by_exactly_one_ulp():
    t = torch.tensor([1.0, -2.5, 0.0, 3e-3, 1e6])
    before = t.clone()
    perturb.nudge_ulp([t], seed=1)
    moved = t != before
    assert not moved[2] and moved[[0, 1, 3, 4]].all()  # zeros stay zero
    for x, y in zip(before.tolist(), t.tolist()):
        if x != 0:
            assert y == np.nextafter(np.float32(x), np.float32(math.inf if y > x else -math.inf))
    again = before.clone()
    perturb.nudge_ulp([again], seed=1)
    assert torch.equal(again, t)  # the same seed gives the same coins


def test_unknown_perturbation_is_one_line():
    with pytest.raises(ValueError, match="unknown perturbation 'x'; valid: threads2"):
        perturb.get("x")
    assert perturb.get(None) is None and perturb.get("none") is None
    assert set(perturb.DEFAULT) <= set(perturb.PERTURBATIONS)


def runs(values, status="converged", div=math.nan, acc=None):
    return rows.frame(dict(optimizer=f"o{i}", run_id=f"r{i}", seed=0, status=status, final_loss=v, val_loss=v,
                           val_metric=v if acc is None else acc, val_samples=1000, divergence_step=div,
                           val_metric_name="val_loss" if acc is None else "val_accuracy")
                      for i, v in enumerate(values))


def test_noise_is_the_pooled_spread_of_each_seeds_reference_and_reruns():
    ref = runs([2.0, 0.5])
    perturbed = {"a": runs([2.0 + 1e-4, 0.5 - 3e-3]), "b": runs([2.0 - 2e-4, 0.5 + 1e-3])}
    t = calibrate.tolerances(ref, perturbed, CONFIG).set_index("run_id")
    sigma, df = stats.pooled_noise([[2.0, 2.0 + 1e-4, 2.0 - 2e-4]])
    assert t.loc["r0", "final_loss_noise"] == pytest.approx(sigma) and t.loc["r0", "final_loss_df"] == df == 2
    assert t.loc["r0", "n_perturbations"] == 2 and t.loc["r0", "perturbations"] == "a,b"
    assert t.loc["r0", "perturbed_seeds"] == "0"


def test_every_perturbed_seed_adds_degrees_of_freedom():
    ref = pd.concat([runs([2.0]), runs([2.1]).assign(seed=1, run_id="r0b")])
    a = pd.concat([runs([2.0 + 1e-4]), runs([2.1 - 1e-4]).assign(seed=1, run_id="r0b")])
    t = calibrate.tolerances(ref, {"a": a}, CONFIG).iloc[0]
    assert t["final_loss_df"] == 2 and t["perturbed_seeds"] == "0,1" and t["run_id"] == "r0"
    assert t["final_loss_noise"] == pytest.approx(stats.pooled_noise([[2.0, 2.0001], [2.1, 2.0999]])[0])


def test_a_config_that_never_moved_keeps_a_floor_of_float32_ulps():
    t = calibrate.tolerances(runs([2.0]), {"a": runs([2.0])}, CONFIG).iloc[0]
    assert t["final_loss_noise"] == pytest.approx(calibrate.ULP_NOISE_FLOOR * 2.0) and t["final_loss_df"] == 1


def test_an_accuracy_never_has_less_noise_than_one_held_out_example():
    t = calibrate.tolerances(runs([1.0], acc=0.9), {"a": runs([1.0], acc=0.9)}, CONFIG).iloc[0]
    assert t["val_metric_noise"] == pytest.approx(1 / 1000)


def test_statuses_seen_and_flips_under_noise():
    ref = runs([2.0, 2.0])
    other = runs([2.0, 2.0])
    other.loc[1, "status"] = "stalled"
    t = calibrate.tolerances(ref, {"a": other, "b": ref.copy()}, CONFIG).set_index("run_id")
    assert t.loc["r0", "statuses_seen"] == "converged" and t.loc["r1", "statuses_seen"] == "converged,stalled"
    assert (t.loc["r1", "status_flips"], t.loc["r1", "status_runs"]) == (1, 2) and t.loc["r0", "status_flips"] == 0


def test_divergence_step_noise():
    t = calibrate.tolerances(runs([1e6], "diverged_nonfinite", 100), {"a": runs([1e6], "diverged_nonfinite", 103)},
                             CONFIG).iloc[0]
    assert t["divergence_step_noise"] == pytest.approx(3.0) and t["divergence_step_df"] == 1


def test_envelope_is_the_per_step_noise_not_a_running_maximum():
    ref = pd.DataFrame(dict(run_id="r0", step=[1, 2, 3, 4], loss=[3.0, 2.0, 1.5, 1.0]))
    a = ref.assign(loss=[3.0, 2.1, 1.5, 1.0])
    b = ref.assign(loss=[3.0, 2.0, 1.3, 1.0])
    env = calibrate.envelope(ref, {"a": a, "b": b}, runs([2.0]), CONFIG).set_index("step")
    assert env.loc[2, "loss_noise"] == pytest.approx(stats.pooled_noise([[2.0, 2.1, 2.0]])[0])
    assert env.loc[4, "loss_noise"] == pytest.approx(calibrate.ULP_NOISE_FLOOR)  # healed: back to the floor
    assert (env["loss_df"] == 2).all() and env["loss_reference"].tolist() == [3.0, 2.0, 1.5, 1.0]


def test_power_columns_state_what_a_config_can_see():
    ref = runs([2.0, 2.0])
    a = runs([2.0 + 1e-4, 2.0 + 0.1])
    t = calibrate.with_power(calibrate.tolerances(ref, {"a": a, "b": runs([2.0 - 1e-4, 2.0 - 0.1])}, CONFIG),
                             0.05, 0.01).set_index("run_id")
    assert t.loc["r0", "mde_1"] < 0.05 and t.loc["r0", "seeds_for_margin"] == 1
    assert t.loc["r1", "mde_1"] > 0.05 and t.loc["r1", "seeds_for_margin"] > 1


def base_runs(**changes):
    return runs([2.0]).assign(**{"status_reason": "", **changes})


def test_update_refuses_errors_and_skips_unless_forced(tmp_path):
    ok = base_runs()
    err = base_runs(status="error", status_reason="RuntimeError: boom [step]")
    skip = base_runs(status="skipped", status_reason="torchvision unavailable: x")
    for bad, word in ((err, "errored"), (skip, "skipped")):
        with pytest.raises(baseline.BaselineRefused, match=f"1 run\\(s\\) errored or were skipped.*{word}.*--force"):
            baseline.update(tmp_path, pd.concat([ok, bad.assign(run_id="r9")]))
        assert not (tmp_path / "runs.csv").exists()  # nothing written
    line = baseline.update(tmp_path, pd.concat([ok, err.assign(run_id="r9")]), force=True)
    assert "2 runs" in line and len(report.read_csv(tmp_path / "runs.csv")) == 2


def test_update_replaces_rows_of_the_same_key_and_keeps_others(tmp_path):
    baseline.update(tmp_path, pd.concat([base_runs(run_id="a"), base_runs(run_id="b")]))
    baseline.update(tmp_path, pd.concat([base_runs(run_id="b", final_loss=9.0), base_runs(run_id="c", final_loss=9.0)]))
    merged = report.read_csv(tmp_path / "runs.csv")
    assert dict(zip(merged.run_id, merged.final_loss)) == {"a": 2.0, "b": 9.0, "c": 9.0}


def test_baseline_is_found_from_the_package_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert baseline.root() == baseline.CHECKOUT / "reports" / "baselines"
    assert (baseline.directory("default") / "runs.csv").is_file()
    assert baseline.directory("default", str(tmp_path / "x" / "runs.csv")) == tmp_path / "x"


def test_committed_default_baseline_is_calibrated():
    b = baseline.Baseline.load(baseline.directory("default"))
    assert b.exists and len(b.tolerances) == 60
    tol = pd.read_csv(baseline.directory("default") / calibrate.TOLERANCES)
    assert (tol["n_perturbations"] == len(perturb.DEFAULT)).all() and (tol["final_loss_noise"] > 0).all()
    assert (tol["final_loss_df"] >= 2 * len(perturb.DEFAULT)).all() and tol["seeds_for_margin"].notna().any()
    assert (baseline.directory("default") / "seeds.csv").is_file()


def test_repeats_measure_nondeterministic_kernels_off_the_cpu_only():
    assert perturb.default_for(("cpu",)) == perturb.DEFAULT
    assert perturb.default_for(("cpu", "cuda")) == perturb.DEFAULT + perturb.REPEATS
    repeat = perturb.PERTURBATIONS["repeat1"]
    assert (repeat.threads, repeat.ulp_seed, repeat.grad_seed, repeat.forward_seed) == (None,) * 4  # the run again


@pytest.mark.slow
def test_calibrate_command_writes_tolerances_and_resumes(tmp_path):
    from tests.conftest import cli

    args = ["calibrate", "--grid", "smoke", "--steps", "8", "--devices", "cpu", "--perturbations", "threads2,grad1",
            "--baseline", str(tmp_path / "b"), "--work-dir", str(tmp_path / "w"), "--data-dir", str(tmp_path / "data"),
            "-n", "0"]
    first = cli(*args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    tol = report.read(tmp_path / "b" / calibrate.TOLERANCES, required=["run_id"])
    assert len(tol) == 4 and (tol["perturbations"] == "threads2,grad1").all()
    assert (tmp_path / "b" / "runs.csv").exists() and (tmp_path / "b" / calibrate.ENVELOPE).exists()
    again = cli(*args, "--resume")
    assert again.returncode == 0 and again.stdout.count("reusing the complete session") == 3
    bad = cli(*args[:7], "--perturbations", "shake")
    assert bad.returncode == 2 and "valid names are" in bad.stderr


def test_a_calibration_of_some_configs_extends_the_noise_and_never_drops_the_others(tmp_path):
    def tol(run_ids, layouts, precisions):
        rows = [dict({c: report.AXIS_DEFAULTS.get(c, "x") for c in CONFIG}, model="gpt", layout=lay, precision=p,
                     run_id=r) for r, lay, p in zip(run_ids, layouts, precisions)]
        return pd.DataFrame(rows)

    # written before the layout and context axes existed: it reads them as full and 0
    tol(["a", "b"], ["full", "full"], ["fp32", "bf16"]).drop(columns=["layout", "context"]).to_csv(
        tmp_path / calibrate.TOLERANCES, index=False)
    pd.DataFrame(dict(run_id=["a", "b"], step=[1, 1])).to_csv(tmp_path / calibrate.ENVELOPE, index=False)
    new = tol(["a2", "c"], ["full", "packed"], ["fp32", "fp32"])  # a2: a's config measured again
    calibrate.write(tmp_path, tmp_path, new, pd.DataFrame(dict(run_id=["a2", "c"], step=[1, 1])))
    got = report.read_csv(tmp_path / calibrate.TOLERANCES)
    assert sorted(got["run_id"]) == ["a2", "b", "c"]  # a replaced by its own config's new row, b kept, c added
    assert sorted(report.read_csv(tmp_path / calibrate.ENVELOPE)["run_id"]) == ["a", "a2", "b", "c"]


@pytest.mark.parametrize("statuses, trained", [(["converged", "converged"], []),
                                               (["converged", "error"], ["reference"])])
def test_resume_reuses_a_complete_session_but_trains_a_failed_one_again(tmp_path, statuses, trained):
    """A session with every row, none an error, is reused; one whose runs errored (it failed) is
    trained again, never kept as noise (an error would read as a status the config flips to)."""
    import sys

    from diagnostics.grid.spec import Grid

    grid = Grid("g", "convergence", models=("gpt",), optimizers=("sgd",), schedulers=("cosine",), warmups=("linear",),
                seeds=(0, 1), devices=("cpu",))
    (tmp_path / "reference").mkdir()
    pd.DataFrame(dict(run_id=["a-s0", "a-s1"], status=statuses)).to_csv(tmp_path / "reference" / report.RUNS, index=False)
    ran = []

    def command(name, changes, extra):
        ran.append(name)
        return [sys.executable, "-c", "pass"]

    calibrate.run_sessions(grid, [], tmp_path, 2, True, command)
    assert ran == trained
