import pytest

from diagnostics.grid.spec import GRIDS, GridOptions, RunSpec, SpecError, resolve_grid


def test_id_is_stable_and_readable():
    s = RunSpec(model="gpt", optimizer="adamw", scheduler="onecycle", warmup="linear", device="cpu")
    assert s.id == "gpt-adamw-onecycle-linear-cpu-fp32-s0"
    assert RunSpec(model="gpt", optimizer="adamw", scheduler="onecycle", warmup="linear", device="cpu",
                   lr_scale=3.0).id.endswith("-s0-lrx3")


def test_default_grid_is_sixty_runs_per_device():
    specs = resolve_grid(GridOptions(devices=("cpu",))).specs()
    assert len(specs) == 60 and len({s.id for s in specs}) == 60
    assert {s.model for s in specs} == {"gpt", "resnet"} and {s.precision for s in specs} == {"fp32"}


def test_grid_order_is_the_same_every_time():
    a = [s.id for s in GRIDS["default"].__class__(**{**GRIDS["default"].__dict__, "devices": ("cpu",)}).specs()]
    b = [s.id for s in resolve_grid(GridOptions(devices=("cpu",))).specs()]
    assert a == b


def test_lr_scales_expand_the_grid_sorted():
    g = resolve_grid(GridOptions(grid="smoke", models="gpt", optimizers="sgd", lr_scales="10,1,0.3", devices=("cpu",)))
    assert [s.id for s in g.specs()][-1].endswith("-lrx10") and g.lr_scales == (0.3, 1.0, 10.0)


def test_overrides_apply():
    g = resolve_grid(GridOptions(grid="smoke", models="gpt", seeds="0,1", steps="30", devices=("cpu",)))
    assert g.models == ("gpt",) and g.seeds == (0, 1) and g.steps == 30
    assert len(g.specs()) == 2 * 2  # 2 optimizers x 2 seeds


@pytest.mark.parametrize("opts,match", [
    (dict(optimizers="adam"), r"unknown optimizers 'adam'; valid: adamw, sgd, lion"),
    (dict(schedulers="cosine,poly"), r"unknown schedulers 'poly'; valid: constant"),
    (dict(models="bert"), r"unknown models 'bert'; valid: gpt, resnet, resnet18, vit"),
    (dict(grid="huge"), r"unknown grid 'huge'; valid: smoke, default, nightly"),
    (dict(steps="0"), r"--steps 0: must be at least 2"),
    (dict(steps="1"), r"--steps 1: must be at least 2"),
    (dict(steps="ten"), r"--steps 'ten' is not an integer"),
    (dict(seeds="a,b"), r"not a comma list of integers"),
    (dict(seeds="-1"), r"seeds must be >= 0"),
    (dict(warmup=""), r"--warmup is empty"),
    (dict(precision="fp8"), r"unknown precision 'fp8'; valid: fp32, tf32, bf16, fp16"),
    (dict(impls="cudnn"), r"unknown impls 'cudnn'; valid: default, forloop, foreach, fused"),
    (dict(compile="tvm"), r"unknown compile 'tvm'; valid: none, aot_eager, inductor"),
    (dict(lr_scales="1,x"), r"--lr-scales '1,x' is not a comma list of numbers"),
    (dict(lr_scales="0,1"), r"multipliers must be positive and finite"),
])
def test_bad_options_name_what_is_accepted(opts, match):
    with pytest.raises(SpecError, match=match):
        resolve_grid(GridOptions(devices=("cpu",), **opts))
