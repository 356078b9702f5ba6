"""A reproducer for each changed kernel: the one op ``explain`` named, called alone on the inputs it
was given, in both releases' environments (``repro_<op>.py``, the snippet an upstream issue needs).

``capture`` replays a config family's traced steps (``numerics.trace_family``, in the first
release's environment) and keeps the inputs of the op at one (step, phase, seq) of the trace: a
tensor of at most ``FULL_ELEMENTS`` elements in full (``repro_<op>.pt``, read with
``weights_only=True``), a larger one as a seeded recipe (its shape, dtype and strides, filled by a
generator of its own seed; its recorded hash is written beside it, and the repro then checks the
kernel on other values of the same shape). ``write`` makes the standalone script: it needs torch
alone, sets the thread count the trace ran with, calls ``torch.ops.aten.<op>.<overload>`` and
prints the hash of what it returned and wrote. ``confirm`` runs it under each release's Python:
the finding is ``confirmed`` where the two hashes differ (as the traces said), ``not confirmed``
where they agree (the change needs more than this op's inputs: its neighbours, a thread count,
a machine), and says why where a side could not run it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import torch

FULL_ELEMENTS = 1 << 20  # a tensor up to this many elements is kept in full (4 MB in float32)
CONFIRMED, NOT_CONFIRMED, NOT_RUN = "confirmed", "not confirmed", "not run"
SCRIPT_TIMEOUT_S = 300


def slug(op: str) -> str:
    """``aten::_softmax.out`` -> ``_softmax_out``: a file name."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", op.split("::")[-1]).strip("_")


