"""Does a verdict find a real change, and only where it is? Realistic changes are injected into
torch while the default grid trains; each run is compared with the committed, calibrated
baseline (reports/baselines/default) by ``compare.compare_reports``.

Each change names the configs it touches. A systematic change should be reported beyond noise
(changed, regressed, improved or status_changed) on every config it touches whose stated minimum
detectable effect (compare.csv ``mde``) is below the change's effect there, and on no config it
does not touch; a rounding-size change should flag nothing.

    python benchmarks/sensitivity.py [--changes a,b] [--seeds 0,1,2,3,4] [-n 2]   # the docs table

Runs are the default grid on CPU with the baseline's seeds (5, paired), where the baseline was
calibrated (same machine and torch: an untouched config trains bitwise identically). A change's
effect on a config is the mean relative change of its final loss over the paired seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics import report
from diagnostics.grid.spec import GRIDS
from diagnostics.judge import baseline, compare, verdicts

BEYOND_NOISE = verdicts.BEYOND_NOISE


@contextlib.contextmanager
def patched(owner, name: str, make: Callable):
    """Replace ``owner.name`` by ``make(original)`` for the duration."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def with_kwargs(**forced):
    """A wrapper factory: call the original with some keyword arguments forced."""
    return lambda f: (lambda *a, **k: f(*a, **{**k, **forced}))


def adamw_weight_decay_ignored():
    import torch.optim.adam as adam  # AdamW.step calls this module's adam()
    return patched(adam, "adam", with_kwargs(weight_decay=0.0))


def adamw_eps_1e_6():
    import torch.optim.adam as adam
    return patched(adam, "adam", with_kwargs(eps=1e-6))


def sgd_nesterov_ignored():
    import torch.optim.sgd as sgd
    return patched(sgd, "sgd", with_kwargs(nesterov=False))


def lion_step_x3():
    import lion_pytorch.lion_pytorch as lion

    def make(f):
        return lambda p, grad, exp_avg, lr, wd, beta1, beta2: f(p, grad, exp_avg, lr * 3, wd, beta1, beta2)
    return patched(lion, "update_fn", make)


def steplr_gamma_wrong():
    import torch.optim.lr_scheduler as sched

    def make(init):
        return lambda self, optimizer, step_size, gamma=0.1, *a, **k: init(self, optimizer, step_size, 0.5, *a, **k)
    return patched(sched.StepLR, "__init__", make)


def linear_in_bf16():
    import torch
    import torch.nn.functional as F

    def make(f):
        return lambda x, w, b=None: f(x.to(torch.bfloat16), w.to(torch.bfloat16),
                                      None if b is None else b.to(torch.bfloat16)).to(x.dtype)
    return patched(F, "linear", make)


def layer_norm_nan_once():
    import torch.nn.functional as F

    def make(f):
        calls = [0]

        def layer_norm(x, *a, **k):
            calls[0] += 1
            out = f(x, *a, **k)
            return out * float("nan") if calls[0] == 400 else out  # about step 80 of the tiny gpt
        return layer_norm
    return patched(F, "layer_norm", make)


def conv_init_x2():
    import torch
    import torch.nn.init as init

    def make(f):
        def kaiming_normal_(t, *a, **k):
            f(t, *a, **k)
            with torch.no_grad():
                return t.mul_(2.0)
        return kaiming_normal_
    return patched(init, "kaiming_normal_", make)


def batchnorm_momentum_wrong():
    import torch.nn.functional as F

    def make(f):
        def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
            return f(x, running_mean, running_var, weight, bias, training, 0.5, eps)
        return batch_norm
    return patched(F, "batch_norm", make)


def linear_split_k():
    import torch.nn.functional as F

    def make(f):
        def linear(x, w, b=None):
            k = w.shape[1] // 2
            out = f(x[..., :k], w[:, :k]) + f(x[..., k:], w[:, k:])
            return out if b is None else out + b
        return linear
    return patched(F, "linear", make)


