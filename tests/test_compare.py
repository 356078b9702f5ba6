"""The verdict of one config against its baseline: each rule of compare.py shown firing and not
firing, on reports built by hand (seeds, noise, statuses, pairing)."""

import math

import numpy as np
import pandas as pd
import pytest

from diagnostics import report
from diagnostics.judge import compare, verdicts
from diagnostics.judge.verdicts import Policy
from tests import rows

GPT = dict(model="gpt", optimizer="adamw", scheduler="cosine", warmup="none")
RESNET = dict(model="resnet", optimizer="sgd", scheduler="step", warmup="none")


def runs(values, status="converged", val=None, acc=None, **cfg):
    """One config's runs.csv rows: ``values`` {seed: final loss}; the held-out loss follows the
    final loss unless ``val`` {seed: value} says otherwise; ``acc`` {seed: accuracy} for images."""
    cfg = {**GPT, **cfg}
    base = dict(cfg, device="cpu", precision="fp32", lr_scale=1.0, steps=200, model_size="tiny", status_reason="",
                initial_loss=3.5, loss_floor=0.0, steps_per_s=60.0, peak_rss_mb=800.0, peak_device_mem_mb=math.nan,
                divergence_step=math.nan, data_sha256="d" * 64, init_sha256=math.nan)
    out = []
    for s, v in values.items():
        st = status[s] if isinstance(status, dict) else status
        a = None if acc is None else acc[s]
        out.append(dict(base, run_id=f"{cfg['model']}-{cfg['optimizer']}-s{s}", seed=s, status=st, final_loss=v,
                         val_loss=v if val is None else val[s], val_metric=(v if val is None else val[s]) if a is None else a,
                         val_metric_name="val_loss" if a is None else "val_accuracy", weights_sha256=f"w{v!r}{st}"))
    return rows.frame(out)


def noise(b, final=1e-7, val=None, metric=None, df=10, seen="converged", flips=0, flip_runs=10, div=math.nan):
    """A tolerances.csv row for the config of ``b``: the sd of a paired difference per value."""
    row = report.with_axis_defaults(b.iloc[:1])[compare.CONFIG].iloc[0].to_dict()
    val = final if val is None else val
    row.update(run_id=b["run_id"].iloc[0], statuses_seen=seen, status_flips=flips, status_runs=flip_runs,
               final_loss_noise=final, final_loss_df=df, val_loss_noise=val, val_loss_df=df,
               val_metric_noise=val if metric is None else metric, val_metric_df=df,
               divergence_step_noise=div, divergence_step_df=df if np.isfinite(div) else 0,
               final_loss_reference=float(b["final_loss"].mean()))
    return pd.DataFrame([row])


def judge(b, c, tol=None, **kw):
    return compare.compare_reports(b, c, tolerances=tol, **kw).iloc[0]


SEEDS5 = {s: 2.0 + 0.01 * s for s in range(5)}


def scaled(values, factor):
    return {s: v * factor for s, v in values.items()}


def test_identical_needs_every_seed_with_the_same_weights():
    b = runs(SEEDS5)
    assert judge(b, b)["verdict"] == "identical"
    one = judge(b, b[b.seed == 0])  # seed 0 of a 5-seed baseline
    assert one["verdict"] == "missing" and one["seeds_missing"] == "1,2,3,4" and "allow-missing" in one["failure"]
    assert judge(b, b[b.seed == 0], policy=Policy(allow_missing=True))["failure"] == ""


