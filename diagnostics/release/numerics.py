"""The numerics trace: every aten op of a config family's first training steps, with the hashes
of what went in and what came out, in the environment of one torch release
(``diagnostics trace``; ``release``, ``bisect`` and ``changelog`` write one beside each
session's runs). ``explain`` aligns two of them op by op.

A *family* is a grid point up to its schedule and seed: model, size, optimizer, implementation,
precision, attention kernel, batch layout, context length, compile backend, clipping and accumulation (``family_of``). Each
family trains ``TRACE_STEPS`` steps from the session's seed checkpoint (``--init-dir``) on the
grid's batches of seed 0, under a ``TorchDispatchMode`` (torch 2.0 and later) that records, per
aten op: the phase it ran in (``PHASES``), its name, a signature of its tensor inputs (dtypes and
shapes), a hash of its tensor inputs' bytes, a hash of its other arguments, and a hash of its
outputs (for an in-place op, the tensors it wrote). Ops that move no value (views, aliases, a
copy within one dtype, uninitialised allocations) are not recorded: releases reorder and add
them freely, and an ``empty`` tensor's bytes are whatever the allocator held.

A compiled family's forward and backward run generated code, not aten ops: each is one row,
``compiled.forward`` / ``compiled.backward``, with the hashes of the tensors crossing it (inputs
and parameters, logits; the loss, the gradients), and the family gets a ``compiled.code`` row
hashing the generated source (inductor; every compiled family is traced in its own process with
its own empty inductor cache, so the source is this family's). The loss, clipping and the
optimizer step of a compiled family run eagerly and are recorded op by op.

Each schedule of the grid (optimizer, scheduler, warmup, steps, LR scale) adds one row in the
``schedule`` phase: the hash of its LR at every step of the run, and the values themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diagnostics import paths, report
from diagnostics.errors import DiagnosticsError
from diagnostics.grid.spec import RunSpec
from diagnostics.run import dispatch
from diagnostics.run.dispatch import flat_values, op_name, written_arguments

TRACE = paths.TRACE  # beside a session's runs.csv
COMPILED = "compiled."  # the ops of a compiled family's rows: its graphs' boundaries (forward, backward) and code
# the first steps of each family: the first creates the optimizer's state, the later ones update it
TRACE_STEPS = 3
PHASES = ("init", "data", "forward", "loss", "backward", "clip", "optimizer", "schedule")
TRACE_COLUMNS = ["family", "step", "phase", "seq", "op", "signature", "input_hash", "args_hash", "output_hash",
                 "detail", "module", "frames"]
# columns a trace written before they existed reads as empty
LATER_COLUMNS = ("module", "frames")
# ops that move no value: leaving them out keeps two releases' traces aligned where one reorders
# views or adds a copy (a copy between dtypes converts, and is kept: see ``moves_no_value``)
VALUE_PRESERVING = {"aten::clone", "aten::contiguous", "aten::alias", "aten::lift_fresh", "aten::lift_fresh_copy",
                    "aten::detach", "aten::_to_copy", "aten::copy_", "aten::_unsafe_view", "aten::view",
                    "aten::reshape"}
UNINITIALISED = dispatch.UNINITIALISED  # allocations: what they hold is whatever memory held
# the operator namespaces that compute (``profiler::_record_function_*`` marks a region and
# carries a handle: recorded, it would differ run to run); ``c10d::`` and ``fsdp::``: a distributed
# family's gathers and reductions (FSDP2's all-gather and reduce-scatter with their copy-in/out ops,
# DDP's all-reduce of each gradient bucket and its broadcast of the initial weights)
RECORDED_NAMESPACES = ("aten::", "prims::", "torchvision::", "quantized::", "c10d::", "fsdp::")
# FSDP2's gathers run through flat buffers whose padding (shards of unequal size) is never
# initialised: the buffer's hash would differ run to run. These ops' buffers are not hashed (the
# side named); the unsharded parameters split out of them are, so a gather that changed values
# shows as a changed ``split_with_sizes_copy``.
UNHASHED_BUFFERS = dispatch.PADDED_BUFFERS
HASH_BYTES = 8  # 64-bit digests: a collision between two different outputs of one op is ~1e-19


class TraceError(DiagnosticsError):
    """A trace that cannot be taken or read; one line."""


def digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's dtype, shape and values (its layout in memory left out: a transposed copy
    with the same values hashes the same)."""
    head = f"{t.dtype}|{tuple(t.shape)}|".encode()
    if t.is_sparse or t.is_meta or t.is_quantized or t.is_nested:
        return head + b"opaque"
    if hasattr(t, "to_local"):  # a DTensor (FSDP2's sharded parameters and gradients): this rank's shard
        t = t.to_local()
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    # a copy: numpy() would mark the tensor's own storage unresizable, which FSDP2 resizes to free
    return head + flat.to("cpu", copy=True).view(torch.uint8).numpy().tobytes()


