import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from diagnostics import detect, report
from diagnostics.grid import data
from diagnostics.grid.recipes import lr_curve
from diagnostics.grid.spec import RunSpec
from diagnostics.run import train
from tests.imagesets import write_imagefolder, write_mnist

pytestmark = pytest.mark.slow


def spec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", steps=30, **kw):
    return RunSpec(model=model, optimizer=optimizer, scheduler=scheduler, warmup=warmup, device="cpu", steps=steps, **kw)


@pytest.mark.parametrize("model", ["gpt", "resnet"])
def test_a_run_leaves_a_full_record(model, data_dir):
    r = train.run(spec(model), data_dir)
    row = r.row
    assert row["status"] in detect.STATUSES and row["status"] != "error", row.get("status_reason")
    assert Path(row["data_path"]).is_file() and data.sha256_file(Path(row["data_path"])) == row["data_sha256"]
    assert row["torch_version"] == torch.__version__
    assert row["runtime_s"] > 0 and row["steps_per_s"] > 0 and row["samples_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert math.isnan(row["peak_device_mem_mb"])  # not measured on CPU: empty, not invented
    assert [s["step"] for s in r.steps] == list(range(1, 31))
    assert row["steps_run"] == 30 and row["warmup_steps"] == 3


def test_recorded_lr_is_the_schedule(data_dir):
    r = train.run(spec("gpt", "sgd", "onecycle", "linear"), data_dir)
    assert [s["lr"] for s in r.steps] == lr_curve("sgd", "onecycle", "linear", 30)


def test_same_config_twice_is_bitwise_identical(data_dir):
    a, b = (train.run(spec("resnet", "lion", "cosine_restarts"), data_dir) for _ in range(2))
    assert a.row["weights_sha256"] == b.row["weights_sha256"]
    assert [(s["loss"], s["grad_norm"]) for s in a.steps] == [(s["loss"], s["grad_norm"]) for s in b.steps]


def test_seeds_differ(data_dir):
    a, b = (train.run(spec(seed=s), data_dir) for s in (0, 1))
    assert a.row["weights_sha256"] != b.row["weights_sha256"]


def test_a_diverging_run_stops_early_and_says_where(data_dir):
    r = train.run(spec("gpt", "sgd", "constant", "none", steps=200, lr_scale=1000.0), data_dir)
    row = r.row
    assert row["status"].startswith("diverged"), row["status_reason"]
    assert row["steps_run"] < 200
    assert row["steps_run"] - row["divergence_step"] < 20
    assert str(int(row["divergence_step"])) in row["status_reason"]


def test_bf16_autocast_runs(data_dir):
    r = train.run(spec("gpt", precision="bf16"), data_dir)
    assert r.status != "error", r.row["status_reason"]


def test_a_run_that_raises_becomes_an_error_row(data_dir, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("model exploded on construction")

    monkeypatch.setattr(train, "build_model", boom)
    r = train.run(spec(), data_dir)
    assert r.status == "error" and "model exploded on construction" in r.row["status_reason"]
    assert r.row["run_id"] == spec().id and r.row["torch_version"] == torch.__version__


def test_imagefolder_trains_to_a_sensible_accuracy(tmp_path, data_dir):
    root = write_imagefolder(tmp_path / "folder", n=600, classes=4, split=True)
    data.load.cache_clear()
    r = train.run(spec("resnet", "adamw", "constant", "none", steps=120), data_dir, data_root=str(root))
    row = r.row
    assert row["data_name"] == "imagefolder" and row["data_path"] == str(root.resolve())
    assert row["val_metric_name"] == "val_accuracy" and row["val_metric"] > 0.6, row  # chance: 0.25


def test_mnist_layout_loads_through_torchvision(tmp_path, data_dir):
    root = write_mnist(tmp_path / "mnist")
    r = train.run(spec("resnet", "adamw", "constant", "none", steps=20), data_dir, data_root=str(root))
    assert r.row["data_name"] == "mnist", r.row.get("status_reason")
    assert r.status != "error"


def test_steps_frame_has_the_contract_columns(data_dir):
    r = train.run(spec(steps=10), data_dir)
    df = pd.DataFrame(r.steps)
    assert list(df.columns)[:6] == ["run_id", "step", "lr", "loss", "grad_norm", "elapsed_s"]
    assert set(df.columns) <= set(report.STEPS_COLUMNS)
    assert df["elapsed_s"].is_monotonic_increasing


def test_sampled_signals_on_read_steps(data_dir):
    r = train.run(spec("gpt", steps=25), data_dir, probes=True)
    sampled = {s["step"]: s for s in r.steps if "update_ratio" in s}
    assert sorted(sampled) == [10, 20, 25]  # every SYNC_EVERY steps and the last
    for s in sampled.values():
        assert 0 < s["update_ratio"] < 1 and s["attn_logit_max"] > 0 and s["output_log_z"] > 0
    plain = train.run(spec("resnet", steps=10), data_dir, probes=True)  # no probes for image models
    assert "attn_logit_max" not in plain.steps[-1] and plain.steps[-1]["update_ratio"] > 0


def test_gpt_probes_match_an_explicit_computation():
    from diagnostics.grid.models import GPT, GPTConfig

    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1))
    idx = torch.randint(0, 32, (2, 16))
    p = m.probes(idx)
    block = m.blocks[0]
    h = block.ln_1(m.wte(idx) + m.wpe(torch.arange(16)))
    q, k, _ = block.attn.qkv(h).split(64, dim=2)
    q, k = (t.view(2, 16, 4, 16).transpose(1, 2) for t in (q, k))
    att = (q @ k.transpose(-2, -1)) / 4.0
    expected = max(att[b, hd, i, j].item() for b in range(2) for hd in range(4) for i in range(16) for j in range(i + 1))
    assert p["attn_logit_max"].item() == pytest.approx(expected, rel=1e-5)
    assert p["output_log_z"].item() == pytest.approx(torch.logsumexp(m(idx).float(), -1).mean().item(), rel=1e-5)


def test_the_lm_held_out_metric_is_its_next_token_accuracy_not_its_loss(data_dir):
    row = train.run(spec(steps=30), data_dir).row
    assert row["val_metric_name"] == "val_token_accuracy"
    assert 0.0 < row["val_metric"] < 1.0 and row["val_metric"] != row["val_loss"]
    assert row["val_samples"] > 1000  # counted per held-out token, not per sequence