def test_chaotic_noise_does_not_hide_a_doubled_loss_and_more_seeds_see_more():
    """ResNet-SGD: rounding moves the loss by ~10%; a doubled loss on 5 seeds is found, a 2%
    shift is not, and the stated detectable effect shrinks with seeds."""
    vals = {s: 0.05 + 0.002 * s for s in range(5)}
    b = runs(vals, **RESNET, acc={s: 0.9 for s in range(5)})
    tol = noise(b, final=0.005, metric=0.02)
    doubled = runs(scaled(vals, 2.0), **RESNET, acc={s: 0.9 for s in range(5)})
    v = judge(b, doubled, tol)
    assert v["verdict"] == "regressed" and v["failure"] == "regression"
    rng = np.random.default_rng(0)
    small = runs({s: x * (1.02 + 0.05 * rng.standard_normal()) for s, x in vals.items()}, **RESNET,
                 acc={s: 0.9 for s in range(5)})
    assert judge(b, small, tol)["verdict"] == "equivalent"
    mde5 = judge(b, small, tol)["mde"]
    mde1 = judge(b[b.seed == 0], small[small.seed == 0], tol)["mde"]
    assert 0 < mde5 < mde1


def test_one_seed_and_several_judge_alike():
    b = runs(SEEDS5)
    tol = noise(b)
    for n in (1, 2, 5):
        keep = lambda df, n=n: df[df.seed < n]  # noqa: E731
        assert judge(keep(b), keep(runs(scaled(SEEDS5, 1.10))), tol)["verdict"] == "regressed", n
        assert judge(keep(b), keep(runs(scaled(SEEDS5, 1.0 + 1e-8))), tol)["verdict"] == "equivalent", n


def test_one_seed_far_outside_the_noise_is_not_averaged_away():
    b = runs(SEEDS5)
    tol = noise(b)
    one_bad = runs({**SEEDS5, 4: SEEDS5[4] * 1.5})
    v = judge(b, one_bad, tol)
    assert v["verdict"] == "regressed" and "seed 4" in v["detail"]
    within = runs({**SEEDS5, 4: SEEDS5[4] + 2e-7})  # 2 noise sds on one seed
    assert judge(b, within, tol)["verdict"] == "equivalent"


def test_each_value_is_judged_on_its_own_evidence():
    """A tiny, consistent final-loss shift (beyond noise, within the margin) beside a noisy
    held-out accuracy that moved by chance: changed, not regressed."""
    acc = {s: 0.90 for s in range(5)}
    b = runs(SEEDS5, **RESNET, acc=acc)
    tol = noise(b, final=1e-6, val=1e-2, metric=0.05)
    c = runs(scaled(SEEDS5, 1.001), **RESNET, acc={s: a - 0.06 for s, a in acc.items()}, val=SEEDS5)
    v = judge(b, c, tol)
    assert v["verdict"] == "changed" and "final_loss" in v["detail"] and "val_metric" not in v["detail"]


def test_accuracy_direction_comes_from_the_model_registry():
    acc = {0: 0.9}
    b = runs({0: 1.0}, **RESNET, acc=acc).drop(columns="val_metric_name")
    worse = runs({0: 1.0}, **RESNET, acc={0: 0.7}).drop(columns="val_metric_name")
    better = runs({0: 1.0}, **RESNET, acc={0: 0.99}).drop(columns="val_metric_name")
    worse["weights_sha256"] = better["weights_sha256"] = "other"
    tol = noise(b, final=1e-6, metric=0.01)
    assert judge(b, worse, tol)["verdict"] == "regressed"
    assert judge(b, better, tol)["verdict"] == "improved"


def test_empty_values_are_missing_not_changed():
    b = runs(SEEDS5)
    nan = runs({s: math.nan for s in SEEDS5})
    v = judge(b, nan, noise(b))
    assert v["verdict"] == "missing" and "empty values" in v["detail"] and v["failure"]
    half = runs({**SEEDS5, 2: math.nan})
    assert judge(b, half, noise(b))["verdict"] == "missing"


def test_a_change_on_the_paired_seeds_is_reported_and_missing_seeds_still_fail():
    b = runs(SEEDS5)
    better = runs(scaled(SEEDS5, 0.8))[lambda df: df.seed < 2]
    v = judge(b, better, noise(b), policy=Policy(allow_improved=True))
    assert v["verdict"] == "improved" and v["seeds_missing"] == "2,3,4" and "allow-missing" in v["failure"]
    assert judge(b, better, noise(b), policy=Policy(allow_improved=True, allow_missing=True))["failure"] == ""