def tree_map(fn, obj):
    """``obj`` with ``fn`` applied to every tensor in its nested lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, x) for x in obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


def hash_tensors(values) -> str:
    tensors = [v for v in flat_values(values) if isinstance(v, torch.Tensor)]
    return digest(*(tensor_bytes(t) for t in tensors)) if tensors else ""


SIGNATURE_CHARS = 80  # a longer signature (a foreach op's list) is written as its count and hash


def signature(values) -> str:
    """The dtypes and shapes of the tensors among ``values``, in order (what an op is matched by):
    ``float32[64, 64];int64[]``, or ``28 tensors #<hash>`` where that is long."""
    shapes = [f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in flat_values(values)
              if isinstance(t, torch.Tensor)]
    text = ";".join(shapes)
    return text if len(text) <= SIGNATURE_CHARS else f"{len(shapes)} tensors #{digest(text.encode())}"


def scalar_repr(v) -> str:
    """A non-tensor argument as text (a float by its exact repr: an LR that moved by one ulp
    differs; an object by its type where its repr is an address, a generator included: its
    state reaches the op's output, not its arguments)."""
    if isinstance(v, float):
        return v.hex()
    if isinstance(v, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(v)
    if isinstance(v, torch.ScriptObject) and v._has_method("op"):  # c10d's ReduceOp: what a collective reduces by
        try:
            return f"ReduceOp.{v.op()}"
        except Exception:  # noqa: BLE001 (an older release's class: its type stands)
            return type(v).__name__
    text = repr(v)
    return type(v).__name__ if " at 0x" in text or isinstance(v, torch.Generator) else text  # no addresses


def kind_of(t: torch.Tensor) -> tuple:
    """What a conversion can change: a tensor's dtype, device type and layout."""
    return t.dtype, t.device.type, t.layout


def moves_no_value(func, name: str, args, out) -> bool:
    """A view, an alias, a copy within one dtype, device and layout: no value changes
    (``VALUE_PRESERVING``). A conversion is a value, and is kept: a copy between dtypes
    (``copy_`` of bf16 into fp32, a ``_to_copy`` whose target dtype is a keyword), devices or
    layouts; known from the tensors in and out, not from the arguments' spelling."""
    if dispatch.only_views(func):
        return True  # every output is a view of an input
    base = name.split(".")[0]
    if base not in VALUE_PRESERVING:
        return False
    tensors = [v for v in flat_values((args, out)) if isinstance(v, torch.Tensor)]
    return len({kind_of(t) for t in tensors}) <= 1


class Recorder(TorchDispatchMode):
    """Records the aten ops dispatched while a phase is open (``phase``): ``rows`` as
    ``TRACE_COLUMNS``. ``compiled``: the forward and backward are recorded at their boundary
    only (generated code runs there, not aten ops)."""

    def __init__(self, family: str, compiled: bool = False, module=lambda: ""):
        super().__init__()
        self.family, self.compiled = family, compiled
        self.module = module  # names the module running now (origin.module_tracking)
        self.rows: list[dict] = []
        self.step = 0
        self.current: str | None = None
        self.seq = 0
        # the op whose inputs to keep (``reproducer``): (step, phase, seq), or (step, phase, op, k), the
        # k-th call of that op in the step's phase: the same call in releases whose other ops differ
        self.keep: tuple | None = None
        self.kept: tuple | None = None  # (op name, func, args, kwargs): copies of its inputs before it ran
        self.kept_row: dict = {}  # the trace row of the kept op

    def keeps(self, func) -> bool:
        """Whether the op dispatched now is the one ``keep`` names (and none was kept yet)."""
        if self.keep is None or self.kept is not None:
            return False
        if len(self.keep) == 3:
            return (self.step, self.current, self.seq) == self.keep
        step, phase, op, k = self.keep
        return (self.step, self.current) == (step, phase) and op_name(func) == op and \
            sum(r["op"] == op and r["step"] == step and r["phase"] == phase for r in self.rows) == k

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.keeps(func):
            # copies with the very strides the op was given (a kernel's path can depend on them), taken
            # before it ran (an in-place op writes one)
            copies = tree_map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                              .copy_(t.detach()), (args, kwargs or {}))
            n = len(self.rows)
            out = self.record(func, args, kwargs)
            if len(self.rows) > n:  # it was the op recorded there
                self.kept, self.kept_row = (op_name(func), func, *copies), self.rows[n]
            return out
        return self.record(func, args, kwargs)

    def record(self, func, args, kwargs):
        kwargs = kwargs or {}
        name = op_name(func)
        if self.current is None or not name.startswith(RECORDED_NAMESPACES) or name.split(".")[0] in UNINITIALISED:
            return func(*args, **kwargs)
        if dispatch.only_views(func):
            return func(*args, **kwargs)  # every output is a view of an input: nothing to hash
        tensors = [v for v in flat_values((args, kwargs)) if isinstance(v, torch.Tensor)]
        declared = {id(t) for t in flat_values(written_arguments(func, args, kwargs)) if isinstance(t, torch.Tensor)}
        copying = name.split(".")[0] in VALUE_PRESERVING  # a copy: its inputs are read after (it is rarely kept)
        before = None if copying else [tensor_bytes(t) for t in tensors]
        scalars = [scalar_repr(v) for v in flat_values((args, kwargs)) if not isinstance(v, torch.Tensor)]
        sig = signature((args, kwargs))
        out = func(*args, **kwargs)
        if name.startswith("c10d::"):  # a collective fills its outputs after it returns: waited for here
            for v in flat_values(out):  # (the trace only; the run waits where the wrapper does)
                if isinstance(v, torch.ScriptObject) and v._has_method("wait"):
                    v.wait()
        if moves_no_value(func, name, (args, kwargs), out):
            return out
        if before is None:  # a conversion: what it read is its source (the target it overwrote is its output)
            before = [tensor_bytes(t) if id(t) not in declared else b"" for t in tensors]
        # what it wrote: the arguments its schema marks written, and any other whose bits moved
        # (an op may write state its schema does not declare, e.g. a norm's running statistics)
        moved = [id(t) in declared or tensor_bytes(t) != b for t, b in zip(tensors, before)]
        written = [t for t, m in zip(tensors, moved) if m]
        result = [v for v in flat_values(out) if not isinstance(v, torch.Tensor)]
        output = hash_tensors((out, written)) or digest(repr([scalar_repr(v) for v in result]).encode())
        silent = [i for i, (t, m) in enumerate(zip(tensors, moved)) if m and id(t) not in declared]
        inputs = digest(*before) if before else ""
        unhashed = UNHASHED_BUFFERS.get(name.split(".")[0], "")
        if unhashed:  # a buffer with uninitialised padding (UNHASHED_BUFFERS)
            inputs, output = ("" if unhashed in ("input", "both") else inputs), ("" if unhashed in ("output", "both")
                                                                                  else output)
        self.add(name, sig, inputs, digest("|".join(scalars).encode()), output,
                 f"wrote argument(s) {', '.join(map(str, silent))} its schema does not mark written" if silent else
                 (f"padded buffer: {unhashed} not hashed" if unhashed else ""))
        return out

    def add(self, op: str, sig: str, inputs: str, args: str, output: str, detail: str = "") -> None:
        self.rows.append(dict(family=self.family, step=self.step, phase=self.current, seq=self.seq, op=op,
                              signature=sig, input_hash=inputs, args_hash=args, output_hash=output, detail=detail,
                              module=self.module() if self.current not in (None, "schedule") else "",
                              frames=frames()))
        self.seq += 1

    @contextmanager
    def phase(self, name: str):
        """Record the ops of ``name`` (a ``train.train_step`` phase: the mode is entered for
        it alone); yields the boundary recorder of a compiled forward or backward, which runs
        without the mode (under an active dispatch mode TorchDynamo would not run the compiled
        code)."""
        self.seq = 0
        if self.compiled and name in ("forward", "backward"):
            def boundary(inputs, outputs):
                self.current = name
                self.add(f"{COMPILED}{name}", signature(inputs), hash_tensors(inputs), "", hash_tensors(outputs))
                self.current = None

            yield boundary
            return
        self.current = name
        try:
            with self:
                yield lambda inputs, outputs: None
        finally:
            self.current = None


