"""Optimizer, LR-scheduler and warmup recipes: the chapter's defaults, one registry per axis.

Calling contract of a schedule built here (``build_schedule``):

- the optimizer steps ``total_steps`` times; the LR of optimizer step k (1-based) is
  ``optimizer.param_groups[0]["lr"]`` just before that ``optimizer.step()``;
- call ``scheduler.step()`` after every optimizer step *except the last*: the schedule is
  defined for exactly ``total_steps`` optimizer steps, so OneCycleLR's ``total_steps`` equals the
  number of LRs it hands out and its final (minimum) LR is that of the last step;
- warmup ``linear`` with W steps: LinearLR from 1/W to 1 over steps 1..W, then SequentialLR
  hands over to the main schedule at its own start. The LR of step k <= W is base*k/W, where
  base is the main schedule's starting LR (the optimizer's LR; OneCycle's max_lr/div_factor),
  so the hand-over is continuous. The main schedule spans the remaining ``total_steps - W``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from diagnostics.grid import compat

WARMUP_FRACTION = 0.1  # the chapter's rule (docs/concepts/grids.md): W = 10% of the run
NO_DECAY_MODULES = compat.NORM_MODULES


# --------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------


def _lion(params, **kw):
    from lion_pytorch import Lion

    return Lion(params, **kw)


# spec.IMPLS -> the torch optimizer kwargs that ask for it ("default": torch chooses)
IMPL_KWARGS = {"default": {}, "forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


class UnsupportedImpl(ValueError):
    """The optimizer (or torch, on this device) has no such implementation: a skip, not an error."""


@dataclass(frozen=True)
class OptimizerRecipe:
    name: str
    make: Callable[..., torch.optim.Optimizer]
    defaults: dict  # the chapter's kwargs; "lr" is scaled by the run's lr_scale
    impls: tuple[str, ...] = tuple(IMPL_KWARGS)  # the implementations it has (spec.IMPLS)


OPTIMIZERS: dict[str, OptimizerRecipe] = {
    "adamw": OptimizerRecipe("adamw", torch.optim.AdamW,
                             dict(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)),
    "sgd": OptimizerRecipe("sgd", torch.optim.SGD,
                           dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)),
    # lion-pytorch's Lion: one (for-loop) update; its Triton kernel is not a torch implementation
    "lion": OptimizerRecipe("lion", _lion, dict(lr=1e-4, weight_decay=1e-2), ("default", "forloop")),
}


def resolved_impl(opt: torch.optim.Optimizer, impl: str) -> str:
    """What actually runs: the requested implementation, or for "default" what torch picks for
    these parameters (foreach for CUDA tensors, the for-loop on CPU)."""
    if impl != "default":
        return impl
    d = opt.defaults
    if "foreach" not in d:  # not a torch optimizer (lion-pytorch): one for-loop update
        return "forloop"
    if d.get("fused"):
        return "fused"
    if d["foreach"] is not None:
        return "foreach" if d["foreach"] else "forloop"
    try:  # torch's own rule for foreach=None
        from torch.optim.optimizer import _default_to_fused_or_foreach

        params = [p for g in opt.param_groups for p in g["params"]]
        return "foreach" if _default_to_fused_or_foreach(params, False, False)[1] else "forloop"
    except (ImportError, TypeError):
        return "default"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay for weights; no decay for biases and normalisation parameters
    (the chapter's "decay weights, not biases/batch norm"). Tied parameters appear once."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, NO_DECAY_MODULES) or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(name: str, model: nn.Module, lr_scale: float = 1.0, impl: str = "default"):
    """The named optimizer over ``param_groups(model)`` in implementation ``impl``; returns it
    and its resolved kwargs. Raises UnsupportedImpl when the optimizer, or torch on the model's
    device, has no such implementation."""
    recipe = OPTIMIZERS[name]
    if impl not in recipe.impls:
        raise UnsupportedImpl(f"{name} has no {impl} implementation (it has: {', '.join(recipe.impls)})")
    kw = dict(recipe.defaults, lr=recipe.defaults["lr"] * lr_scale)
    groups = param_groups(model, kw.pop("weight_decay"))
    try:
        opt = recipe.make(groups, **kw, **IMPL_KWARGS[impl])
    # e.g. fused=True on a device or release without the kernel (RuntimeError), an optimizer
    # whose release has no such argument yet (TypeError: SGD(fused=...) before torch 2.3)
    except (RuntimeError, TypeError) as e:
        if impl == "default":
            raise
        raise UnsupportedImpl(f"{name} {impl}: {str(e).splitlines()[0]}") from None
    resolved = dict(kw, weight_decay=groups[0]["weight_decay"], class_name=type(opt).__name__,
                    impl=resolved_impl(opt, impl),
                    n_decay=sum(p.numel() for p in groups[0]["params"]),
                    n_no_decay=sum(p.numel() for p in groups[1]["params"]))
    if "betas" in resolved:
        resolved["betas"] = list(resolved["betas"])
    return opt, resolved


# --------------------------------------------------------------------------------------------
# schedules: pure functions from the run's length to the resolved numbers, then torch objects
# --------------------------------------------------------------------------------------------

ETA_MIN = 1e-6  # chapter: eta_min for both cosine schedules
STEP_AT = 0.6  # chapter: StepLR decays at epoch 30 of 50
RESTART_FRACTION = 0.2  # chapter: T_0 = 10 of 50 epochs
ONECYCLE_PCT_START = 0.3  # chapter: pct_start


def step_kwargs(main_steps: int, lr: float) -> dict:
    return dict(step_size=max(1, round(STEP_AT * main_steps)), gamma=0.1)


def cosine_kwargs(main_steps: int, lr: float) -> dict:
    return dict(T_max=main_steps, eta_min=ETA_MIN)


def restarts_kwargs(main_steps: int, lr: float) -> dict:
    return dict(T_0=max(1, round(RESTART_FRACTION * main_steps)), T_mult=2, eta_min=ETA_MIN)


def onecycle_kwargs(main_steps: int, lr: float) -> dict:
    return dict(max_lr=lr, total_steps=main_steps, pct_start=ONECYCLE_PCT_START,
                cycle_momentum=True, base_momentum=0.85, max_momentum=0.95)  # torch defaults


def constant_kwargs(main_steps: int, lr: float) -> dict:
    return dict(factor=1.0, total_iters=0)


@dataclass(frozen=True)
class SchedulerRecipe:
    name: str
    make: type  # a torch.optim.lr_scheduler class
    resolve: Callable[[int, float], dict]  # (main_steps, lr) -> kwargs


SCHEDULERS: dict[str, SchedulerRecipe] = {
    "constant": SchedulerRecipe("constant", sched.ConstantLR, constant_kwargs),
    "step": SchedulerRecipe("step", sched.StepLR, step_kwargs),
    "cosine": SchedulerRecipe("cosine", sched.CosineAnnealingLR, cosine_kwargs),
    "cosine_restarts": SchedulerRecipe("cosine_restarts", sched.CosineAnnealingWarmRestarts, restarts_kwargs),
    "onecycle": SchedulerRecipe("onecycle", sched.OneCycleLR, onecycle_kwargs),
}

WARMUPS = ("none", "linear")


def warmup_steps(warmup: str, total_steps: int) -> int:
    """W: 0 without warmup, else WARMUP_FRACTION of the run (at least 1, leaving >= 1 main step)."""
    if warmup == "none":
        return 0
    return min(max(1, round(WARMUP_FRACTION * total_steps)), total_steps - 1)


def build_schedule(optimizer: torch.optim.Optimizer, scheduler: str, warmup: str, total_steps: int):
    """LR scheduler for ``total_steps`` optimizer steps (see the module's calling contract);
    returns it and every resolved number."""
    W = warmup_steps(warmup, total_steps)
    main_steps = total_steps - W
    lr = optimizer.param_groups[0]["lr"]
    recipe = SCHEDULERS[scheduler]
    kw = recipe.resolve(main_steps, lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SequentialLR's epoch-argument deprecation
        main = recipe.make(optimizer, **kw)
        resolved = {"scheduler": recipe.make.__name__, **kw, "warmup": warmup, "warmup_steps": W,
                    "main_steps": main_steps}
        if W == 0:
            return main, resolved
        # LinearLR's factor at its epoch e is start + (1 - start) * e / total_iters = (e + 1) / W
        warm = sched.LinearLR(optimizer, start_factor=1.0 / W, end_factor=1.0, total_iters=max(W - 1, 1))
        chain = sched.SequentialLR(optimizer, schedulers=[warm, main], milestones=[W])
    resolved.update(warmup_start_factor=1.0 / W, warmup_total_iters=max(W - 1, 1))
    return chain, resolved


def after_optimizer_step(scheduler, step: int, total_steps: int) -> None:
    """The calling contract's one rule: step the schedule after optimizer step ``step`` (1-based)
    unless it was the last, so the schedule covers exactly ``total_steps`` optimizer steps."""
    if step < total_steps:
        scheduler.step()


def lr_curve(optimizer: str, scheduler: str, warmup: str, total_steps: int, lr_scale: float = 1.0) -> list[float]:
    """The LR of every optimizer step 1..total_steps of a recipe, obtained by driving the very
    optimizer and schedule objects the grid trains with (on a stand-in two-layer model), per the
    calling contract above. For plots and checks: no second implementation of any schedule."""
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    opt, _ = build_optimizer(optimizer, model, lr_scale)
    sched, _ = build_schedule(opt, scheduler, warmup, total_steps)
    lrs = []
    for k in range(1, total_steps + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        after_optimizer_step(sched, k, total_steps)
    return lrs

