"""The LR every scheduler x warmup hands out at its boundary steps, against closed forms
computed from the formulas in torch's documentation. The schedules under test are the ones
the grid trains with (``recipes.build_schedule``)."""

import math

import pytest
import torch

from diagnostics.grid import recipes

RUN_LENGTHS = (20, 200, 1000)
OPTIMIZERS = tuple(recipes.OPTIMIZERS)


def closed_form_lr(scheduler: str, warmup: str, total_steps: int, lr: float, k: int) -> float:
    """The LR that step k must get, computed from the formulas in torch's documentation."""
    W = recipes.warmup_steps(warmup, total_steps)
    main_steps = total_steps - W
    kw = recipes.SCHEDULERS[scheduler].resolve(main_steps, lr)
    start = lr / 25.0 if scheduler == "onecycle" else lr  # OneCycle starts at max_lr / div_factor
    if k <= W:
        return start * k / W
    e = k - W - 1  # epoch of the main schedule
    if scheduler == "constant":
        return lr
    if scheduler == "step":
        return lr * kw["gamma"] ** (e // kw["step_size"])
    if scheduler == "cosine":
        return kw["eta_min"] + (lr - kw["eta_min"]) * (1 + math.cos(math.pi * e / kw["T_max"])) / 2
    if scheduler == "cosine_restarts":
        T_i, t = kw["T_0"], e
        while t >= T_i:
            t, T_i = t - T_i, T_i * kw["T_mult"]
        return kw["eta_min"] + (lr - kw["eta_min"]) * (1 + math.cos(math.pi * t / T_i)) / 2
    if scheduler == "onecycle":
        peak = float(kw["pct_start"] * main_steps) - 1  # torch: end of the rising phase
        final = start / 1e4  # min_lr = initial_lr / final_div_factor
        def cos_anneal(a, b, pct):
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        if e <= peak:
            return cos_anneal(start, lr, e / peak)
        return cos_anneal(lr, final, (e - peak) / (main_steps - 1 - peak))
    raise KeyError(scheduler)


def boundary_steps(scheduler: str, warmup: str, total_steps: int) -> list[int]:
    """Steps where a schedule changes regime: 1, W, W+1, StepLR's milestone, each warm restart,
    OneCycle's peak and the last step."""
    W = recipes.warmup_steps(warmup, total_steps)
    main_steps = total_steps - W
    kw = recipes.SCHEDULERS[scheduler].resolve(main_steps, 1.0)
    steps = {1, total_steps, W + 1} | ({W} if W else set())
    if scheduler == "step":
        steps |= {W + kw["step_size"], W + kw["step_size"] + 1}
    if scheduler == "cosine_restarts":
        start, T_i = 0, kw["T_0"]
        while start < main_steps:
            steps |= {W + start + 1, W + start}
            start, T_i = start + T_i, T_i * kw["T_mult"]
    if scheduler == "onecycle":
        peak = round(kw["pct_start"] * main_steps)
        steps |= {W + peak, W + peak + 1}
    return sorted(s for s in steps if 1 <= s <= total_steps)


def lr_curve(optimizer_name: str, scheduler: str, warmup: str, total_steps: int) -> tuple[float, list[float]]:
    """(base LR, the LR of each optimizer step 1..total_steps), from the grid's own factories."""
    return recipes.OPTIMIZERS[optimizer_name].defaults["lr"], recipes.lr_curve(optimizer_name, scheduler, warmup,
                                                                                total_steps)


def test_decay_and_no_decay_groups_share_the_lr():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    opt, _ = recipes.build_optimizer("adamw", model)
    sched, _ = recipes.build_schedule(opt, "onecycle", "linear", 50)
    for _ in range(1, 50):
        assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"]
        opt.step()
        sched.step()


@pytest.mark.parametrize("total_steps", RUN_LENGTHS)
@pytest.mark.parametrize("warmup", recipes.WARMUPS)
@pytest.mark.parametrize("scheduler", tuple(recipes.SCHEDULERS))
@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_lr_at_boundaries(optimizer_name, scheduler, warmup, total_steps):
    base, lrs = lr_curve(optimizer_name, scheduler, warmup, total_steps)
    for k in boundary_steps(scheduler, warmup, total_steps):
        expected = closed_form_lr(scheduler, warmup, total_steps, base, k)
        assert math.isclose(lrs[k - 1], expected, rel_tol=1e-9, abs_tol=1e-15), (
            f"step {k}: lr {lrs[k - 1]!r}, closed form {expected!r}")


@pytest.mark.parametrize("scheduler", tuple(recipes.SCHEDULERS))
def test_whole_trace_matches_closed_form(scheduler):
    base, lrs = lr_curve("adamw", scheduler, "linear", 200)
    expected = [closed_form_lr(scheduler, "linear", 200, base, k) for k in range(1, 201)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_warmup_is_linear_from_base_over_w():
    base, lrs = lr_curve("sgd", "cosine", "linear", 200)
    W = recipes.warmup_steps("linear", 200)
    assert W == 20
    assert lrs[:W] == pytest.approx([base * k / W for k in range(1, W + 1)], rel=1e-12)
    assert lrs[W] == pytest.approx(base, rel=1e-12)  # the main schedule starts from its own start


def test_onecycle_ends_at_its_minimum_on_the_last_step():
    base, lrs = lr_curve("adamw", "onecycle", "none", 100)
    assert lrs[-1] == pytest.approx(base / 25 / 1e4, rel=1e-9)
    assert max(lrs) == pytest.approx(base, rel=1e-3)
