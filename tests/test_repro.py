import math

import numpy as np
import pandas as pd
import pytest
import torch

from diagnostics.grid.spec import RunSpec
from diagnostics.judge import repro
from diagnostics.judge.repro import ddp_check
from diagnostics.run import checkpoint, train
from tests import rows
from tests.conftest import cli


def steps(values, start=1):
    return [dict(step=start + i, lr=1e-3, loss=v, grad_norm=1.0) for i, v in enumerate(values)]


def test_first_difference():
    first, biggest = repro.first_difference(steps([3.0, 2.5, 2.0]), steps([3.0, 2.5, 2.0]))
    assert math.isnan(first) and biggest == 0.0
    first, biggest = repro.first_difference(steps([3.0, 2.5, 2.0]), steps([3.0, 2.5000001, 2.1]))
    assert first == 2 and biggest == pytest.approx(0.1)
    first, _ = repro.first_difference(steps([3.0, 2.5]), steps([3.0, 2.5, 2.0]))  # one is longer
    assert first == 3


def test_seed_table_mean_std_and_ci():
    losses = [1.80, 1.82, 1.79, 1.81, 1.83]
    runs = rows.frame([dict(seed=s, final_loss=v, val_loss=v - 0.02) for s, v in enumerate(losses)]
                      + [dict(optimizer="sgd", seed=0, final_loss=1.7, val_loss=1.7)])  # one seed: no row
    t = repro.seed_table(runs)
    assert len(t) == 1 and t.iloc[0]["n_seeds"] == 5 and t.iloc[0]["seeds"] == "0,1,2,3,4"
    assert t.iloc[0]["final_loss_mean"] == pytest.approx(np.mean(losses))
    assert t.iloc[0]["final_loss_std"] == pytest.approx(np.std(losses, ddof=1))
    assert t.iloc[0]["final_loss_ci_low"] < np.mean(losses) < t.iloc[0]["final_loss_ci_high"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,scheduler,warmup", [("lion", "onecycle", "linear"),
                                                        ("sgd", "cosine_restarts", "none")])
def test_resume_is_exact(optimizer, scheduler, warmup, data_dir):
    spec = RunSpec(model="gpt", optimizer=optimizer, scheduler=scheduler, warmup=warmup, device="cpu", steps=30)
    r = repro.resume(spec, data_dir=data_dir)
    assert r["result"] == "identical", r["detail"]


@pytest.mark.slow
def test_twice_same_and_a_difference_is_located(monkeypatch, data_dir):
    spec = RunSpec(model="resnet", optimizer="adamw", scheduler="step", warmup="linear", device="cpu", steps=20)
    assert repro.twice_same(spec, data_dir=data_dir)["result"] == "identical"
    real = train.run
    calls = []

    def nudged(s, **kw):  # the second run's step 7 gets another loss: found, at that step
        r = real(s, **kw)
        calls.append(1)
        if len(calls) == 2:
            r.steps[6]["loss"] += 1e-6
        return r

    monkeypatch.setattr(repro.train, "run", nudged)
    r = repro.twice_same(spec, data_dir=data_dir)
    assert r["result"] == "different" and r["first_diff_step"] == 7 and r["max_abs_diff"] == pytest.approx(1e-6, rel=1e-3)


def test_truncated_or_foreign_checkpoints_are_one_line_errors(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    good = tmp_path / "ck.pt"
    checkpoint.save(good, "run-a", 5, model, opt, sched)
    assert checkpoint.load(good, "run-a", model, opt, sched) == 5
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path, pattern in ((truncated, "not a readable checkpoint"), (foreign, "not a diagnostics checkpoint"),
                          (text, "not a readable checkpoint"), (tmp_path / "absent.pt", "no such checkpoint")):
        with pytest.raises(checkpoint.CheckpointError, match=pattern) as e:
            checkpoint.load(path, "run-a", model, opt, sched)
        assert "\n" not in str(e.value)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint of run-a, not of run-b"):
        checkpoint.load(good, "run-b", model, opt, sched)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt", "resnet"])
def test_ddp_two_processes_agree_with_one(model, tmp_path):
    r = ddp_check(RunSpec(model=model, optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=30), tmp_path)
    if model == "resnet":  # per-rank BatchNorm on CPU: another function, said so, never a hollow pass
        assert r["result"] == "skipped" and "BatchNorm" in r["detail"]
        return
    assert r["result"] in ("close", "unjudged"), r["detail"]  # no calibrated noise here: the run itself unjudged
    assert "step-1 gradient norm" in r["detail"] and "(1x" in r["detail"] and r["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_reproducibility_suite_writes_repro_csv(tmp_path):
    d = tmp_path / "r"
    proc = cli("run", "--suite", "reproducibility", "--grid", "smoke", "--models", "gpt", "--steps", "20",
                       "--devices", "cpu", "--report-dir", str(d), "--data-dir", str(tmp_path / "data"), "--quiet",
                "--allow-no-baseline")
    assert proc.returncode == 0, proc.stdout[-2000:]
    t = pd.read_csv(d / "repro.csv")
    assert set(t["check"]) == {"twice_same", "resume", "ddp"}
    assert (t[t["check"] != "ddp"]["result"] == "identical").all()
    ddp = dict(zip(t[t["check"] == "ddp"]["run_id"].str.split("-").str[0], t[t["check"] == "ddp"]["result"]))
    # the DDP checks honour --models (resnet's is a stated skip on CPU: above)
    assert set(ddp) == {"gpt"} and ddp["gpt"] in ("close", "unjudged")


@pytest.mark.slow
def test_several_seeds_write_seeds_csv(tmp_path):
    d = tmp_path / "r"
    proc = cli("run", "--grid", "smoke", "--models", "gpt", "--optimizers", "adamw", "--seeds", "0,1,2",
                       "--steps", "20", "--devices", "cpu", "--report-dir", str(d), "--data-dir", str(tmp_path / "data"),
                       "--quiet", "--allow-no-baseline")
    assert proc.returncode == 0, proc.stdout[-2000:]
    t = pd.read_csv(d / "seeds.csv")
    assert len(t) == 1 and t.iloc[0]["n_seeds"] == 3 and t.iloc[0]["final_loss_std"] > 0


@pytest.mark.slow
def test_update_baseline_keeps_repro_results(tmp_path):
    base = tmp_path / "base" / "runs.csv"
    args = ["run", "--suite", "reproducibility", "--grid", "smoke", "--models", "gpt", "--optimizers", "sgd",
            "--steps", "12", "--devices", "cpu", "--data-dir", str(tmp_path / "data"), "--baseline", str(base),
            "--update-baseline", "--quiet", "-k", "twice_same"]
    assert cli(*args, "--report-dir", str(tmp_path / "r1")).returncode == 0
    t = pd.read_csv(base.with_name("repro.csv"))
    assert list(zip(t["check"], t["result"])) == [("twice_same", "identical")]
    assert cli(*args, "--report-dir", str(tmp_path / "r2")).returncode == 0  # replaced, not duplicated
    assert len(pd.read_csv(base.with_name("repro.csv"))) == 1