def cross_entropy_in_float64():
    import torch.nn.functional as F
    return patched(F, "cross_entropy", lambda f: (lambda x, y, *a, **k: f(x.double(), y, *a, **k).float()))


@dataclass(frozen=True)
class Change:
    name: str
    kind: str  # "systematic": must be found where it touches; "rounding": must flag nothing
    what: str
    patch: Callable  # () -> context manager active while a run trains
    touches: Callable[[dict], bool]  # runs.csv row -> does the change reach this config?


ALL = lambda r: True  # noqa: E731
# bf16 emulation made a grid take over 20 minutes here; Lion x3 is kept for GPU machines
SLOW = ("linear_in_bf16", "lion_step_x3")
CHANGES = {c.name: c for c in (
    Change("adamw_weight_decay_ignored", "systematic", "an optimizer flag silently ignored (AdamW weight_decay=0)",
           adamw_weight_decay_ignored, lambda r: r["optimizer"] == "adamw"),
    Change("adamw_eps_1e_6", "systematic", "a small systematic change (AdamW eps 1e-6, not 1e-8)", adamw_eps_1e_6,
           lambda r: r["optimizer"] == "adamw"),
    Change("sgd_nesterov_ignored", "systematic", "an optimizer flag silently ignored (SGD nesterov=False)",
           sgd_nesterov_ignored, lambda r: r["optimizer"] == "sgd"),
    Change("lion_step_x3", "systematic", "one optimizer's step size scaled (Lion update x3)",
           lion_step_x3, lambda r: r["optimizer"] == "lion"),
    Change("steplr_gamma_wrong", "systematic", "a scheduler parameter wrong (StepLR gamma 0.5, not 0.1)",
           steplr_gamma_wrong, lambda r: r["scheduler"] == "step"),
    Change("linear_in_bf16", "systematic", "a kernel's precision lowered (F.linear in bfloat16)",
           linear_in_bf16, ALL),
    Change("layer_norm_nan_once", "systematic", "a NaN from a flaky kernel (one LayerNorm call)",
           layer_norm_nan_once, lambda r: r["model"] == "gpt"),
    Change("conv_init_x2", "systematic", "an init scale (kaiming_normal_ x2: the ResNet convolutions)",
           conv_init_x2, lambda r: r["model"] == "resnet"),
    Change("batchnorm_momentum_wrong", "systematic", "BatchNorm running statistics (momentum 0.5, not 0.1)",
           batchnorm_momentum_wrong, lambda r: r["model"] == "resnet"),
    Change("linear_split_k", "rounding", "F.linear summed as two half-K matmuls", linear_split_k, ALL),
    Change("cross_entropy_in_float64", "rounding", "the loss computed in float64, then rounded to float32",
           cross_entropy_in_float64, ALL),
)}


def train_one(task):
    """Worker: one grid point with one change active; returns (runs row, steps rows)."""
    from diagnostics.run import determinism, train

    change, spec = task
    determinism.configure_process()
    with CHANGES[change].patch():
        result = train.run(spec)
    return result.row, result.steps


def run_change(pool, name: str, out: Path, seeds: tuple[int, ...]) -> pd.DataFrame:
    """The default grid with one change active (a complete earlier report of it is reused)."""
    grid = GRIDS["default"].__class__(**{**GRIDS["default"].__dict__, "devices": ("cpu",), "seeds": seeds})
    specs = grid.specs()
    if (out / name / report.RUNS).exists() and len(report.read_csv(out / name / report.RUNS)) == len(specs):
        return report.read(out / name / report.RUNS)
    results = pool.map(train_one, [(name, s) for s in specs])
    runs = report.frame([r for r, _ in results], report.RUNS_COLUMNS)
    steps = report.frame([s for _, st in results for s in st], report.STEPS_COLUMNS)
    report.write_atomic(out / name / report.RUNS, runs)
    report.write_atomic(out / name / report.STEPS, steps)
    return runs


