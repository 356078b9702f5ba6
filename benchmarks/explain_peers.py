"""``explain`` beside torch's own DebugMode hash logs (``torch.utils._debug_mode``, torch 2.10+), on
changes injected into torch where the right answer is known, side by side in one run.

    python benchmarks/explain_peers.py [--out DIR] [--steps 2]

Each case traces one config family's first steps in this environment and in a stand-in
environment (this Python with one thing of torch changed before the command runs, as the tests'
stand-ins): ``explain`` names its roots; DebugMode records every op's output hash
(``log_tensor_hashes("hash_tensor")``) over the same steps, and ``check_hash_mismatches`` lists
the ops whose hashes differ (it needs both runs to have the same op structure, and raises where
they do not). The control is this environment against itself. The table gives, per case, the
right answer, what each names first, how many ops each lists, and seconds per side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_numerics import PATCHES  # noqa: E402 (the tests' stand-in environments, one per class)

CASES = {  # name -> (model, patch, the right answer)
    "control": ("gpt", "", "nothing"),
    "kernel (addmm +1 ulp)": ("gpt", PATCHES["addmm"], "aten::addmm (forward)"),
    "optimizer (lerp_ +1 ulp)": ("gpt", PATCHES["lerp_"], "aten::lerp_.Scalar (optimizer)"),
    "state behind the schema (running stats)": ("resnet", PATCHES["running_stats"], "aten::native_batch_norm (forward)"),
    "precision (GELU in bf16)": ("gpt", PATCHES["cast"], "+aten::_to_copy around aten::gelu (forward)"),
}

DEBUG_MODE = """
import sys, json, torch
from pathlib import Path
from torch.utils._debug_mode import DebugMode
from diagnostics import determinism
from diagnostics.run.faults import NO_FAULT
from diagnostics.grid.spec import RunSpec
from diagnostics.run.train import setup, train_step
spec = RunSpec(**json.loads(sys.argv[1]))
determinism.apply(0, "cpu")
s = setup(spec, torch.device("cpu"), Path(sys.argv[2]), None)
with DebugMode() as dm, DebugMode.log_tensor_hashes(hash_fn="hash_tensor"):
    for step in range(1, int(sys.argv[3]) + 1):
        train_step(s, spec, step, NO_FAULT, None, keep_weights=False)
DebugMode.save_logs(dm.logs, sys.argv[4])
"""


def run_python(patch: str, code: str, args: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", patch + "\n" + code, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
    return time.perf_counter() - t0


def ours(model: str, patch: str, work: Path, steps: int, data: Path) -> tuple[Path, float]:
    out = work / "ours"
    code = "import sys\nfrom diagnostics.cli import main\nsys.exit(main(sys.argv[1:]))"
    seconds = run_python(patch, code, ["trace", "--grid", "smoke", "--models", model, "--optimizers", "adamw",
                                       "--devices", "cpu", "--trace-steps", str(steps), "--out", str(out),
                                       "--data-dir", str(data)])
    return out, seconds


def theirs(model: str, patch: str, work: Path, steps: int, data: Path) -> tuple[Path, float]:
    from diagnostics.grid.spec import RunSpec

    spec = RunSpec(model=model, optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=60)
    log = work / "debug_mode.json"
    seconds = run_python(patch, DEBUG_MODE, [json.dumps(spec.to_dict()), str(data), str(steps), str(log)])
    return log, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the traces and logs here (default: a temporary folder)")
    a = ap.parse_args(argv)
    import torch
    from torch.utils._debug_mode import DebugMode

    from diagnostics.release import explain

    root = Path(a.out or tempfile.mkdtemp(prefix="explain-peers-"))
    data = root / "data"
    print(f"torch {torch.__version__}; {a.steps} steps per family; traces in {root}")
    print("| case | right answer | explain names | explain roots | DebugMode names first | DebugMode mismatches "
          "| explain s (clean / changed) | DebugMode s (clean / changed) |")
    print("|---|---|---|---|---|---|---|---|")
    clean = {}
    for name, (model, patch, answer) in CASES.items():
        work = root / name.split(" ")[0]
        if model not in clean:
            clean[model] = (ours(model, "", root / f"clean-{model}", a.steps, data),
                            theirs(model, "", root / f"clean-{model}", a.steps, data))
        (ref, t_ref), (ref_log, d_ref) = clean[model]
        (mine, t_mine), (log, d_mine) = ours(model, patch, work, a.steps, data), theirs(model, patch, work, a.steps, data)
        table = explain.explain(ref, mine)
        roots = table[table["finding"].isin(explain.ROOTS)]
        named = "; ".join(f"{r['finding']}: {r['op']} ({r['phase']}{', ' + r['module'] if r['module'] else ''})"
                          for r in roots.drop_duplicates(["op", "phase"]).head(2).to_dict("records")) or "nothing"
        try:
            mismatches = DebugMode.check_hash_mismatches(DebugMode.load_logs(ref_log), DebugMode.load_logs(log))
            first = str(mismatches[0]["call"]).split("(")[0] if mismatches else "nothing"
            count = str(len(mismatches))
        except ValueError as e:
            first, count = f"refuses: {str(e).splitlines()[0][:70]}", "-"
        print(f"| {name} | {answer} | {named} | {roots[['op', 'phase']].drop_duplicates().shape[0]} | {first} | {count} "
              f"| {t_ref:.1f} / {t_mine:.1f} | {d_ref:.1f} / {d_mine:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