def test_a_skipped_seed_is_reported_and_the_rest_still_judged():
    b = runs(SEEDS5)
    c = runs(scaled(SEEDS5, 1.5))
    c.loc[c.seed == 0, ["status", "status_reason"]] = ["skipped", "torchvision unavailable: x"]
    v = judge(b, c, noise(b))
    assert v["verdict"] == "regressed" and v["seeds_skipped"] == "0" and "seeds 0 skipped" in v["detail"]
    all_skipped = c.assign(status="skipped", status_reason="no GPU")
    v = judge(b, all_skipped, noise(b))
    assert v["verdict"] == "skipped" and v["failure"] == ""


def test_statuses_are_compared_seed_by_seed():
    status_b = {s: "diverged_nonfinite" if s == 0 else "converged" for s in range(5)}
    b = runs(SEEDS5, status=status_b)
    c = runs(SEEDS5, status="diverged_nonfinite")
    v = judge(b, c, noise(b, seen="converged,diverged_nonfinite"))  # noise never flipped a seed (0 of 10)
    assert v["verdict"] == "status_changed" and v["direction"] == "worse"
    assert judge(b, b, noise(b))["verdict"] == "identical"


def test_flips_that_noise_makes_are_tested_against_the_calibrated_rate():
    b = runs(SEEDS5, status="stalled")
    tol = noise(b, seen="converged,stalled", flips=1, flip_runs=10, final=0.05)
    one = runs(SEEDS5, status={s: "converged" if s == 0 else "stalled" for s in range(5)})
    assert judge(b, one, tol)["verdict"] == "equivalent"
    every = runs(SEEDS5, status="converged")
    v = judge(b, every, tol)
    assert v["verdict"] == "status_changed" and v["direction"] == "better"
    never = noise(b, seen="stalled", final=0.05)  # a threshold status calibration never saw: still a rate
    assert judge(b, one, never)["verdict"] == "equivalent"
    assert judge(b, every, never)["verdict"] == "status_changed"
    one_nan = runs(SEEDS5, status={s: "diverged_nonfinite" if s == 0 else "stalled" for s in range(5)})
    assert judge(b, one_nan, never)["verdict"] == "status_changed"  # a divergence noise never produced


def test_a_threshold_flip_keeps_its_values_judged():
    # stall line of initial 3.5, floor 0: 3.5 - 0.2 * 3.5 = 2.8 (detect.Thresholds.stall_min_progress)
    b = runs({0: 2.79}, status="converged")
    near = runs({0: 2.81}, status="stalled")
    far = runs({0: 3.3}, status="stalled")
    tol = noise(b, final=0.01)
    assert judge(b, near, tol)["verdict"] == "equivalent"
    assert judge(b, far, tol)["verdict"] == "regressed"  # +18% final loss, whatever the status says


def test_diverged_runs_are_judged_on_when_they_diverged():
    b = runs({0: math.nan}, status="diverged_nonfinite").assign(divergence_step=100.0)
    later = b.assign(divergence_step=103.0, weights_sha256="x")
    much_earlier = b.assign(divergence_step=50.0, weights_sha256="x")
    tol = noise(b, div=2.0)
    assert judge(b, later, tol)["verdict"] == "equivalent"
    v = judge(b, much_earlier, tol)
    assert v["verdict"] == "regressed" and "divergence_step" in v["detail"]


def test_errors_on_both_sides_judge_nothing():
    b = runs(SEEDS5, status="error").assign(final_loss=math.nan, val_loss=math.nan, val_metric=math.nan,
                                             weights_sha256=math.nan, status_reason="RuntimeError: x")
    v = judge(b, b, noise(runs(SEEDS5)))
    assert v["verdict"] == "unjudged" and v["failure"] == "nothing could be judged"
    assert compare.failures(compare.compare_reports(b, b))[-1].startswith("nothing was judged")


