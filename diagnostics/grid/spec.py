"""RunSpec (one frozen grid point with a stable id), grid presets and grid expansion.

Validation lives here too: every user-supplied name or number is checked by ``parse_*``
functions that raise ``SpecError`` with one line naming what is accepted.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field, replace

from diagnostics.errors import DiagnosticsError
from diagnostics.grid.attention import ATTENTIONS
from diagnostics.grid.layout import LAYOUTS
from diagnostics.grid.models import MODELS, SIZES
from diagnostics.grid.parallel import PARALLELS
from diagnostics.grid.recipes import OPTIMIZERS, SCHEDULERS, WARMUPS
from diagnostics.report import AXIS_DEFAULTS

# fp32: float32 with TF32 off and matmul precision "highest" (a CUDA fp32 run is truly fp32);
# tf32: float32 storage, TF32 matmuls and convolutions (CUDA only); bf16: bfloat16 autocast;
# fp16: float16 autocast with torch.amp.GradScaler (scale and skipped steps in steps.csv)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# the torch optimizer implementation: "default" lets torch choose (for-loop on CPU, foreach on
# CUDA), the others ask for one (recipes.IMPL_KWARGS); unsupported combinations are skips
IMPLS = ("default", "forloop", "foreach", "fused")
# torch.compile of the model with this backend ("none": eager)
COMPILE_BACKENDS = ("none", "aot_eager", "inductor")


class SpecError(DiagnosticsError, ValueError):
    """A user-facing configuration error; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One grid point, built by keyword (an axis added later cannot shift the others)."""

    model: str  # key of models.MODELS
    optimizer: str  # key of recipes.OPTIMIZERS
    scheduler: str  # key of recipes.SCHEDULERS
    warmup: str  # "none" or "linear"
    device: str  # device type: cpu, cuda, mps, xpu
    precision: str = "fp32"  # one of PRECISIONS
    seed: int = 0  # model init and data order
    steps: int = 200  # optimizer steps
    lr_scale: float = 1.0  # multiplies the recipe's LR
    model_size: str = "tiny"  # model size preset (models.SIZES; runs.csv's ``model_size``)
    suite: str = "convergence"  # the suite that runs it
    grid: str = "default"  # the grid preset it belongs to (names its baseline)
    impl: str = AXIS_DEFAULTS["impl"]  # one of IMPLS: the optimizer implementation
    compile: str = AXIS_DEFAULTS["compile"]  # one of COMPILE_BACKENDS: torch.compile backend of the model
    attention: str = AXIS_DEFAULTS["attention"]  # one of attention.ATTENTIONS: the SDPA kernel asked for
    # one of layout.LAYOUTS: how an LM batch's rows are laid out (full: a model without attention)
    layout: str = AXIS_DEFAULTS["layout"]
    context: int = AXIS_DEFAULTS["context"]  # LM context length in tokens (0: the model preset's; image models: always 0)
    clip: str = AXIS_DEFAULTS["clip"]  # "none", or the max norm of clip_grad_norm_ before each optimizer step ("1")
    # micro-batches per optimizer step (the batch split: the effective batch is kept)
    accumulation: int = AXIS_DEFAULTS["accumulation"]
    parallel: str = AXIS_DEFAULTS["parallel"]  # one of parallel.PARALLELS: none, ddp or fsdp

    @property
    def axes(self) -> str:
        """The precision, then every axis off its default, as ids name them
        (``fp32-fused-inductor-math-left-ctx100-clip1-acc4-ddp``; ``fp32`` with every axis at its default)."""
        named = (("impl", self.impl, ""), ("compile", self.compile, ""), ("attention", self.attention, ""),
                 ("layout", self.layout, ""), ("context", self.context, "ctx"),
                 ("clip", self.clip, "clip"), ("accumulation", self.accumulation, "acc"),
                 ("parallel", self.parallel, ""))
        return self.precision + "".join(f"-{prefix}{v}" for k, v, prefix in named if v != AXIS_DEFAULTS[k])

    @property
    def id(self) -> str:
        """Stable, readable id: ``gpt-adamw-onecycle-linear-cpu-fp32-s0``; a non-default
        implementation, compile backend, attention kernel, batch layout, context length, clipping
        norm or accumulation follows the precision (``axes``:
        ``-fp32-fused-inductor-math-left-ctx100-clip1-acc4-s0``),
        ``-lrx3`` ends it when the LR is scaled. Ids of default-axis runs never change."""
        base = f"{self.model}-{self.optimizer}-{self.scheduler}-{self.warmup}-{self.device}-{self.axes}-s{self.seed}"
        return base if self.lr_scale == 1.0 else f"{base}-lrx{self.lr_scale:g}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Grid:
    """A named grid preset: the axes a suite expands, before command-line overrides."""

    name: str
    suite: str  # convergence or stability
    models: tuple[str, ...]
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    schedulers: tuple[str, ...] = tuple(SCHEDULERS)
    warmups: tuple[str, ...] = WARMUPS
    precisions: tuple[str, ...] = ("fp32",)
    impls: tuple[str, ...] = ("default",)
    compiles: tuple[str, ...] = ("none",)
    attentions: tuple[str, ...] = ("default",)  # SDPA kernels (models without attention ignore the axis)
    layouts: tuple[str, ...] = ("full",)  # LM batch layouts (a model that takes only full batches ignores the axis)
    contexts: tuple[int, ...] = (0,)  # LM context lengths (0 or the preset's own: the preset's; image models ignore it)
    clips: tuple[str, ...] = ("none",)  # gradient clipping: "none" or a max norm
    accumulations: tuple[int, ...] = (1,)  # micro-batches per optimizer step
    parallels: tuple[str, ...] = ("none",)  # how the model is parallelised (parallel.PARALLELS)
    seeds: tuple[int, ...] = (0,)
    lr_scales: tuple[float, ...] = (1.0,)  # multipliers of each recipe's LR
    steps: int = 200  # optimizer steps per run
    model_size: str = "tiny"  # model size preset of every run (models.SIZES)
    devices: tuple[str, ...] = ()  # () = every available device type
    # further products of the same preset (their own axes and steps; the command line's
    # overrides apply to each): a preset can cover the recipe grid and the release axes
    # without the cost of their full product
    parts: tuple[Grid, ...] = ()

    def specs(self) -> list[RunSpec]:
        """The grid in a fixed order (the same on every xdist worker): this product, then each
        part's, a point already listed dropped."""
        specs = [
            RunSpec(model=m, optimizer=o, scheduler=s, warmup=w, device=d, precision=p, seed=seed, steps=self.steps,
                    lr_scale=lr, model_size=self.model_size, suite=self.suite, grid=self.name, impl=impl, compile=comp,
                    attention=att if MODELS[m].has_attention else "default",
                    layout=lay if lay in MODELS[m].layouts else "full", context=own_context(m, self.model_size, ctx),
                    clip=clip, accumulation=acc, parallel=par)
            for d, m, o, s, w, p, impl, comp, att, lay, ctx, clip, acc, par, seed, lr in itertools.product(
                self.devices, self.models, self.optimizers, self.schedulers, self.warmups, self.precisions, self.impls,
                self.compiles, self.attentions, self.layouts, self.contexts, self.clips, self.accumulations,
                self.parallels, self.seeds, self.lr_scales)
        ]
        specs += [s for part in self.parts for s in part.specs()]
        return list({(s.id, s.steps, s.model_size): s for s in specs}.values())


