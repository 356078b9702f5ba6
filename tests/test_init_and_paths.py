"""A changed seeded init is reported on its own; gradient clipping and accumulation are real paths;
release verdicts say which noise they rest on."""

import pandas as pd
import pytest
import torch

from diagnostics import release
from diagnostics.grid.spec import RunSpec, SpecError, parse_accumulations, parse_clips
from diagnostics.judge import compare, pairing, verdicts
from diagnostics.judge.verdicts import Policy
from diagnostics.release import questions
from diagnostics.run import checkpoint, train


def spec(model="resnet", steps=6, **kw):
    return RunSpec(model=model, optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=steps, **kw)


def frame(result) -> pd.DataFrame:
    return pd.DataFrame([result.row])


@pytest.mark.slow
def test_a_changed_seeded_init_trains_from_the_baselines_weights_and_fails_on_its_own(data_dir, tmp_path,
                                                                                      monkeypatch):
    seeds = tmp_path / "init"
    base = train.run(spec(), data_dir, init_dir=seeds)  # the baseline writes its seed checkpoints
    original = torch.nn.init.kaiming_normal_

    def scaled(tensor, *args, **kw):  # "a torch whose conv init differs"
        with torch.no_grad():
            return original(tensor, *args, **kw).mul_(1.5)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", scaled)
    read_only = checkpoint.SeedCheckpoints(seeds, write=False)
    cand = train.run(spec(), data_dir, init_dir=read_only)
    assert cand.row["init_sha256"] == base.row["init_sha256"]  # trained from the baseline's weights
    assert cand.row["seeded_init_sha256"] != base.row["seeded_init_sha256"]
    table = compare.compare_reports(frame(base), frame(cand))
    r = table.iloc[0].to_dict()
    assert r["verdict"] == "identical" and r["init_verdict"] == verdicts.INIT_CHANGED  # the training kept its bits
    assert r["failure"].startswith("init_changed") and r["detail"].startswith("seeded init of seeds 0")
    elsewhere = train.run(spec(), data_dir)  # no seed checkpoint: torch's own (changed) init
    r = compare.compare_reports(frame(base), frame(elsewhere)).iloc[0].to_dict()
    assert r["init_verdict"] == verdicts.INIT_CHANGED and r["verdict"] in ("new", "missing") and r["failure"]
    monkeypatch.undo()
    same = train.run(spec(), data_dir, init_dir=read_only)
    r = compare.compare_reports(frame(base), frame(same)).iloc[0].to_dict()
    assert r["verdict"] == "identical" and r["init_verdict"] == verdicts.INIT_SAME and not r["failure"]
    assert sorted(p.name for p in seeds.iterdir()) == ["resnet-tiny-s0.pt"]  # read-only: nothing added
    train.run(spec(seed=3), data_dir, init_dir=read_only)
    assert sorted(p.name for p in seeds.iterdir()) == ["resnet-tiny-s0.pt"]


def test_a_baseline_row_from_before_the_seeded_hash_is_judged_by_its_init():
    b = [dict(seed=0, init_sha256="aa")]
    assert pairing.init_verdict(b, [dict(seed=0, init_sha256="zz", seeded_init_sha256="aa")])[0] == \
        verdicts.INIT_SAME
    assert pairing.init_verdict(b, [dict(seed=0, seeded_init_sha256="bb")])[0] == verdicts.INIT_CHANGED
    assert pairing.init_verdict(b, [dict(seed=1, seeded_init_sha256="bb")])[0] == ""  # no common seed
    assert Policy().failure(dict(verdict="identical", init_verdict=verdicts.INIT_CHANGED))


@pytest.mark.slow
def test_clipping_bounds_the_update_and_keeps_the_recorded_norm_the_unclipped_one(data_dir):
    free, clipped = (train.run(spec("gpt", clip=c), data_dir) for c in ("none", "0.001"))
    assert clipped.row["run_id"].endswith("-clip0.001-s0")
    assert clipped.steps[0]["grad_norm"] == free.steps[0]["grad_norm"]  # before clipping, as documented
    assert clipped.row["weights_sha256"] != free.row["weights_sha256"]
    loose = train.run(spec("gpt", clip="1000"), data_dir)  # a norm never reached: the same update, a x1 rescale
    assert loose.steps[-1]["loss"] == pytest.approx(free.steps[-1]["loss"], rel=1e-5)