def test_pairs_are_checked_other_data_or_weights_have_no_baseline():
    b = runs(SEEDS5)
    other_data = runs(SEEDS5).assign(data_sha256="e" * 64)
    v = judge(b, other_data, noise(b))
    assert v["verdict"] == "new" and "data_sha256" in v["detail"] and "allow-no-baseline" in v["failure"]
    other_init = b.assign(init_sha256="a" * 64), runs(SEEDS5).assign(init_sha256="b" * 64)
    assert judge(*other_init, noise(b))["verdict"] == "new"
    same_init = b.assign(init_sha256="a" * 64), runs(SEEDS5).assign(init_sha256="a" * 64)
    assert judge(*same_init, noise(b))["verdict"] == "identical"
    one_side = b.assign(init_sha256="a" * 64), runs(SEEDS5)  # recorded on one side only: paired by seed
    assert judge(*one_side, noise(b))["verdict"] == "identical"


def test_candidate_seeds_without_a_baseline_partner_are_new():
    b = runs({0: 2.0})
    c = runs({0: 2.0, 1: 2.1})
    v = judge(b, c)
    assert v["verdict"] == "new" and v["seeds_new"] == "1"


def test_a_report_holding_a_run_twice_is_bad_input():
    b = runs(SEEDS5)
    with pytest.raises(report.ReportError, match="2 times"):
        compare.compare_reports(b, pd.concat([b, b.iloc[:1]]))


def test_without_calibrated_noise_or_enough_paired_seeds_a_difference_is_unjudged_never_beyond_noise():
    b = runs({0: 2.0})
    v = judge(b, runs({0: 2.6}))  # +30% on one seed
    assert v["verdict"] == "unjudged" and math.isnan(v["mde"]) and v["noise_source"] == compare.NO_NOISE
    assert "2 more paired seeds, or calibrate" in v["detail"] and "final_loss +30.00%" in v["detail"]
    assert verdicts.Policy().failure(v)  # a check that checked nothing fails
    two = runs({0: 2.0, 1: 2.1})
    assert "1 more paired seed, or calibrate" in judge(two, runs({0: 2.2, 1: 2.3}))["detail"]
    assert judge(b, runs({0: 2.0}))["verdict"] in ("identical", "equivalent")  # no difference: nothing unjudged


def test_paired_seeds_are_the_noise_where_none_was_calibrated():
    """5 seeds a side, no tolerances: a 5% shift is found on every shifted config and a
    rounding-sized change (each seed's difference one draw of the run-to-run noise) flags none,
    over 30 configs x 10 simulated comparisons of each; calibrated configs keep their own noise."""
    rng = np.random.default_rng(1)
    configs, reps, spread = 30, 10, 2e-3  # a gpt's final loss moves ~0.1% seed to seed under rounding
    b = pd.concat([runs({s: 2.0 + 0.1 * rng.standard_normal() for s in range(5)}, optimizer=f"o{k}")
                   for k in range(configs)], ignore_index=True)
    alarms, found = 0, []
    for _ in range(reps):
        c = b.copy()
        for col in ("final_loss", "val_loss"):
            c[col] = b[col] + spread * rng.standard_normal(len(b))
        c["val_metric"], c["weights_sha256"] = c["val_loss"], "x"
        table = compare.compare_reports(b, c)
        assert set(table["noise_source"]) == {compare.PAIRED_SEEDS} and table["mde"].notna().all()
        alarms += table["verdict"].isin(verdicts.BEYOND_NOISE).any()
        shifted = c.copy()
        first6 = shifted["optimizer"].isin([f"o{k}" for k in range(6)])
        shifted.loc[first6, "final_loss"] *= 1.05
        verdict = compare.compare_reports(b, shifted).set_index("optimizer")["verdict"]
        found.append(verdict[[f"o{k}" for k in range(6)]].isin(verdicts.BEYOND_NOISE).sum())
        alarms += verdict[[f"o{k}" for k in range(6, configs)]].isin(verdicts.BEYOND_NOISE).any()
    assert alarms / (2 * reps) <= 3 * verdicts.ALPHA and min(found) == 6
    tol = noise(b[b["optimizer"] == "o0"], final=1e-7)  # one config calibrated: judged with its calibration
    table = compare.compare_reports(b, b.assign(weights_sha256="x"), tolerances=tol)
    assert table.set_index("optimizer").loc["o0", "noise_source"] == compare.CALIBRATED
    line = compare.noise_line(table, tol)
    assert line.startswith("1 config calibrated (tolerances.csv: 1 configs), 29 configs by their paired seeds")