def layout_parts(name: str, seeds: tuple[int, ...]) -> tuple[Grid, ...]:
    """The batch-layout parts of the CPU release presets (``release``, ``changelog``): gpt with
    AdamW + warmup + cosine, every layout at the tiny preset's 64 tokens and at the odd lengths
    100 and 192 (not multiples of 64 or 128) in fp32 and bf16 (4 x 3 x 2 = 24 configs, the full-64
    ones already in the preset), and every layout under each CPU kernel alone (math, flash) at
    100 tokens (8 configs): where releases changed masked attention (docs/concepts/batches.md)."""
    common = dict(models=("gpt",), optimizers=("adamw",), schedulers=("cosine",), warmups=("linear",), seeds=seeds,
                  steps=60, layouts=LAYOUTS)
    return (Grid(name, "convergence", precisions=("fp32", "bf16"), contexts=(64, 100, 192), **common),
            Grid(name, "convergence", attentions=("math", "flash"), contexts=(100,), **common))


def parallel_part(name: str, seeds: tuple[int, ...], devices: tuple[str, ...] = (), steps: int = 60,
                  size: str = "tiny") -> Grid:
    """The distributed part of a preset (``grid.parallel``): gpt and ResNet x AdamW and SGD x
    warmup + cosine x fp32 / bf16 (under fsdp: its MixedPrecisionPolicy) x one process, DDP and
    FSDP2 x full and right-padded batches (the ResNet trains full ones): every distributed point
    beside the single-process one it is checked against. 2 x 2 x 2 x 3 x 2 = 48 points, 36 distinct
    (the ResNet's padded ones are its full ones); on the CPU the ResNet's distributed ones are
    stated skips (BatchNorm without SyncBatchNorm)."""
    return Grid(name, "convergence", models=("gpt", "resnet"), optimizers=("adamw", "sgd"), schedulers=("cosine",),
                warmups=("linear",), precisions=("fp32", "bf16"), parallels=("none", "ddp", "fsdp"),
                layouts=("full", "right"), seeds=seeds, steps=steps, model_size=size, devices=devices)