def effects(base: pd.DataFrame, cand: pd.DataFrame) -> pd.Series:
    """Per config (its first run_id): |mean relative change of the final loss| over paired seeds;
    inf where a run's status changed (the change is then not a shift of the loss)."""
    key = compare.CONFIG + ["seed"]
    m = report.with_axis_defaults(base).merge(report.with_axis_defaults(cand), on=key, suffixes=("_b", "_c"))
    m["rel"] = (m["final_loss_c"] - m["final_loss_b"]) / m["final_loss_b"].abs()
    m.loc[m["status_b"] != m["status_c"], "rel"] = float("inf")
    g = m.sort_values("seed").groupby(compare.CONFIG, dropna=False)
    return pd.Series({grp["run_id_b"].iloc[0]: abs(grp["rel"].mean()) for _, grp in g})


def judge(change: Change, runs: pd.DataFrame, steps: pd.DataFrame, base: Path) -> dict:
    """Verdict counts on the configs the change touches and on the others (compare with the
    baseline's noise and per-step curve noise, as ``diagnostics compare`` does)."""
    b = report.read(base / report.RUNS)
    b = b[b["seed"].isin(set(runs["seed"]))]
    tol, env = compare.read_tolerances(base, None)
    table = compare.compare_reports(b, runs, None, steps, tolerances=tol, envelope=env)
    touched = table.apply(lambda r: change.touches(r), axis=1)
    effect = table["run_id"].map(effects(b, runs))
    visible = touched & (table["mde"].astype(float) < effect)
    found = table["verdict"].isin(BEYOND_NOISE)
    fails = table["failure"].fillna("") != ""
    counts = lambda t: ", ".join(f"{n} {v}" for v, n in t["verdict"].value_counts().items())  # noqa: E731
    return dict(change=change.name, kind=change.kind, what=change.what, touched=int(touched.sum()),
                touched_found=int((touched & found).sum()), visible=int(visible.sum()),
                visible_found=int((visible & found).sum()), untouched=int((~touched).sum()),
                touched_failing=int((touched & fails).sum()),
                untouched_flagged=int((~touched & (found | fails)).sum()), touched_verdicts=counts(table[touched]),
                untouched_verdicts=counts(table[~touched]),
                effect=float(effect[touched & np.isfinite(effect)].median()) if (touched & np.isfinite(effect)).any()
                else float("nan"),
                mde=float(table.loc[touched, "mde"].astype(float).median()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", default=",".join(c for c in CHANGES if c not in SLOW),
                        help="comma list (default: all but the slow ones; reports already complete under --out are reused)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="paired seeds (default: the baseline's five)")
    parser.add_argument("-n", type=int, default=2, help="worker processes")
    parser.add_argument("--out", default="reports/sensitivity", help="where each change's report goes")
    parser.add_argument("--baseline", default=None, help="a calibrated baseline folder of the default grid "
                        "(default: the committed one)")
    args = parser.parse_args()
    base = Path(args.baseline) if args.baseline else baseline.directory("default")
    seeds = tuple(int(x) for x in args.seeds.split(","))
    rows = []
    with mp.get_context("spawn").Pool(args.n) as pool:
        for name in args.changes.split(","):
            t0 = time.perf_counter()
            runs = run_change(pool, name, Path(args.out), seeds)
            rows.append(judge(CHANGES[name], runs, report.read(Path(args.out) / name / report.STEPS), base))
            print(f"{name}: {rows[-1]['touched_verdicts']} | untouched: {rows[-1]['untouched_verdicts']} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{len(seeds)} paired seeds a side; 'visible': touched configs whose stated mde is below the change's effect")
    print("| change | kind | touched | found beyond noise | failing the check | visible (mde < effect) | visible found "
          "| untouched flagged | effect (median) | mde (median) | verdicts (touched) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['kind']} | {r['touched']} | {r['touched_found']}/{r['touched']} | "
              f"{r['touched_failing']}/{r['touched']} | {r['visible']} | {r['visible_found']}/{r['visible']} | "
              f"{r['untouched_flagged']}/{r['untouched']} | {r['effect']:.2%} | {r['mde']:.2%} | "
              f"{r['touched_verdicts']} |")


if __name__ == "__main__":
    main()