def test_family_wise_error_over_many_configs():
    """60 configs x 5 seeds whose candidate differs only by noise of the calibrated size: across
    100 simulated comparisons the share with any flag stays near ALPHA."""
    rng = np.random.default_rng(0)
    sigma, configs, reps = 1e-3, 60, 100
    frames_b, frames_t = [], []
    for k in range(configs):
        b = runs({s: 2.0 + 0.1 * rng.standard_normal() for s in range(5)}, optimizer=f"o{k}")
        frames_b.append(b)
        frames_t.append(noise(b, final=sigma))
    b, tol = pd.concat(frames_b, ignore_index=True), pd.concat(frames_t, ignore_index=True)
    alarms = 0
    for _ in range(reps):
        c = b.copy()
        for col in ("final_loss", "val_loss"):
            c[col] = b[col] + sigma * rng.standard_normal(len(b))
        c["val_metric"] = c["val_loss"]
        c["weights_sha256"] = "x"
        alarms += compare.compare_reports(b, c, tolerances=tol)["verdict"].isin(verdicts.BEYOND_NOISE).any()
    assert alarms / reps <= 3 * verdicts.ALPHA


def test_the_curve_is_judged_step_by_step_and_a_spike_does_not_blind_it():
    from diagnostics.judge import calibrate

    steps = np.arange(1, 101)
    ref = pd.DataFrame(dict(run_id="gpt-adamw-s0", step=steps, loss=3.0 - steps / 100))
    rng = np.random.default_rng(1)
    perturbed = {}
    for k in range(5):
        loss = ref["loss"] + 1e-4 * rng.standard_normal(100)
        if k == 0:
            loss = loss + np.where(steps == 7, 0.5, 0.0)  # one spike in one perturbed run
        perturbed[f"p{k}"] = ref.assign(loss=loss)
    b = runs({0: 2.0})
    env = calibrate.envelope(ref, perturbed, b, compare.CONFIG)
    assert env.set_index("step").loc[7, "loss_noise"] > 0.1 and env.set_index("step").loc[30, "loss_noise"] < 1e-3
    tol = noise(b, final=1e-3)
    c = b.assign(weights_sha256="x")
    shifted = ref.assign(loss=ref["loss"] * np.where(steps >= 30, 1.06, 1.0))  # 6% worse from step 30
    v = compare.compare_reports(b, c, None, shifted, tolerances=tol, envelope=env).iloc[0]
    assert v["verdict"] == "regressed" and v["curve_exit_step"] == 30 and "curve" in v["detail"]
    wobble = ref.assign(loss=ref["loss"] + 1e-4 * rng.standard_normal(100))
    assert compare.compare_reports(b, c, None, wobble, tolerances=tol, envelope=env).iloc[0]["verdict"] == "equivalent"


def test_check_run_is_the_same_test_for_one_run():
    b = runs({0: 2.0})
    tol = noise(b).iloc[0].to_dict()
    base = b.iloc[0].to_dict()
    assert compare.check_run(base, base, tol)["verdict"] == "identical"
    assert compare.check_run(dict(base, final_loss=2.2, weights_sha256="x"), base, tol)["verdict"] == "regressed"
    assert compare.check_run(dict(base, final_loss=2.0 + 1e-7, weights_sha256="x"), base, tol,
                             runs_judged=60)["verdict"] == "equivalent"
    assert compare.check_run(base, None)["verdict"] == "new"