@pytest.mark.slow
def test_accumulation_keeps_the_batch_mean_loss(data_dir):
    # the LM: LayerNorm is per sample (a ResNet's BatchNorm normalises each micro-batch by its own
    # statistics, so its accumulated loss is not the whole batch's: a real difference of the path)
    whole, parts = (train.run(spec("gpt", accumulation=a), data_dir) for a in (1, 4))
    assert parts.row["run_id"].endswith("-acc4-s0")
    assert parts.steps[0]["loss"] == pytest.approx(whole.steps[0]["loss"], rel=1e-5)  # the same batch, in 4 parts
    assert parts.steps[0]["grad_norm"] == pytest.approx(whole.steps[0]["grad_norm"], rel=1e-4)
    too_many = train.run(spec("gpt", accumulation=10_000), data_dir)
    assert too_many.status == "skipped" and "more micro-batches than the batch" in too_many.row["status_reason"]


def test_clip_and_accumulation_options_are_checked():
    assert parse_clips("none,1.0,0.5") == ("none", "1", "0.5") and parse_accumulations("1,4") == (1, 4)
    for bad in ("0", "-1", "inf", "x"):
        with pytest.raises(SpecError, match="--clip"):
            parse_clips(bad)
    with pytest.raises(SpecError, match="at least 1"):
        parse_accumulations("0")


def test_release_verdicts_say_which_noise_they_rest_on(tmp_path, monkeypatch):
    specs = [spec(steps=60, grid="smoke")]
    sessions = release.Sessions(release.Environments(tmp_path / "envs"), ["--grid", "smoke"], tmp_path)
    given = release.noise_for(sessions, "2.0.1", "smoke", specs, "x/tolerances.csv")
    assert given.source.startswith("given") and str(given.path) == "x/tolerances.csv"
    assert release.noise_for(sessions, "2.0.1", "smoke", [], None, measure=False).path is None  # covers nothing
    monkeypatch.setattr(questions, "committed_noise", lambda name, s: None)
    none = release.noise_for(sessions, "2.0.1", "smoke", specs, None, measure=False)
    assert none.path is None and "unjudged" in none.source
    measured = []
    monkeypatch.setattr(questions, "measure_noise", lambda *a: measured.append(a) or release.Noise(None, "measured"))
    assert release.noise_for(sessions, "2.0.1", "smoke", specs, None).source == "measured" and measured


def test_the_committed_noise_of_a_grid_is_found_for_its_configs_only():
    from diagnostics.grid.spec import GridOptions, resolve_grid

    smoke = resolve_grid(GridOptions(grid="smoke", devices=("cpu",))).specs()
    found = release.committed_noise("smoke", smoke)
    assert found is not None and "committed for the smoke grid" in found.source and "4 of its 4 configs" in found.source
    assert release.committed_noise("smoke", [spec(steps=13)]) is None  # another run length: not this noise
    changelog = resolve_grid(GridOptions(grid="changelog", devices=("cpu",))).specs()
    # 50 + 30 layout configs + the parallel part's 28 others (calibrated by the parallel grid, on 2.14.1)
    assert "108 of its 108 configs" in release.committed_noise("changelog", changelog).source


def test_a_run_whose_seeded_init_changed_needs_attention_on_the_page():
    from diagnostics.present import page

    runs = pd.DataFrame([dict(run_id="a", status="converged", baseline_check="identical", init_check="init_changed",
                              status_reason=""),
                         dict(run_id="b", status="converged", baseline_check="identical", init_check="init_same",
                              status_reason="")])
    need = page.attention(runs, {})
    assert need["run_id"].tolist() == ["a"] and need["verdict"].tolist() == ["identical, init_changed"]
