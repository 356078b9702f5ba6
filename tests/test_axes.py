"""The release axes (optimizer implementation, compile backend, precision), the seed checkpoint,
and the presets and sharding built on them."""

import math
from collections import Counter
from dataclasses import replace

import pandas as pd
import pytest
import torch

from diagnostics import detect, report
from diagnostics.grid import precision, recipes, spec
from diagnostics.grid.models import MODELS, CifarResNet
from diagnostics.grid.spec import GridOptions, RunSpec, resolve_grid
from diagnostics.judge import baseline
from diagnostics.run import checkpoint, train


def cpu(grid):
    return resolve_grid(GridOptions(grid=grid, devices=("cpu",)))


def test_default_axes_keep_the_ids_the_baselines_use():
    s = RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu")
    assert s.id == "gpt-adamw-cosine-linear-cpu-fp32-s0"
    assert replace(s, impl="fused", compile="inductor").id == "gpt-adamw-cosine-linear-cpu-fp32-fused-inductor-s0"
    assert replace(s, compile="aot_eager", lr_scale=3.0).id == "gpt-adamw-cosine-linear-cpu-fp32-aot_eager-s0-lrx3"
    base = report.read(baseline.directory("default") / report.RUNS)
    assert {s.id for s in cpu("default").specs()} <= set(base["run_id"])  # the committed baseline's ids hold
    assert (base["impl"] == "default").all() and (base["compile"] == "none").all()  # filled for older reports


def test_release_preset_covers_every_axis_value():
    specs = cpu("release").specs()
    # the product, then gpt's attention kernels x 2 precisions x 2 implementations, then clipping x
    # accumulation (none/1 x 1/4) x fp32/fp16 x both models with torch's default implementation
    # ... + the layout parts (full-64 fp32 was there) + the parallel part (36 points, 5 one-process ones there)
    assert len(specs) == 54 + 8 + 4 * 2 * 2 + 23 + 8 + 36 - 5
    assert {s.clip for s in specs} == {"none", "1"} and {s.accumulation for s in specs} == {1, 4}
    assert {s.impl for s in specs} == {"default", "forloop", "foreach", "fused"}  # default: the clipping part's
    assert {s.compile for s in specs} == {"none", "aot_eager", "inductor"}
    assert {s.precision for s in specs} == {"fp32", "bf16", "fp16"}
    assert {s.attention for s in specs} == {"default", "math", "flash"}
    assert {s.attention for s in specs if s.model == "resnet"} == {"default"}


def test_changelog_preset_covers_every_recipe_family_and_axis_with_two_seeds():
    specs = cpu("changelog").specs()
    # ... + the parallel part: 36 configs, 8 of them one-process ones already there, x 2 seeds
    assert len(specs) == 100 + 2 * (22 + 8) + 2 * (36 - 8) and {s.seed for s in specs} == {0, 1}
    assert {s.steps for s in specs} == {60}
    assert {(s.model, s.optimizer, s.scheduler) for s in specs} >= {
        (m, o, sch) for m in ("gpt", "resnet") for o in ("adamw", "sgd", "lion")
        for sch in ("constant", "cosine", "cosine_restarts", "onecycle", "step")}
    for axis, values in (("impl", {"default", "forloop", "foreach", "fused"}), ("precision", {"fp32", "bf16", "fp16"}),
                         ("compile", {"none", "aot_eager", "inductor"}), ("attention", {"default", "math", "flash"}),
                         ("clip", {"none", "1"}), ("accumulation", {1, 4})):
        assert {getattr(s, axis) for s in specs} == values, axis


def test_nightly_is_the_recipe_grid_plus_the_axes_part_and_overrides_reach_both():
    g = resolve_grid(GridOptions(grid="nightly", devices=("cuda",)))
    specs = g.specs()
    # recipes, release axes, attention kernels, then clipping at 1 x accumulation 1/4 x fp32/fp16 x both models
    # ... + the parallel part (36 points, 4 one-process ones already in the axes parts)
    assert len(specs) == 90 + 48 + 8 + 8 + 90 + 36 - 4 and len({(s.id, s.steps) for s in specs}) == len(specs)
    assert {(s.clip, s.accumulation) for s in specs} == {("none", 1), ("1", 1), ("1", 4)}
    assert {s.attention for s in specs} == {"default", "math", "flash", "efficient", "cudnn"}
    assert {s.steps for s in specs} == {500, 200}
    one = resolve_grid(GridOptions(grid="nightly", devices=("cuda",), steps="20", precision="fp32"))
    assert {s.steps for s in one.specs()} == {20} and {s.precision for s in one.specs()} == {"fp32"}
    assert len(one.specs()) == len({s.id for s in one.specs()})  # points of both parts listed once