@pytest.mark.parametrize("verdict_row, policy, fails", [
    (dict(verdict="regressed"), Policy(), True),
    (dict(verdict="status_changed", direction="worse"), Policy(allow_improved=True), True),
    (dict(verdict="improved", direction="better"), Policy(), True),
    (dict(verdict="improved", direction="better"), Policy(allow_improved=True), False),
    (dict(verdict="missing"), Policy(), True),
    (dict(verdict="missing"), Policy(allow_missing=True), False),
    (dict(verdict="new"), Policy(), True),
    (dict(verdict="new"), Policy(allow_no_baseline=True), False),
    (dict(verdict="unjudged"), Policy(allow_missing=True, allow_no_baseline=True, allow_improved=True), True),
    (dict(verdict="changed"), Policy(), False),
    (dict(verdict="changed"), Policy(fail_on_change=True), True),
    (dict(verdict="equivalent"), Policy(fail_on_change=True), False),
    (dict(verdict="skipped"), Policy(), False),
])
def test_policy_fails_every_hollow_or_bad_verdict(verdict_row, policy, fails):
    assert (policy.failure(verdict_row) is not None) == fails


def test_same_environment_is_a_control():
    b = runs({0: 2.0}).assign(torch_version="2.14.1", platform="x", cpu_model="y")
    assert compare.same_environment(b, b)
    assert not compare.same_environment(b, b.assign(torch_version="2.15.0"))


def lm_runs(acc, name="val_token_accuracy"):
    b = runs({0: 2.0}, acc={0: acc})
    b["val_metric_name"] = name
    return b


def test_an_lm_is_judged_on_its_next_token_accuracy_where_both_sides_measured_it():
    b = lm_runs(0.40)
    tol = noise(b, final=1e-6, metric=0.005)
    worse = lm_runs(0.30)
    worse["weights_sha256"] = "other"
    v = judge(b, worse, tol)
    assert v["verdict"] == "regressed" and "val_metric" in v["detail"]
    same = lm_runs(0.40)
    same["weights_sha256"] = "other"
    assert judge(b, same, tol)["verdict"] != "regressed"


def test_an_lm_report_whose_metric_was_the_loss_again_is_not_judged_on_it():
    """A baseline written when an LM's val_metric was its loss: nothing to compare an accuracy with."""
    b = lm_runs(2.0, name=compare.LOSS_AS_METRIC)
    c = lm_runs(0.30)
    c["weights_sha256"] = "other"
    tol = noise(b, final=1e-6, metric=0.005)
    v = judge(b, c, tol)
    assert "val_metric" not in v["detail"] and v["verdict"] in ("equivalent", "identical", "changed")
    assert compare.judged_values({"val_token_accuracy", compare.LOSS_AS_METRIC}) == [("final_loss", 1), ("val_loss", 1)]
    assert ("val_metric", -1) in compare.judged_values({"val_token_accuracy"})