GRIDS: dict[str, Grid] = {
    # < 1 minute on 2 CPU cores: both model families, two optimizers, one schedule with warmup
    "smoke": Grid("smoke", "convergence", models=("gpt", "resnet"), optimizers=("adamw", "sgd"),
                  schedulers=("cosine",), warmups=("linear",), steps=60),
    # the chapter's full recipe grid on the CPU-sized models: 2 x 3 x 5 x 2 = 60 runs
    "default": Grid("default", "convergence", models=("gpt", "resnet"), steps=200),
    # GPU nightly, sized to 15 minutes on one H100 with 4 workers (docs/howto/gpu.md): the chapter's
    # recipe grid on the larger presets and torchvision's resnet18 (3 x 3 x 5 x 2 = 90 runs of
    # 500 steps), and the release axes on gpt-small and ResNet-20 with AdamW: for-loop / foreach /
    # fused x eager / inductor x fp32 / tf32 / bf16 / fp16 (2 x 3 x 2 x 4 = 48 runs of 200 steps)
    "nightly": Grid("nightly", "convergence", models=("gpt", "resnet", "resnet18"), steps=500, model_size="small",
                    parts=(Grid("nightly", "convergence", models=("gpt", "resnet"), optimizers=("adamw",),
                                schedulers=("cosine",), warmups=("linear",), precisions=PRECISIONS,
                                impls=("forloop", "foreach", "fused"), compiles=("none", "inductor"), steps=200,
                                model_size="small"),
                           # the attention kernels users train with (default: torch's choice) and each alone
                           Grid("nightly", "convergence", models=("gpt",), optimizers=("adamw",), schedulers=("cosine",),
                                warmups=("linear",), precisions=("fp32", "bf16"), steps=200, model_size="small",
                                attentions=("math", "flash", "efficient", "cudnn")),
                           # the paths people train with: clipping at norm 1 (with fp16: after unscale_) and
                           # 4 micro-batches per step
                           Grid("nightly", "convergence", models=("gpt", "resnet"), optimizers=("adamw",),
                                schedulers=("cosine",), warmups=("linear",), precisions=("fp32", "fp16"),
                                clips=("1",), accumulations=(1, 4), steps=200, model_size="small"),
                           # padded and packed batches x odd lengths (192: 128 + 64, the tile case of
                           # pytorch#196678) x every CUDA kernel that takes a mask (flash takes none: its
                           # rows say so) x fp32 / bf16: 4 x 3 x 4 x 2 = 96 runs
                           Grid("nightly", "convergence", models=("gpt",), optimizers=("adamw",), schedulers=("cosine",),
                                warmups=("linear",), precisions=("fp32", "bf16"), steps=200, model_size="small",
                                attentions=("default", "math", "efficient", "cudnn"), layouts=LAYOUTS,
                                contexts=(100, 192, 256)),
                           # DDP and FSDP2 over NCCL, a rank per GPU (one GPU: stated skips)
                           parallel_part("nightly", seeds=(0,), steps=200, size="small"),)),
    # release: the paths torch releases change (docs/concepts/releases.md), ~8 min on 2 CPU cores. gpt and
    # the CIFAR ResNet with AdamW under one warmup+cosine recipe, through the for-loop, foreach
    # and fused optimizer, eager, aot_eager and inductor compile, and fp32 / bf16 / fp16 autocast:
    # 2 x 3 x 3 x 3 = 54 runs of 60 steps. AdamW: the optimizer of the reports (fused AdamW with
    # AMP, compile changing the loss); tf32 is a CUDA precision (the nightly grid has it).
    "release": Grid("release", "convergence", models=("gpt", "resnet"), optimizers=("adamw",),
                    schedulers=("cosine",), warmups=("linear",), precisions=("fp32", "bf16", "fp16"),
                    impls=("forloop", "foreach", "fused"), compiles=("none", "aot_eager", "inductor"), steps=60,
                    parts=(Grid("release", "convergence", models=("gpt",), optimizers=("adamw",), schedulers=("cosine",),
                                warmups=("linear",), precisions=("fp32", "bf16"), impls=("forloop", "fused"),
                                attentions=("math", "flash"), steps=60),
                           # clipping (norm 1; fp16: after unscale_) and 4 micro-batches per step, each alone
                           # and together: 2 x 2 x 3 = 12 runs
                           Grid("release", "convergence", models=("gpt", "resnet"), optimizers=("adamw",),
                                schedulers=("cosine",), warmups=("linear",), precisions=("fp32", "fp16"),
                                clips=("none", "1"), accumulations=(1, 4), steps=60),
                           *layout_parts("release", seeds=(0,)), parallel_part("release", seeds=(0,)),)),
    # changelog: every torch release's convergence on CPU in a few minutes each (docs/concepts/releases.md
    # since 2.0"): the recipe grid (3 optimizers x 5 schedules, warmup, both models: 30 configs),
    # then AdamW+cosine through each release axis one at a time: for-loop / foreach / fused,
    # bf16 / fp16, aot_eager / inductor, math / flash attention (gpt), clipping at norm 1, 4
    # micro-batches per step; 2 seeds, 60 steps: 100 runs
    "changelog": Grid("changelog", "convergence", models=("gpt", "resnet"), warmups=("linear",), seeds=(0, 1), steps=60,
                      parts=tuple(Grid("changelog", "convergence", models=("gpt", "resnet"), optimizers=("adamw",),
                                       schedulers=("cosine",), warmups=("linear",), seeds=(0, 1), steps=60, **axis)
                                  for axis in (dict(impls=("forloop", "foreach", "fused")),
                                               dict(precisions=("bf16", "fp16")),
                                               dict(compiles=("aot_eager", "inductor")),
                                               dict(attentions=("math", "flash")),
                                               dict(clips=("1",)), dict(accumulations=(4,))))
                      + layout_parts("changelog", seeds=(0, 1)) + (parallel_part("changelog", seeds=(0, 1)),)),
    # the distributed part of the changelog alone (its own sessions: reports/releases/parallel)
    "parallel": parallel_part("parallel", seeds=(0, 1)),
    # stability sweep: LR multipliers of each recipe, with and without warmup, one schedule
    "stability": Grid("stability", "stability", models=("gpt", "resnet"), schedulers=("cosine",),
                      lr_scales=(0.3, 1.0, 3.0, 10.0, 30.0), steps=200),
}