TORCH_DIR = str(Path(torch.__file__).resolve().parent)  # frames under it are torch's own
PACKAGE_DIR = str(paths.PACKAGE)  # this package's frames (the built-in models' included)
# plumbing between the caller and the op, never its location: tracing, dispatch modes, module calls
FRAME_SKIP = ("/contextlib.py", "/numerics.py", "/origin.py", "/torch/utils/", "/torch/_dynamo/",
              "/torch/nn/modules/module.py", "/torch/_ops.py", "/torch/_compile.py")


def frames() -> str:
    """Where the op was dispatched from, ``;``-separated: the innermost Python frame of torch's
    own code (``torch/nn/functional.py:5430``), the innermost other frame (the code that called
    torch: a model, a patch), and the innermost of this package where that is not it
    (``diagnostics/grid/models.py:78``); empty where none ran (a C++ backward's ops)."""
    f = sys._getframe(2)
    theirs = caller = package = ""
    while f is not None and not (theirs and caller and package):
        path = f.f_code.co_filename
        if not any(part in path for part in FRAME_SKIP):
            if path.startswith(TORCH_DIR):
                theirs = theirs or f"torch/{Path(path).relative_to(TORCH_DIR).as_posix()}:{f.f_lineno}"
            else:
                where = f"{Path(path).relative_to(paths.CHECKOUT).as_posix()}:{f.f_lineno}" if path.startswith(PACKAGE_DIR) \
                    else f"{Path(path).name}:{f.f_lineno}"
                caller = caller or where
                if path.startswith(PACKAGE_DIR):
                    package = package or where
        f = f.f_back
    return ";".join(dict.fromkeys(x for x in (theirs, caller, package) if x))