def test_a_config_s_own_calibrated_tail_decides_how_far_one_seed_may_land():
    from diagnostics.judge import stats

    rng = np.random.default_rng(0)
    calm = [list(2.0 + 1e-3 * rng.standard_normal(6)) for _ in range(2)]  # 2 seeds x (reference + 5 reruns)
    sd, df = stats.pooled_noise(calm)
    assert stats.tail_of(calm) < stats.LIGHT_TAIL and stats.single_df(df, stats.tail_of(calm)) == df
    wild = [calm[0], calm[1][:-1] + [2.0 + 0.05]]  # one rerun 50 run-sigmas out
    assert stats.tail_of(wild) > stats.LIGHT_TAIL
    assert stats.single_df(df, math.nan) == stats.SINGLE_TAIL_DF  # no tail measured: as cautious as a heavy one
    # runs that agree to their last bits (a gpt's calibration) are no tail against the floored noise they are
    # judged with; measured against their own sub-ulp spread, one rerun a few ulps off would look far out
    ulps = [[2.0, 2.0, 2.0, 2.0, 2.0, 2.0 + 2 * 2.0**-22], [2.0] * 6]
    assert not stats.tail_of(ulps) < stats.LIGHT_TAIL  # NaN (no spread left) or far: heavy
    assert stats.tail_of(ulps, floor=4 * 2.0**-23 * 2.0) < stats.LIGHT_TAIL
    # one seed, a systematic 12-sigma shift on 60 configs: beyond noise with a light tail, not under t(3)
    b = pd.concat([runs({0: 2.0 + 0.1 * k}, optimizer=f"o{k}").assign(run_id=f"r{k}") for k in range(60)],
                  ignore_index=True)
    tol = pd.concat([noise(b[b["optimizer"] == f"o{k}"], final=1e-3) for k in range(60)], ignore_index=True)
    c = b.assign(final_loss=b["final_loss"] + 12e-3, val_loss=b["val_loss"] + 12e-3, weights_sha256="x")
    c["val_metric"] = c["val_loss"]
    heavy = compare.compare_reports(b, c, tolerances=tol)
    assert set(heavy["verdict"]) == {"equivalent"}  # the committed baselines' tolerances have no tail: as before
    light = tol.assign(final_loss_tail=2.0, val_loss_tail=2.0, val_metric_tail=2.0)
    assert compare.compare_reports(b, c, tolerances=light)["verdict"].isin(verdicts.BEYOND_NOISE).all()
    assert compare.compare_reports(b, c, tolerances=light.assign(final_loss_tail=19.0, val_loss_tail=19.0,
                                                                 val_metric_tail=19.0))["verdict"].eq("equivalent").all()
    # a rounding change under one seed (each difference one draw of the noise) flags nothing, light tail or not
    alarms = 0
    for _ in range(10):
        r = b.assign(final_loss=b["final_loss"] + 1e-3 * rng.standard_normal(60), weights_sha256="x")
        r["val_loss"] = r["val_metric"] = b["val_loss"] + 1e-3 * rng.standard_normal(60)
        alarms += compare.compare_reports(b, r, tolerances=light)["verdict"].isin(verdicts.BEYOND_NOISE).any()
    assert alarms == 0


def test_configs_that_share_a_path_and_moved_together_are_a_finding_of_the_comparison():
    rng = np.random.default_rng(2)
    b = pd.concat([runs({0: 2.0 + 0.1 * k}, optimizer="adamw" if k < 10 else "sgd", scheduler=f"s{k}").assign(
        run_id=f"r{k}") for k in range(20)], ignore_index=True)
    tol = pd.concat([noise(b.iloc[[k]], final=1e-3) for k in range(20)], ignore_index=True)
    moved = b.assign(weights_sha256="x")
    moved["final_loss"] = b["final_loss"] + np.where(b["optimizer"] == "adamw", 4e-3, 0) + 1e-3 * rng.standard_normal(20)
    table = compare.compare_reports(b, moved, tolerances=tol)
    assert not table["verdict"].isin(verdicts.BEYOND_NOISE).any()  # 4 sigmas: no single seed is beyond t(3)
    lines = table.attrs["together"]
    assert any(line.startswith("optimizer=adamw: 10 configs moved together, 10 of 10 up (worse)") for line in lines)
    assert not any(line.startswith("optimizer=sgd") for line in lines)  # the path that did not move
    rounding = b.assign(final_loss=b["final_loss"] + 1e-3 * rng.standard_normal(20), weights_sha256="x")
    assert compare.compare_reports(b, rounding, tolerances=tol).attrs["together"] == []


@pytest.mark.parametrize("fraction, shown", [(2.8347e-06, "0.00028%"), (0.0012345, "0.12%"), (0.05, "5%"),
                                             (0.1234, "12%")])
def test_an_mde_is_shown_to_two_significant_digits(fraction, shown):
    from diagnostics.judge.compare import percent

    assert percent(fraction) == shown