def own_context(model: str, size: str, context: int) -> int:
    """A grid point's ``context``: 0 for the preset's own length (given as 0 or as that number,
    so ``--context 64,100`` on the tiny gpt is the default run and one other) and for a model
    without a context (an image model)."""
    entry = MODELS[model]
    return 0 if entry.task != "lm" or context == entry.block_size(size) else context


def parse_names(value: str | None, valid, what: str) -> tuple[str, ...] | None:
    """Comma list of names, each in ``valid``; None passes through (use the grid's)."""
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise SpecError(f"--{what} is empty; valid: {', '.join(valid)}")
    bad = [n for n in names if n not in valid]
    if bad:
        raise SpecError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(names))


def parse_number_list(value: str | None, what: str, kind: str, convert, valid, rule: str, example: str):
    """Comma list of numbers, each converted and checked; None passes through (the grid's)."""
    if value is None:
        return None
    try:
        numbers = tuple(convert(v) for v in value.split(","))
    except ValueError:
        raise SpecError(f"--{what} {value!r} is not a comma list of {kind} (e.g. {example})") from None
    if not all(valid(x) for x in numbers):
        raise SpecError(f"--{what} {value!r}: {rule}")
    return tuple(dict.fromkeys(numbers))


def parse_seeds(value: str | None) -> tuple[int, ...] | None:
    """Comma list of non-negative integer seeds, e.g. ``0,1,2``."""
    return parse_number_list(value, "seeds", "integers", int, lambda s: s >= 0, "seeds must be >= 0", "0,1,2")