def family_of(spec: RunSpec) -> str:
    """A family's name: every field that changes the ops of a step (the model and its size,
    the optimizer, the device, the precision and the other axes), none that only changes values
    (schedule, warmup, seed, LR scale): ``gpt-adamw-cpu-fp32-fused-clip1``, the size named when
    not the tiny preset."""
    size = "" if spec.model_size == "tiny" else f"-{spec.model_size}"
    return f"{spec.model}{size}-{spec.optimizer}-{spec.device}-{spec.axes}"


def spec_of_row(row: dict) -> RunSpec:
    """The RunSpec of a runs.csv or compare.csv row (an axis it lacks at its default)."""
    axes = {k: row.get(k, report.AXIS_DEFAULTS.get(k)) for k in report.AXIS_DEFAULTS}
    accumulation = int(float(axes.pop("accumulation")))
    context = int(float(axes.pop("context")))
    clip = str(axes.pop("clip"))
    clip = clip if clip == "none" else f"{float(clip):g}"
    numbers = {k: row[k] for k in ("steps", "seed", "lr_scale") if k in row and str(row[k]) not in ("", "nan")}
    return RunSpec(model=row["model"], optimizer=row["optimizer"], scheduler=row["scheduler"],
                   warmup=row["warmup"], device=row["device"], precision=row["precision"],
                   model_size=row.get("model_size") or "tiny", clip=clip, accumulation=accumulation, context=context,
                   **{k: str(v) for k, v in axes.items()},
                   **{k: (float(v) if k == "lr_scale" else int(float(v))) for k, v in numbers.items()})


def family_of_row(row: dict) -> str:
    """The family of a runs.csv or compare.csv row (an axis it lacks at its default)."""
    return family_of(spec_of_row(row))


def families(specs: list[RunSpec]) -> dict[str, RunSpec]:
    """One spec per family, the first in grid order, at seed 0."""
    out: dict[str, RunSpec] = {}
    for s in specs:
        out.setdefault(family_of(s), replace(s, seed=0))
    return out