@pytest.mark.parametrize("n", [2, 3, 4])
def test_shards_partition_the_grid_and_spread_each_cost_group(n):
    specs = resolve_grid(GridOptions(grid="nightly", devices=("cuda",))).specs()
    shards = [spec.shard(specs, i, n) for i in range(1, n + 1)]
    assert sorted((s.id, s.steps) for sh in shards for s in sh) == sorted((s.id, s.steps) for s in specs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for key in (lambda s: (s.model, s.steps), lambda s: (s.model, s.steps, s.compile, s.precision, s.optimizer)):
        counts = [Counter(map(key, sh)) for sh in shards]
        for group in set(map(key, specs)):
            per_shard = [c[group] for c in counts]
            assert max(per_shard) - min(per_shard) <= 1, (group, per_shard)
    assert spec.shard(specs, 1, n) == spec.shard(list(specs), 1, n)  # the same on every machine


def test_impl_kwargs_reach_torch_and_what_runs_is_recorded():
    model = torch.nn.Linear(2, 2)
    for impl, expect in (("forloop", "forloop"), ("foreach", "foreach"), ("fused", "fused"), ("default", "forloop")):
        opt, kw = recipes.build_optimizer("adamw", model, impl=impl)
        assert kw["impl"] == expect  # torch's own choice on CPU tensors is the for-loop
    with pytest.raises(recipes.UnsupportedImpl, match="lion has no fused implementation"):
        recipes.build_optimizer("lion", model, impl="fused")


def test_unsupported_points_are_stated_skips_not_errors(tmp_path):
    for s, why in ((RunSpec(model="gpt", optimizer="lion", scheduler="cosine", warmup="linear", device="cpu", steps=4,
                            impl="foreach"), "no foreach"),
                   (RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu",
                            precision="tf32", steps=4), "CUDA precision")):
        row = train.run(s, tmp_path).row
        assert row["status"] == "skipped" and why in row["status_reason"]
    old = pd.DataFrame(dict(status=["error", "error", "converged"], status_reason=["skipped: no GPU", "OOM", "ok"]))
    read = report.with_skipped_status(old)  # a report from before skipped was a status
    assert read["status"].tolist() == ["skipped", "error", "converged"] and read.loc[0, "status_reason"] == "no GPU"


def test_float32_matmul_settings_are_explicit_per_precision():
    assert precision.set_float32_matmul("tf32") == dict(tf32=True, matmul_precision="high")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert precision.set_float32_matmul("fp32") == dict(tf32=False, matmul_precision="highest")
    assert not torch.backends.cudnn.allow_tf32  # torch's default leaves it on: an "fp32" conv would run TF32
    assert precision.unsupported("tf32", "cpu") and not precision.unsupported("tf32", "cuda")
    assert precision.grad_scaler("fp32", "cpu") is None and precision.grad_scaler("fp16", "cpu") is not None


@pytest.mark.slow
def test_fp16_records_the_scale_and_skipped_steps(tmp_path):
    r = train.run(RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu",
                          precision="fp16", steps=12), tmp_path)
    assert r.status in detect.CONVERGED + ("stalled",), r.row["status_reason"]
    assert [s["grad_scale"] for s in r.steps][0] == 2.0 ** 16 and all(s["skipped"] in (0, 1) for s in r.steps)
    assert r.row["skipped_steps"] == sum(s["skipped"] for s in r.steps)
    fp32 = train.run(RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=12),
                             tmp_path)
    assert "grad_scale" not in fp32.steps[0] and math.isnan(fp32.row["skipped_steps"])