def parse_lr_scales(value: str | None) -> tuple[float, ...] | None:
    """Comma list of positive LR multipliers, e.g. ``0.3,1,3`` (sorted)."""
    scales = parse_number_list(value, "lr-scales", "numbers", float, lambda x: 0 < x < float("inf"),
                               "multipliers must be positive and finite", "0.3,1,3")
    return None if scales is None else tuple(sorted(scales))


def parse_clips(value: str | None) -> tuple[str, ...] | None:
    """Comma list of ``none`` and positive finite max norms, e.g. ``none,1`` (each number as
    ``%g``: ``1.0`` is ``1``, one config)."""
    if value is None:
        return None
    out = []
    for v in (x.strip() for x in value.split(",")):
        if v == "none":
            out.append(v)
            continue
        try:
            norm = float(v)
        except ValueError:
            raise SpecError(f"--clip {value!r}: each value is none or a max gradient norm (e.g. none,1)") from None
        if not 0 < norm < float("inf"):
            raise SpecError(f"--clip {value!r}: a max norm must be positive and finite")
        out.append(f"{norm:g}")
    return tuple(dict.fromkeys(out))


MAX_CONTEXT = 4096  # tokens: beyond it the held-out split (20,000 tokens) has too few windows to score


def parse_contexts(value: str | None) -> tuple[int, ...] | None:
    """Comma list of LM context lengths in tokens, each 8 to MAX_CONTEXT, e.g. ``64,100,192``."""
    return parse_number_list(value, "context", "integers", int, lambda n: 8 <= n <= MAX_CONTEXT,
                             f"a context length is 8 to {MAX_CONTEXT} tokens", "64,100,192")


def parse_accumulations(value: str | None) -> tuple[int, ...] | None:
    """Comma list of micro-batch counts per optimizer step, each at least 1, e.g. ``1,4``."""
    return parse_number_list(value, "accumulation", "integers", int, lambda n: n >= 1,
                             "micro-batches per step must be at least 1", "1,4")


def parse_positive_int(value, what: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"--{what} {value!r} is not an integer") from None
    if n < minimum:
        raise SpecError(f"--{what} {n}: must be at least {minimum}")
    return n


