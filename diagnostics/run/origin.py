"""Where a run's first non-finite value came from: the op, its phase and its module.

When a run's loss or gradient norm first becomes NaN or inf (at step k), ``train.locate``
replays that one step from the state before it under a ``TorchDispatchMode`` (``Finder``) that looks at
every aten op of the step: an op whose output holds a NaN where none of its inputs did, or an inf
where none of its inputs did, made it; the origin is the op that made the non-finite value that
reached the end of the step (one made and then cleaned, as ``_safe_softmax`` does with fully
masked rows, is not it). An input is every tensor argument and
every number: a -inf that a mask put there (``masked_fill(-inf)``, ``where(mask, 0, -inf)``)
was an input of the op that used it, never a cause. Outputs include what an op wrote in place.

The state before step k is reached by training steps 1..k-1 again from the run's own start (its
seed, initial weights, perturbation and fault): training is deterministic where the run was, so
it costs nothing until a run diverges, and then k-1 steps. Where that state already holds a
non-finite weight or optimizer state (step k-1's update made it, from finite gradients), step
k-1 is the one replayed. The replay is eager: a compiled run's ops run as aten ops, and the
origin says when the eager replay did not reproduce the non-finite value.

Phases are ``train.train_step``'s (data, forward, loss, backward, clip, optimizer, schedule);
ops between them (the gradient-norm measurement, ``zero_grad``) are named ``between <last
phase>``. The module is the innermost ``nn.Module`` that ran the op, as
``torch.utils.module_tracker.ModuleTracker`` sees it (forward and backward, torch 2.3+;
before, forward only: a backward op's module is left empty).

Anomaly mode (``torch.autograd.detect_anomaly``) covers only the backward; this covers every
phase. A log read by ``diagnostics detect`` cannot be replayed, so it has no origin.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diagnostics.run.dispatch import PADDED_BUFFERS, UNINITIALISED, flat_values, only_views, op_name, written_arguments

EVENT = "nonfinite_origin"  # its events.csv kind (detect.EVENT_KINDS)


@dataclass(frozen=True)
class Origin:
    """The first op of a replayed step that made a non-finite value from finite ones."""

    step: int  # the replayed step (1-based)
    op: str  # aten::_softmax
    phase: str  # train_step's phase, or "between <phase>"
    module: str  # innermost module path (blocks.0.attn), "" where none ran it or it was not tracked
    kind: str  # "NaN" or "inf"
    detail: str  # what went in and what came out
    reproduced: bool = True  # the replay met a non-finite value (False: the origin is empty)
    rank: int | None = None  # the rank that made it, in a distributed run (None: one process)
    replay: str = ""  # how far the replay was from the run (train.departure), one line

    def line(self) -> str:
        """``first NaN at step 1: aten::_softmax (forward, blocks.0.attn)``."""
        after = f" ({self.replay})" if self.replay else ""
        if not self.reproduced:
            return f"first non-finite value not reproduced by an eager replay of step {self.step}{after}"
        where = ", ".join(x for x in (self.phase, self.module, "" if self.rank is None else f"rank {self.rank}") if x)
        return f"first {self.kind} at step {self.step}: {self.op} ({where}){after}"

    def event(self, run_id: str) -> dict:
        """Its events.csv row."""
        return dict(run_id=run_id, step=self.step, kind=EVENT, signal=self.op, value=math.nan, threshold=math.nan,
                    detail=f"{self.line()}; {self.detail}" if self.detail else self.line())


def nonfinite(values) -> tuple[bool, bool]:
    """(holds a NaN, holds an inf) over the tensors and numbers among ``values``."""
    nan = inf = False
    for v in flat_values(values):
        if isinstance(v, torch.Tensor) and hasattr(v, "to_local"):  # a DTensor (FSDP2): this rank's shard
            v = v.to_local()
        if isinstance(v, torch.Tensor):
            if not (v.is_floating_point() or v.is_complex()) or v.is_meta or v.is_sparse or v.numel() == 0:
                continue
            nan = nan or bool(torch.isnan(v).any())
            inf = inf or bool(torch.isinf(v).any())
        elif isinstance(v, (float, complex)):
            nan = nan or v != v
            inf = inf or (v == v and abs(v) == math.inf)
        if nan and inf:
            break
    return nan, inf


def describe(values) -> str:
    """``float32[16, 4, 64, 64] 4096 NaN`` for the non-finite tensors among ``values``."""
    parts = []
    for v in flat_values(values):
        if isinstance(v, torch.Tensor) and hasattr(v, "to_local"):
            v = v.to_local()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            n_nan, n_inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
            if n_nan or n_inf:
                counts = " ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "inf")) if n)
                parts.append(f"{str(v.dtype).removeprefix('torch.')}{list(v.shape)} {counts}")
    return "; ".join(parts)


class Finder(TorchDispatchMode):
    """Looks at every aten op while entered. An op whose output holds a NaN where none of its
    inputs did (or an inf where none did) *makes* one, and labels what it gave with itself; an op
    given a labelled value passes the label on to whatever non-finite value it gives; an op that
    gives finite values from non-finite ones cleans them (torch's own ``_safe_softmax`` makes
    NaN rows and replaces them by zeros: that NaN went nowhere). ``found`` is the label of the last
    non-finite value of the step, so the op that made the value that reached the end, as (op,
    phase, module, kind, detail). Inputs are looked at before the op runs (an in-place op writes
    one of them)."""

    def __init__(self, module=lambda: ""):
        super().__init__()
        self.module = module  # names the module running now
        self.current: str | None = None
        self.last = "data"
        # non-finite tensor -> its origin, by identity (a tensor's == is elementwise): id -> (weakref, label)
        self.labels: dict[int, tuple] = {}
        self.found: tuple | None = None
        self.argument: tuple | None = None  # the first op that met a non-finite value no op made

    @contextmanager
    def phase(self, name: str):
        """``train_step``'s phase marker (the mode stays entered across phases)."""
        self.current = name
        try:
            yield lambda inputs, outputs: None
        finally:
            self.current, self.last = None, name

    def label_of(self, t: torch.Tensor):
        """The origin a tensor was given, if it is the very tensor that was labelled."""
        ref, label = self.labels.get(id(t), (None, None))
        return label if ref is not None and ref() is t else None

    def label(self, func, kind: str, args, kwargs, out, written, before: str) -> tuple:
        return (op_name(func), self.current or f"between {self.last}", self.module(), kind,
                f"inputs: {before or 'finite'}; output: {describe((out, written))}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        base = op_name(func).split(".")[0]
        if only_views(func) or base in UNINITIALISED or base in PADDED_BUFFERS:
            # a view makes no value (it carries its input's label); an allocation holds whatever
            # memory held, as do FSDP2's gather buffers (viewed before the gather fills them, padded
            # with memory never written): the step replayed starts from a finite state
            # (train.locate), so none of them is an origin
            out = func(*args, **kwargs)
            given = next((x for x in (self.label_of(t) for t in flat_values((args, kwargs))
                                      if isinstance(t, torch.Tensor)) if x is not None), None)
            if given is not None and only_views(func):
                for t in flat_values(out):
                    if isinstance(t, torch.Tensor):
                        self.labels[id(t)] = (weakref.ref(t), given)
            return out
        in_nan, in_inf = nonfinite((args, kwargs))
        before = describe((args, kwargs)) if in_nan or in_inf else ""
        given = [self.label_of(t) for t in flat_values((args, kwargs)) if isinstance(t, torch.Tensor)]
        out = func(*args, **kwargs)
        written = written_arguments(func, args, kwargs)
        out_nan, out_inf = nonfinite((out, written))
        if not (out_nan or out_inf):
            return out
        # made here from finite inputs; or a NaN from infs no op made (a mask's -inf, a number):
        # an inf an op made upstream that this op turns into a NaN stays that op's (downstream here)
        made_upstream = any(x is not None and x[-1] != "argument" for x in given)
        if not (in_nan or in_inf):
            made = "NaN" if out_nan else "inf"
        else:
            made = "NaN" if out_nan and not in_nan and not made_upstream else ""
        if made:
            label = self.label(func, made, args, kwargs, out, written, before)
        else:  # passed on; or, where no labelled tensor came in, it came in as an argument (a NaN number):
            # then the first op of the step that met one such is named
            label = next((x for x in given if x is not None), None)
            if label is None:
                self.argument = self.argument or \
                    self.label(func, "NaN" if out_nan else "inf", args, kwargs, out, written, before) + ("argument",)
                label = self.argument
        for t in flat_values((out, written)):
            if isinstance(t, torch.Tensor):
                self.labels[id(t)] = (weakref.ref(t), label)
        self.found = label
        return out


def innermost(names: set[str], root: str) -> str:
    """The deepest module path among ModuleTracker's ``parents``, without the root's type name
    (``GPT.blocks.0.attn`` -> ``blocks.0.attn``; the root alone or ``Global``: "")."""
    paths = [n for n in names if n.startswith(root + ".")]
    if not paths:
        return ""
    return max(paths, key=lambda n: (n.count("."), n)).removeprefix(root + ".")


@contextmanager
def module_tracking(model: torch.nn.Module):
    """Yields a function naming the module an op runs in: torch's ModuleTracker (forward and
    backward) where the release has it and the model is eager, else a forward-hook stack (forward
    only). A compiled model runs as one graph: from 2.10 the tracker's backward hook asserts on the
    graph's outputs, which carry no gradient function inside aot_autograd's forward."""
    root = type(model).__name__
    try:
        from torch.utils.module_tracker import ModuleTracker
    except ImportError:
        ModuleTracker = None
    if getattr(model, "_compiled_call_impl", None) is not None:  # Module.compile (in place)
        ModuleTracker = None
    if ModuleTracker is not None:
        with ModuleTracker() as tracker:
            yield lambda: innermost(set(tracker.parents), root)
        return
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []
    pre = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, i: stack.append(names.get(m, "")))

    def leave(m, i, o) -> None:  # a forward hook that returned a value would replace the module's output
        if stack:
            stack.pop()

    post = torch.nn.modules.module.register_module_forward_hook(leave)
    try:
        yield lambda: next((n for n in reversed(stack) if n), "")
    finally:
        pre.remove()
        post.remove()