def schedule_name(optimizer: str, scheduler: str, warmup: str, steps, lr_scale) -> str:
    """The trace's name of a schedule: ``schedule:adamw-cosine-linear-60-lrx1``."""
    return f"schedule:{optimizer}-{scheduler}-{warmup}-{int(float(steps))}-lrx{float(lr_scale):g}"


def schedule_rows(specs: list[RunSpec]) -> list[dict]:
    """One ``schedule`` row per distinct schedule of the grid: the hash of its LR at every step
    of the run (``recipes.lr_curve``: torch's own scheduler objects), the values in ``detail``."""
    from diagnostics.grid.recipes import lr_curve

    rows, seen = [], set()
    for s in specs:
        key = (s.optimizer, s.scheduler, s.warmup, s.steps, s.lr_scale)
        if key in seen:
            continue
        seen.add(key)
        lrs = lr_curve(*key[:4], lr_scale=s.lr_scale)
        rows.append(dict(family=schedule_name(*key),
                         step=0, phase="schedule", seq=0, op="lr_schedule", signature=f"{len(lrs)} steps",
                         input_hash="", args_hash="", output_hash=digest(repr([x.hex() for x in lrs]).encode()),
                         detail=json.dumps([float(x) for x in lrs]), module="", frames=""))  # exact: repr round-trips
    return rows


def trace_family(spec: RunSpec, data_dir: Path, init_dir: Path | None, steps: int = TRACE_STEPS,
                 rec: Recorder | None = None, ranks=None) -> list[dict]:
    """The rows of one family: its init (the seeded construction of the model, before the seed
    checkpoint replaces its weights), then ``steps`` training steps of data, forward, loss,
    backward, clip and optimizer step. ``rec``: the Recorder to trace into (``reproducer``'s, which
    keeps one op's inputs); default a new one. ``ranks``: on a rank of a distributed family
    (``trace_on_ranks``), its rows of each batch, with the collectives and conversions the wrapper
    runs around them."""
    from diagnostics.grid import attention, data
    from diagnostics.run import determinism
    from diagnostics.run.faults import NO_FAULT
    from diagnostics.run.origin import module_tracking
    from diagnostics.run.train import ONE_PROCESS, setup, train_step

    rec = rec or Recorder(family_of(spec), compiled=spec.compile != "none")
    data.clear_batch_cache()  # an image family draws its epoch's order itself, whoever ran before it
    determinism.apply(spec.seed, spec.device)
    device = torch.device(spec.device)
    with attention.context(spec.attention):
        s = setup(spec, device, Path(data_dir), None, None, init_dir, phase=rec.phase, ranks=ranks or ONE_PROCESS)
        with module_tracking(s.ranks.inner(s.model)) as module:
            rec.module = module
            for step in range(1, steps + 1):
                rec.step = step
                train_step(s, spec, step, NO_FAULT, None, keep_weights=False, phase=rec.phase)
    return rec.rows


def trace_on_ranks(spec: RunSpec, ranks, data_dir: Path, init_dir: Path | None, steps: int) -> list[dict]:
    """A distributed family's trace as each of its ranks records it (``run.parallel``'s rank group
    calls this on every rank); rank 0's rows are the family's: its rows of each batch, the
    gathers, reductions and dtype conversions of the wrapper among its ops."""
    return trace_family(spec, data_dir, init_dir, steps, ranks=ranks)


def trace_distributed(spec: RunSpec, data_dir: Path, init_dir: Path | None, steps: int) -> list[dict]:
    """A ``ddp`` / ``fsdp`` family traced on this process's rank group (rank 0's ops)."""
    from diagnostics.run import parallel

    device_type = torch.device(spec.device).type
    world = parallel.axis.world_size(device_type, torch.cuda.device_count() if device_type == "cuda" else 0,
                                      parallel.asked_world())
    answer = parallel.group(device_type, world).call(trace_on_ranks, spec, dict(data_dir=data_dir, init_dir=init_dir,
                                                                                   steps=steps))
    if isinstance(answer, (parallel.DeadRank, parallel.RankFailed)):
        raise TraceError(f"tracing {family_of(spec)}: {answer.reason()}")
    return answer