def test_a_skipped_fp16_step_is_not_divergence_but_a_collapsed_scale_is():
    m = detect.Monitor()
    for step in range(1, 30):
        m.update(step, 2.0 - step * 0.01, math.inf if step % 7 == 0 else 1.0, 1e-3, grad_scale=2.0 ** 16)
    assert not m.diverged
    plain = detect.Monitor()
    plain.update(1, 2.0, math.inf, 1e-3)  # no loss scaling: an inf gradient norm is divergence
    assert plain.diverged
    for step, scale in enumerate([2.0 ** 4, 2.0 ** 2, 1.0, 0.5], start=30):
        m.update(step, 1.7, math.inf, 1e-3, grad_scale=scale)
    assert m.diverged and m.divergence_step == 33
    assert m.status().status == "diverged_nonfinite" and [e.kind for e in m.events] == ["scale_collapse"]


@pytest.mark.slow
def test_compiled_and_fused_runs_train_and_say_what_ran(tmp_path):
    for kw in (dict(impl="fused"), dict(compile="aot_eager")):
        r = train.run(RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=6,
                              **kw), tmp_path)
        assert r.status != "error", r.row["status_reason"]
        assert r.row["impl"] == kw.get("impl", "default") and r.row["compile"] == kw.get("compile", "none")
        assert r.row["impl_resolved"] == kw.get("impl", "forloop")


@pytest.mark.slow
def test_the_seed_checkpoint_is_saved_once_and_loaded_after(tmp_path):
    s = RunSpec(model="resnet", optimizer="sgd", scheduler="cosine", warmup="linear", device="cpu", steps=4)
    fresh = train.run(s, tmp_path / "data").row["init_sha256"]
    init = tmp_path / "init"
    model = MODELS["resnet"].build("tiny", train.data.load("image", 0, str(tmp_path / "data")).info)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # weights another release's init RNG might have drawn
    checkpoint.save_weights(init / "resnet-tiny-s0.pt", model)
    loaded = train.run(s, tmp_path / "data", init_dir=init).row["init_sha256"]
    assert loaded == train.weights_sha256(model) != fresh
    first = train.run(replace(s, seed=1), tmp_path / "data", init_dir=init).row["init_sha256"]
    assert (init / "resnet-tiny-s1.pt").exists()  # the first run of a seed saves it ...
    assert train.run(replace(s, seed=1), tmp_path / "data", init_dir=init).row["init_sha256"] == first  # ... then loads
    (init / "resnet-tiny-s2.pt").write_bytes(b"not a checkpoint")
    row = train.run(replace(s, seed=2), tmp_path / "data", init_dir=init).row
    assert row["status"] == "error" and "not a readable checkpoint" in row["status_reason"]


def test_the_cifar_resnet_needs_no_torchvision_and_matches_its_block():
    tv = pytest.importorskip("torchvision.models.resnet")
    torch.manual_seed(0)
    ours = CifarResNet(1, 10)
    torch.manual_seed(0)
    block = tv.BasicBlock
    import diagnostics.grid.models as models

    saved, models.BasicBlock = models.BasicBlock, block
    try:
        theirs = CifarResNet(1, 10)
    finally:
        models.BasicBlock = saved
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(ours(x), theirs(x))
    assert not MODELS["resnet"].needs_torchvision


def test_reports_without_the_axes_read_as_their_defaults():
    old = pd.DataFrame(dict(run_id=["a"], model=["gpt"], precision=["fp32"], seed=[0]))
    filled = report.with_axis_defaults(old)
    assert list(filled.columns) == ["run_id", "model", "precision", "impl", "compile", "attention", "layout",
                                    "context", "clip", "accumulation", "parallel", "seed"]
    assert filled.loc[0, "impl"] == "default" and filled.loc[0, "compile"] == "none"
    assert filled.loc[0, "attention"] == "default" and filled.loc[0, "layout"] == "full" and filled.loc[0, "context"] == 0
    # a report from before the attention axis only: it goes after the axes the report has
    axes = report.with_axis_defaults(filled.drop(columns="attention").assign(compile="inductor"))
    assert list(axes.columns) == list(filled.columns) and axes.loc[0, "compile"] == "inductor"
    assert report.with_axis_defaults(pd.DataFrame(dict(key=["a"]))).columns.tolist() == ["key"]


def test_an_init_dir_that_is_a_file_is_one_usage_line(tmp_path):
    from tests.conftest import cli

    f = tmp_path / "weights.pt"
    f.write_text("x")
    proc = cli("run", "--grid", "smoke", "--devices", "cpu", "--init-dir", str(f))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not a folder" in proc.stderr
