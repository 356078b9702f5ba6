import pytest
import torch

from diagnostics.grid import recipes
from diagnostics.grid.models import GPT, CifarResNet, GPTConfig


def test_chapter_defaults():
    assert recipes.OPTIMIZERS["adamw"].defaults == dict(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    assert recipes.OPTIMIZERS["sgd"].defaults == dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    assert recipes.OPTIMIZERS["lion"].defaults == dict(lr=1e-4, weight_decay=1e-2)


def test_lion_comes_from_lion_pytorch():
    opt, kw = recipes.build_optimizer("lion", torch.nn.Linear(2, 2))
    assert type(opt).__module__.startswith("lion_pytorch")
    assert kw["lr"] == 1e-4


def test_lr_scale_multiplies_the_recipe_lr():
    opt, kw = recipes.build_optimizer("sgd", torch.nn.Linear(2, 2), lr_scale=3.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3) and kw["lr"] == pytest.approx(0.3)


def test_no_decay_for_biases_and_norms_in_gpt():
    model = GPT(GPTConfig(n_layer=1))
    decay, no_decay = recipes.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith("bias") or ".ln_" in n or n.startswith("ln_") for n in no_decay_names)
    assert {"ln_f.weight", "blocks.0.ln_1.weight", "blocks.0.attn.qkv.bias"} <= no_decay_names
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "wte.weight" in decay_names and "blocks.0.mlp.fc.weight" in decay_names
    # the tied LM head is one parameter, counted once
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_batchnorm_parameters_are_not_decayed():
    model = CifarResNet(1, 10)
    _, no_decay = recipes.param_groups(model, 0.1)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for m in bn for p in m.parameters()} <= {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("n,expected", [(200, 20), (60, 6), (10, 1), (2, 1)])
def test_warmup_steps_are_ten_percent(n, expected):
    assert recipes.warmup_steps("linear", n) == expected
    assert recipes.warmup_steps("none", n) == 0


def test_resolved_schedule_numbers_follow_the_run_length():
    opt, _ = recipes.build_optimizer("adamw", torch.nn.Linear(2, 2))
    _, kw = recipes.build_schedule(opt, "cosine_restarts", "linear", 200)
    assert kw["warmup_steps"] == 20 and kw["main_steps"] == 180 and kw["T_0"] == 36 and kw["T_mult"] == 2
    opt, _ = recipes.build_optimizer("adamw", torch.nn.Linear(2, 2))
    _, kw = recipes.build_schedule(opt, "step", "none", 50)
    assert kw["step_size"] == 30 and kw["gamma"] == 0.1  # the chapter's 30 of 50
    opt, _ = recipes.build_optimizer("adamw", torch.nn.Linear(2, 2))
    _, kw = recipes.build_schedule(opt, "onecycle", "none", 50)
    assert kw["total_steps"] == 50 and kw["max_lr"] == 1e-3 and kw["pct_start"] == 0.3


def test_onecycle_total_steps_is_the_number_of_lrs_it_hands_out():
    opt, _ = recipes.build_optimizer("adamw", torch.nn.Linear(2, 2))
    sched, kw = recipes.build_schedule(opt, "onecycle", "linear", 30)
    assert kw["warmup_steps"] == 3 and kw["total_steps"] == 27
    lrs = []
    for k in range(1, 31):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if k < 30:
            sched.step()
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4)  # OneCycle's minimum, on the last step