def literal(obj, tensors: list, recipes: list) -> str:
    """Python source for an argument: tensors as ``T[i]`` (kept in ``tensors``, or as a recipe
    where large), dtypes, devices and layouts by name, everything else by repr."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.numel() <= FULL_ELEMENTS:
            tensors.append(t)
            return f"T[{len(tensors) - 1}]"
        recipes.append(t)
        return f"seeded({len(recipes) - 1})"
    if isinstance(obj, (list, tuple)):
        inner = ", ".join(literal(x, tensors, recipes) for x in obj)
        return f"[{inner}]" if isinstance(obj, list) else f"({inner}{',' if len(obj) == 1 else ''})"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {literal(v, tensors, recipes)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
        return str(obj)
    if isinstance(obj, torch.device):
        return f"torch.device({str(obj)!r})"
    if isinstance(obj, float):
        return repr(obj) if obj == obj and abs(obj) != float("inf") else f"float({str(obj)!r})"
    return repr(obj)


SCRIPT = '''"""{op} ({where}), alone: the inputs {family} gave it at step {step}. Run it under each torch:
python {name} -> the hash of what the op returned and wrote. Different hashes: the kernel changed."""
import hashlib

import torch

torch.set_num_threads({threads})
T = torch.load(__file__.replace(".py", ".pt"), weights_only=True)  # the inputs kept in full
RECIPES = {recipes}  # larger inputs: (shape, dtype, strides, seed, recorded hash)


def seeded(i):
    shape, dtype, strides, seed, _ = RECIPES[i]
    dtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seed)
    size = max((s - 1) * st for s, st in zip(shape, strides)) + 1 if shape else 1
    base = torch.randn(size, generator=g) if dtype.is_floating_point else torch.randint(0, 2, (size,), generator=g)
    return base.to(dtype).as_strided(shape, strides)


def digest(values):
    h = hashlib.blake2b(digest_size=8)
    for t in values:  # as the trace hashes: dtype, shape, then the values in order
        h.update(f"{{t.dtype}}|{{tuple(t.shape)}}|".encode())
        flat = t.detach().contiguous().reshape(-1).cpu()
        h.update((flat.to(torch.uint8) if flat.dtype == torch.bool else flat).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


args, kwargs = {args}, {kwargs}
out = torch.ops.{namespace}.{base}.{overload}(*args, **kwargs)
flat = [out] if isinstance(out, torch.Tensor) else [x for x in (out or ()) if isinstance(x, torch.Tensor)]
written = [t for w in ({written}) for t in ([w] if isinstance(w, torch.Tensor) else list(w or ()))]
print("torch", torch.__version__, "output", digest(flat + written))
'''


def write(found, out_dir: Path, meta: dict) -> Path:
    """``repro_<op>.py`` and its ``.pt`` in ``out_dir`` for a captured op; returns the script."""
    from diagnostics.release.numerics import digest, tensor_bytes

    name, func, args, kwargs = found
    tensors: list = []
    recipes: list = []
    args_src, kwargs_src = literal(list(args), tensors, recipes), literal(kwargs, tensors, recipes)
    written = []
    for i, arg in enumerate(func._schema.arguments):  # the arguments it writes, by where they are
        if arg.alias_info is not None and arg.alias_info.is_write:
            written.append(f"args[{i}]" if i < len(args) else f"kwargs[{arg.name!r}]")
    recipe_src = repr([(list(t.shape), str(t.dtype).removeprefix("torch."), list(t.stride()), 1000 + i,
                        digest(tensor_bytes(t))) for i, t in enumerate(recipes)])
    base, _, overload = name.removeprefix("aten::").partition(".")
    namespace = name.split("::")[0]
    path = Path(out_dir) / f"repro_{slug(name)}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path.with_suffix(".pt"))
    path.write_text(SCRIPT.format(op=name, where=meta.get("where", ""), family=meta.get("family", ""),
                                  step=meta.get("step", ""), name=path.name, threads=meta.get("threads", 1),
                                  recipes=recipe_src, args=args_src, kwargs=kwargs_src, namespace=namespace,
                                  base=base.split("::")[-1], overload=overload or "default",
                                  written="".join(f"{w}, " for w in written)))
    return path


def capture(spec, data_dir: Path, init_dir: Path | None, step: int, phase: str, seq: int, out_dir: Path,
            op: str | None = None) -> Path:
    """Replay ``spec``'s family as the trace did and write the reproducer of its op at (step,
    phase, seq), or, with ``op``, of the ``seq``-th call of ``op`` in that step's phase (the place
    to give where the trace that named the op came from another release, whose other ops may
    differ in number); raises numerics.TraceError where no op was recorded there."""
    from diagnostics.release.numerics import Recorder, TraceError, family_of, trace_family

    rec = Recorder(family_of(spec))
    rec.keep = (step, phase, op, seq) if op else (step, phase, seq)
    trace_family(spec, Path(data_dir), init_dir, step, rec)  # the family's steps up to this one, as traced
    if rec.kept is None:
        what = f"call #{seq} of {op}" if op else f"#{seq}"
        raise TraceError(f"no op recorded at step {step}, {phase} {what} of {family_of(spec)}")
    return write(rec.kept, out_dir, dict(family=family_of(spec), step=step, threads=torch.get_num_threads(),
                                          where=", ".join(x for x in (phase, rec.kept_row.get("module", "")) if x)))


def run(python: str | Path, script: Path) -> tuple[str, str]:
    """(output hash, "") of the script under ``python``, or ("", why it did not run)."""
    try:
        done = subprocess.run([os.path.abspath(python), str(script)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
                              cwd=Path(script).parent)
    except subprocess.TimeoutExpired:
        return "", f"timed out after {SCRIPT_TIMEOUT_S} s"
    words = done.stdout.split()
    if done.returncode != 0 or "output" not in words:
        return "", ((done.stderr.strip().splitlines() or ["no output"])[-1])[:200]
    return words[words.index("output") + 1], ""


def confirm(script: Path, python_a, python_b) -> tuple[str, str]:
    """(result, detail): the script run under both Pythons; ``confirmed`` where the hashes differ."""
    a, why_a = run(python_a, script)
    b, why_b = run(python_b, script)
    if not a or not b:
        return NOT_RUN, f"{'first' if not a else 'second'} side: {why_a or why_b}"
    return (CONFIRMED if a != b else NOT_CONFIRMED), f"{a} vs {b}"