def generated_code_hash(cache_dir: Path) -> tuple[str, int]:
    """The hash of the generated source files under an inductor cache folder (``.py``, ``.cpp``,
    ``.h``; binaries left out), the folder's own path replaced, and how many there were."""
    texts = []
    for f in sorted(Path(cache_dir).rglob("*")):
        if f.is_file() and f.suffix in (".py", ".cpp", ".h"):
            texts.append(f.read_text(errors="replace").replace(str(cache_dir), "<cache>"))
    return digest(*sorted(t.encode() for t in texts)) if texts else "", len(texts)


def trace_compiled(spec: RunSpec, data_dir: Path, init_dir: Path | None, steps: int) -> list[dict]:
    """A compiled family, traced in a process of its own with an empty inductor cache (so its
    generated code is its own, and nothing cached by another family is reused); adds the
    ``compiled.code`` row."""
    with tempfile.TemporaryDirectory(prefix="trace-inductor-") as tmp:
        out = Path(tmp) / "rows.csv"
        cmd = [sys.executable, "-m", "diagnostics.release.numerics", json.dumps(spec.to_dict()), str(data_dir),
               str(init_dir or ""), str(steps), str(out)]
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise TraceError(f"tracing {family_of(spec)} failed: {last}")
        rows = pd.read_csv(out, dtype=str, keep_default_na=False).to_dict("records")
        code, n = generated_code_hash(Path(tmp) / "inductor")
    rows.append(dict(family=family_of(spec), step=0, phase="compile", seq=0, op=f"{COMPILED}code", signature=f"{n} files",
                     input_hash="", args_hash="", output_hash=code, detail=spec.compile))
    return rows


def trace(specs: list[RunSpec], data_dir: Path, init_dir: Path | None, steps: int = TRACE_STEPS,
          skip=lambda spec: "") -> tuple[pd.DataFrame, dict]:
    """The trace of a grid: every family (``skip(spec)``: a reason it cannot run here, e.g. a
    precision this release lacks; such a family gets no rows) and every schedule. Returns the
    table and what it cost (seconds per family)."""
    rows, cost = schedule_rows(specs), {}
    for family, spec in families(specs).items():
        if skip(spec):
            continue
        t0 = time.perf_counter()
        try:
            rows += trace_compiled(spec, data_dir, init_dir, steps) if spec.compile != "none" else \
                trace_distributed(spec, data_dir, init_dir, steps) if spec.parallel != "none" else \
                trace_family(spec, data_dir, init_dir, steps)
        except Exception as e:  # a family this release cannot run or trace (its process's last line): no rows
            rows.append(dict(family=family, step=0, phase="error", seq=0, op=type(e).__name__, signature="",
                             input_hash="", args_hash="", output_hash="", detail=str(e).splitlines()[0][:200]
                             if str(e) else ""))
        cost[family] = time.perf_counter() - t0
    return pd.DataFrame(rows, columns=TRACE_COLUMNS), cost


def read(path: Path) -> pd.DataFrame:
    """A trace.csv (every column as text); raises TraceError with one line."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace (diagnostics trace writes one)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not a readable trace ({str(e).splitlines()[0] if str(e) else 'empty'})") from None
    for column in LATER_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    missing = [c for c in TRACE_COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(f"{path}: not a trace (missing column(s) {', '.join(missing)})")
    df["step"] = pd.to_numeric(df["step"], errors="coerce").fillna(0).astype(int)
    df["seq"] = pd.to_numeric(df["seq"], errors="coerce").fillna(0).astype(int)
    return df


def write(df: pd.DataFrame, path: Path) -> None:
    report.write_atomic(Path(path), df)


def _one(spec_json: str, data_dir: str, init_dir: str, steps: str, out: str) -> None:
    """Entry of ``trace_compiled``'s process: one family's rows into ``out``."""
    spec = RunSpec(**json.loads(spec_json))
    rows = trace_family(spec, Path(data_dir), Path(init_dir) if init_dir else None, int(steps))
    pd.DataFrame(rows, columns=TRACE_COLUMNS).to_csv(out, index=False)


if __name__ == "__main__":
    _one(*sys.argv[1:6])
