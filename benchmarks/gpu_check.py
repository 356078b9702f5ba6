"""The prepared GPU check: everything the CUDA paths do, in one script of about 8 minutes on one
H100, writing one results folder.

    python benchmarks/gpu_check.py --out DIR [--budget-s 420]

Steps (each a real ``diagnostics run`` session on ``--devices cuda``; every session also writes
pytest's JUnit XML):

1. ``smoke``: the smoke grid (gpt and ResNet-8, AdamW and SGD).
2. ``release-eager``: the release axes without compile: gpt and ResNet-8 x AdamW x for-loop /
   foreach / fused x fp32 / tf32 / bf16 / fp16 (24 runs); ``release-compile``: fused AdamW x
   aot_eager / inductor x fp32 / bf16 (8 runs).
3. ``repro``: the reproducibility suite on the smoke grid: twice-same, resume, DDP (a stated skip
   with fewer than 2 GPUs), CPU vs CUDA.
4. ``attention``: gpt x AdamW x each attention kernel (math, flash, memory-efficient, cuDNN) x
   fp32 / bf16 (8 runs; a kernel the GPU or release lacks is a stated skip): the row's
   ``sdpa_backend`` says which kernel ran, ``deterministic`` whether it was.
   ``repeat-noise``: ``diagnostics calibrate`` of gpt x AdamW x the memory-efficient kernel x bf16
   with the ``repeat1,repeat2`` perturbations only (the same run again): the run-to-run noise of
   a nondeterministic kernel, into a scratch baseline folder (the committed ones are not touched).
5. ``masks``: gpt x AdamW x the four batch layouts x contexts 100 and 192 x the kernels that take
   a mask (default, math, memory-efficient, cuDNN) x fp32 / bf16 (64 runs): which kernel ran each
   padded or packed batch, and whether any went non-finite (its origin in the row's reason).
6. ``nightly-w4``: a slice of the nightly grid (gpt-small, ResNet-20, resnet18 x AdamW and SGD x
   fp32 / bf16, 100 steps: 12 runs) with 4 xdist workers per GPU (1, 2 and 4 were measured
   before: 4 is the default): runs per minute.
7. ``nightly-shard``: shard 1/4 of the nightly grid itself with 4 workers per GPU: its wall time
   x 4 is the nightly grid's time on one GPU.
8. ``parallel``: the parallel part (gpt and ResNet x AdamW and SGD x fp32 / bf16 x none / DDP /
   FSDP2 x full / right-padded, seed 0) over NCCL, a rank per GPU, each distributed run checked
   against one process (``one_process_check``); with one GPU its distributed points are stated
   skips and the step says so.

Results: ``DIR/results.csv`` (a row per step: rc, wall time, runs, statuses, runs per minute),
``DIR/summary.md`` (the ``diagnostics summary`` of each session, and the estimate),
``DIR/log.txt`` and ``DIR/reports.tar.gz`` (every session's report folder: four files in all). A step that would
start after ``--budget-s`` is skipped and says so; a step that fails does not stop the others.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diagnostics import report  # noqa: E402
from diagnostics.grid import spec  # noqa: E402
from diagnostics.judge.verdicts import Policy  # noqa: E402
from diagnostics.present import summary  # noqa: E402

CUDA = ["--devices", "cuda", "--allow-no-baseline", "--quiet"]  # no CUDA baseline is committed yet
NIGHTLY_SLICE = ["--grid", "nightly", "--optimizers", "adamw,sgd", "--schedulers", "cosine", "--warmup", "linear",
                 "--impls", "default", "--compile", "none", "--precision", "fp32,bf16", "--steps", "100"]
NIGHTLY_SHARDS = 4  # the nightly grid's time: one shard of this many, measured, times this many
ATTENTION = ["--grid", "smoke", "--models", "gpt", "--optimizers", "adamw", "--attention", "math,flash,efficient,cudnn",
             "--precision", "fp32,bf16"]
# padded and packed batches at odd lengths (192 = 128 + 64: the tile case of pytorch#196678) under every
# CUDA kernel that takes a mask (flash takes none: a stated skip) x fp32 / bf16: 2 x 4 x 4 x 2 = 64 runs
MASKS = ["--grid", "release", "--models", "gpt", "--optimizers", "adamw", "--impls", "default", "--compile", "none",
         "--clip", "none", "--accumulation", "1", "--layout", "full,right,left,packed", "--context", "100,192",
         "--attention", "default,math,efficient,cudnn", "--precision", "fp32,bf16"]
REPEAT = ["calibrate", "--grid", "smoke", "--models", "gpt", "--optimizers", "adamw", "--attention", "efficient",
          "--precision", "bf16", "--devices", "cuda", "--perturbations", "repeat1,repeat2", "--perturb-seeds", "1"]
STEPS = [  # (name, diagnostics arguments (a run unless they start with another verb), workers per GPU, timeout s)
    ("smoke", ["--grid", "smoke", *CUDA], 2, 150),
    ("release-eager", ["--grid", "release", "--compile", "none", "--precision", "fp32,tf32,bf16,fp16",
                       "--layout", "full", "--context", "64", *CUDA], 4, 200),
    ("release-compile", ["--grid", "release", "--impls", "fused", "--compile", "aot_eager,inductor",
                         "--precision", "fp32,bf16", "--layout", "full", "--context", "64", *CUDA], 4, 240),
    ("masks", [*MASKS, *CUDA], 4, 150),
    ("repro", ["--suite", "reproducibility", "--grid", "smoke", "--devices", "cpu,cuda", "--quiet"], 2, 200),
    ("attention", [*ATTENTION, *CUDA], 4, 120),
    ("repeat-noise", REPEAT, 2, 150),
    ("nightly-w4", [*NIGHTLY_SLICE, *CUDA], 4, 150),
    ("nightly-shard", ["--grid", "nightly", "--shard", f"1/{NIGHTLY_SHARDS}", *CUDA], 4, 330),
    ("parallel", ["--grid", "parallel", "--seeds", "0", *CUDA], 1, 200),
]


def run_step(name: str, args: list[str], per_gpu: int, timeout: int, work: Path, log) -> dict:
    """One diagnostics session; its row of results.csv."""
    report_dir = work / name
    if args[0] == "calibrate":  # its sessions go under the step's folder, its noise into a scratch baseline
        cmd = [sys.executable, "-m", "diagnostics", *args, "-n", "gpus", "--work-dir", str(report_dir),
               "--baseline", str(report_dir / "baseline")]
        report_dir = report_dir / "baseline"
    else:
        cmd = [sys.executable, "-m", "diagnostics", "run", *args, "-n", "gpus", "--report-dir", str(report_dir),
               "--", f"--junitxml={report_dir}/junit.xml", "-p", "no:cacheprovider"]
    env = dict(os.environ, DIAGNOSTICS_WORKERS_PER_GPU=str(per_gpu), PYTHONUNBUFFERED="1")
    log.write(f"\n=== {name}: {' '.join(cmd[1:])}\n")
    log.flush()
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    row = dict(step=name, rc=rc, wall_s=round(wall, 1), workers_per_gpu=per_gpu, runs=0, statuses="", runs_per_min=None,
               mean_run_s=None, mean_steps_per_s=None, nondeterministic=None)
    runs_path = report_dir / report.RUNS
    if runs_path.exists():
        runs = report.read(runs_path)
        trained = runs[runs["status"] != "skipped"]
        row.update(runs=len(runs), statuses=summary.counts(runs["status"]),
                   runs_per_min=round(len(trained) / wall * 60, 1),
                   mean_run_s=round(float(trained["runtime_s"].mean()), 2) if len(trained) else None,
                   mean_steps_per_s=round(float(trained["steps_per_s"].mean()), 1) if len(trained) else None,
                   nondeterministic=int((trained["deterministic"].astype(str) == "False").sum()))
    if (report_dir / "tolerances.csv").exists():  # the repeat noise: final-loss noise relative to the loss
        tol = report.read_csv(report_dir / "tolerances.csv")
        rel = (tol["final_loss_noise"] / tol["final_loss_reference"].abs()).round(8).tolist()
        row["statuses"] += f" | repeat noise (final loss, relative): {rel}"
    if runs_path.exists() and "one_process_check" in runs.columns:  # the distributed runs against one process
        checks = runs["one_process_check"].dropna()
        if len(checks):
            row["statuses"] += " | one process: " + summary.counts(checks)
    if (report_dir / "repro.csv").exists():
        repro = report.read_csv(report_dir / "repro.csv")
        row["statuses"] += " | repro: " + summary.counts(repro["check"] + ":" + repro["result"])
    return row


def nightly_estimate(results: pd.DataFrame) -> str:
    """The nightly grid's minutes on this GPU: the measured shard's wall time times the number of
    shards (``spec.shard`` interleaves the grid, so each shard holds every kind of run)."""
    n_runs = len(spec.resolve_grid(spec.GridOptions(grid="nightly", devices=("cuda",))).specs())
    lines = [f"- {r['workers_per_gpu']} worker(s) per GPU: {r['runs_per_min']} runs/min on the nightly slice"
             for r in results[results["step"].str.startswith("nightly-w")].to_dict("records") if r.get("runs")]
    shard = results[results["step"] == "nightly-shard"].to_dict("records")
    if shard and shard[0].get("runs") and str(shard[0]["rc"]) != "timeout":
        r = shard[0]
        lines.append(f"- nightly grid: {n_runs} runs; shard 1/{NIGHTLY_SHARDS} ({r['runs']} runs) took {r['wall_s']:.0f} s "
                     f"with {r['workers_per_gpu']} workers per GPU: the whole grid about "
                     f"{r['wall_s'] * NIGHTLY_SHARDS / 60:.1f} min on one GPU")
    return "\n".join(lines)


def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU (rehearsal on CPU)"
    return f"{torch.cuda.get_device_name()} x {torch.cuda.device_count()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--budget-s", type=float, default=420, help="start no step after this many seconds")
    ap.add_argument("--only", help="comma list of step names (default: all)")
    ap.add_argument("--rehearse", action="store_true", help="no GPU: every step on CPU with 4-step gpt runs, to "
                                                            "check the script itself before a GPU is lent")
    a = ap.parse_args(argv)
    import torch

    steps = STEPS
    if a.rehearse:
        # on CPU: no repeat noise (a rerun is bitwise the same) and no memory-efficient kernel
        cpu = {"cuda": "cpu", "cpu,cuda": "cpu", "repeat1,repeat2": "threads2", "efficient": "math"}
        steps = [(n, [cpu.get(x, x) for x in args] + ["--models", "gpt", "--steps", "4", "--size", "tiny"], k, t)
                 for n, args, k, t in STEPS]
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device: this check needs a GPU (--rehearse runs it on CPU)", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))  # the sessions' reports: tarred into out at the end
    only = set(a.only.split(",")) if a.only else None
    t0 = time.perf_counter()
    rows = []
    with open(out / "log.txt", "w") as log:
        log.write(f"torch {torch.__version__}, {device_name()}\n")
        for name, args, per_gpu, timeout in steps:
            if only and name not in only:
                continue
            elapsed = time.perf_counter() - t0
            if elapsed > a.budget_s:
                rows.append(dict(step=name, rc="not run: budget", wall_s=0.0, workers_per_gpu=per_gpu))
                continue
            rows.append(run_step(name, args, per_gpu, int(min(timeout, a.budget_s + 60 - elapsed)), work, log))
            print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False)  # kept if the check is stopped later
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    parts = [f"# GPU check: torch {torch.__version__}, {device_name()}, {time.perf_counter() - t0:.0f} s", "",
             *summary.table(results.to_dict("records"), [(c, c, "") for c in results.columns]), "",
             "## Nightly grid estimate", "", nightly_estimate(results)]
    for name in results["step"]:
        if (work / name / report.RUNS).exists():
            parts += ["", summary.write(work / name, title=name, policy=Policy(allow_no_baseline=True))]
    (out / "summary.md").write_text("\n".join(parts))
    with tarfile.open(out / "reports.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="work")
    print("\n".join(parts[:6]))
    return 0 if all(str(r.get("rc")) == "0" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