def parse_init_dir(value: str | None):
    """``--init-dir``: a folder (created on first use), never an existing file."""
    from pathlib import Path

    if value is None:
        return None
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise SpecError(f"--init-dir {value}: exists and is not a folder (seed checkpoints go into a folder)")
    return path


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``i/N`` (1 <= i <= N): this machine runs the i-th of N deterministic slices of the grid."""
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise SpecError(f"--shard {value!r} is not of the form i/N (e.g. 1/4)") from None
    if not 1 <= i <= n:
        raise SpecError(f"--shard {value!r}: need 1 <= i <= N")
    return i, n


def shard(specs: list[RunSpec], i: int, n: int) -> list[RunSpec]:
    """The i-th of n shards: the grid's points dealt round-robin, grouped by what sets a run's
    cost (model, size, steps, compile backend, precision, optimizer), so each group spreads over
    the shards evenly (and shards take about equal time); within a group the order is a hash of
    the id. The shards partition the grid, every machine computes the same partition, and sizes
    differ by at most one. (Dealing in grid order aliased: with an even shard count, an axis of
    2 values put all compiled runs in half the shards.)"""
    def cost_group(k: int):
        s = specs[k]
        return (s.model, s.model_size, s.steps, s.compile, s.precision, s.optimizer,
                hashlib.sha256(f"{s.id}|{s.steps}".encode()).digest())

    order = sorted(range(len(specs)), key=cost_group)
    mine = {k for rank, k in enumerate(order) if rank % n == i - 1}
    return [s for k, s in enumerate(specs) if k in mine]


def parse_grid(name: str | None) -> Grid:
    name = name or "default"
    if name not in GRIDS:
        raise SpecError(f"unknown grid {name!r}; valid: {', '.join(GRIDS)}")
    return GRIDS[name]


@dataclass(frozen=True)
class GridOptions:
    """Command-line choices (None = the grid preset's value)."""

    grid: str | None = None
    models: str | None = None
    optimizers: str | None = None
    schedulers: str | None = None
    warmup: str | None = None
    precision: str | None = None
    impls: str | None = None
    compile: str | None = None
    attention: str | None = None
    layout: str | None = None
    context: str | None = None
    clip: str | None = None
    accumulation: str | None = None
    parallel: str | None = None
    seeds: str | None = None
    steps: str | int | None = None
    size: str | None = None
    lr_scales: str | None = None
    devices: tuple[str, ...] = field(default_factory=tuple)  # resolved device types


def resolve_grid(opts: GridOptions) -> Grid:
    """Apply overrides to the preset, validating each; raises SpecError."""
    g = parse_grid(opts.grid)
    steps = parse_positive_int(opts.steps, "steps", minimum=2)  # a run needs a first and a last step
    overrides = dict(
        models=parse_names(opts.models, tuple(MODELS), "models"),
        optimizers=parse_names(opts.optimizers, tuple(OPTIMIZERS), "optimizers"),
        schedulers=parse_names(opts.schedulers, tuple(SCHEDULERS), "schedulers"),
        warmups=parse_names(opts.warmup, WARMUPS, "warmup"),
        precisions=parse_names(opts.precision, PRECISIONS, "precision"),
        impls=parse_names(opts.impls, IMPLS, "impls"),
        compiles=parse_names(opts.compile, COMPILE_BACKENDS, "compile"),
        attentions=parse_names(opts.attention, ATTENTIONS, "attention"),
        layouts=parse_names(opts.layout, LAYOUTS, "layout"),
        contexts=parse_contexts(opts.context),
        clips=parse_clips(opts.clip),
        accumulations=parse_accumulations(opts.accumulation),
        parallels=parse_names(opts.parallel, tuple(PARALLELS), "parallel"),
        seeds=parse_seeds(opts.seeds),
        lr_scales=parse_lr_scales(opts.lr_scales),
        steps=steps,
        model_size=parse_names(opts.size, SIZES, "size")[0] if opts.size else None,
        devices=opts.devices or None,
    )
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(g, **given, parts=tuple(replace(part, **given) for part in g.parts))