def state_nonfinite(s) -> bool:
    """Whether a run's weights or optimizer state hold a NaN or inf."""
    tensors = [p.detach() for p in s.params] + [v for st in s.opt.state.values() for v in st.values()
                                                  if isinstance(v, torch.Tensor)]
    return any(any(nonfinite([t])) for t in tensors)


COLLECTIVE_NAMESPACES = ("c10d::", "fsdp::")  # a value a collective gave came from another rank
PHASE_ORDER = ("data", "forward", "loss", "backward", "clip", "optimizer", "schedule")  # train_step's


def across_ranks(found: list[Origin]) -> Origin:
    """A distributed run's origin from each rank's replay of the step (index: the rank): the rank
    that met its first non-finite value earliest in the step, by phase, one that made it itself
    before one a collective brought it to, then the lowest rank. A NaN made in rank 1's loss
    reaches rank 0 only through the gradient reduction, in the backward, where rank 0's replay
    meets it in a collective or in the op that next reads the reduced buffer (gloo reduces in the
    background). Where no rank met one, rank 0's."""
    ranked = [replace(o, rank=r) for r, o in enumerate(found)]
    met = [o for o in ranked if o.reproduced]
    if not met:
        return ranked[0]

    def when(o: Origin):
        phase = o.phase.removeprefix("between ")
        return (PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER),
                o.op.startswith(COLLECTIVE_NAMESPACES), o.rank)

    return min(met, key=when)


def replay(model: torch.nn.Module, step: int, run_step) -> Origin:
    """``run_step(phase)`` (one training step of ``model``, its phases marked by ``phase``)
    under the Finder: its origin, or an origin that says it met none."""
    with module_tracking(model) as module:
        finder = Finder(module)
        with finder:
            run_step(finder.phase)
    if finder.found is None:
        return Origin(step, "", "", "", "", "", reproduced=False)
    op, phase, mod, kind, detail, *argument = finder.found
    if argument:  # no op made it: it came in as an argument (an injected ``loss * nan``)
        detail = f"no op made it: it was an argument ({detail})"
    return Origin(step, op, phase, mod, kind, detail)
