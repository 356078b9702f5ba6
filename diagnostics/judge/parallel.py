"""A distributed run against one process: did the wrapper train the function one process trains?

Each rank of a ``ddp`` / ``fsdp`` run takes its rows of the global batch that the single-process
reference trains on (``run.parallel.one_process_of``), so the two differ only in the order of
sums. Two tests, each with a measured tolerance, never a guessed rtol:

- **the first gradient**: at step 1 both hold the same weights and batch, so their gradient norms
  differ only by rounding. ``FIRST_GRAD_RTOL`` is ten times the largest relative difference
  measured between distributed and one-process first gradients (``benchmarks/parallel_noise.py``,
  ``docs/measured/parallel-noise.csv``). A gradient summed over 2 ranks instead of averaged is
  off by 100%, whatever the optimizer (Adam would hide it from the losses);
- **the run**: the distributed run judged against its reference as a candidate against a
  baseline (``compare.check_run``), with the measured noise of the distributed config where it
  was calibrated, else of the reference config (the rounding-only perturbations of one process:
  reordered sums among them). ``identical`` or ``equivalent`` is close.

``close`` passes; ``far`` fails; ``unjudged`` (no reference, or no noise to judge the run with)
fails unless the session allows a missing baseline: a check that checked nothing is no pass.
"""

from __future__ import annotations

import math

from diagnostics.judge import compare

# The measured relative difference of the step-1 gradient norm, distributed vs one process, on
# gpt x AdamW/SGD x full/right/packed x seeds 0-1 with 2 gloo ranks (48 pairs,
# docs/measured/parallel-noise.csv): fp32 at most 1.4e-7 (about one float32 ulp of the norm); bf16
# at most 1.3e-4 (DDP under autocast) and 5.3e-4 (FSDP2's policy against its world of one: the
# reduce-scatter sums bfloat16 halves). Ten times the largest of each. tf32 and fp16 are CUDA's and
# were not measured here: they take bf16's (mantissas of 10-11 bits round no coarser than bf16's 8).
FIRST_GRAD_RTOL = {"fp32": 1.5e-6, "bf16": 5.3e-3, "tf32": 5.3e-3, "fp16": 5.3e-3}
CLOSE_VERDICTS = ("identical", "equivalent")
CHECKS = ("close", "far", "unjudged", "skipped")


def first_grad(steps: list[dict]) -> float:
    first = [s for s in steps if int(s["step"]) == 1]
    return float(first[0]["grad_norm"]) if first else math.nan


def first_gradient_test(run_steps: list[dict], ref_steps: list[dict], precision: str) -> tuple[bool | None, str]:
    """(True: within rounding, False: beyond it, None: no first step to compare; the line)."""
    g, r = first_grad(run_steps), first_grad(ref_steps)
    if not (math.isfinite(g) and math.isfinite(r)) or r == 0:
        return None, "no finite step-1 gradient norm on both sides"
    rel = abs(g - r) / abs(r)
    limit = FIRST_GRAD_RTOL[precision]
    line = f"step-1 gradient norm {g:.6g} vs {r:.6g} ({g / r:.4g}x, rel {rel:.2g}; rounding <= {limit:.2g})"
    return rel <= limit, line


def against_one_process(run: dict, run_steps: list[dict], ref: dict | None, ref_steps: list[dict],
                        tol: dict | None, margin: float, runs_judged: int = 1) -> dict:
    """The check of one distributed run (its runs.csv row and steps) against its single-process
    reference (None: there is none): ``check`` (one of CHECKS) and ``detail`` in one line."""
    if run["status"] == "skipped":
        return dict(check="skipped", detail=run.get("status_reason", ""))
    if ref is None:
        return dict(check="unjudged", detail="no single-process reference run")
    for side, row in (("the run", run), ("its one-process reference", ref)):
        if row["status"] in ("error", "skipped"):
            return dict(check="unjudged", detail=f"{side} is {row['status']}: {row.get('status_reason', '')}")
    grad_ok, grad_line = first_gradient_test(run_steps, ref_steps, run["precision"])
    verdict = compare.check_run(run, dict(ref, run_id=run["run_id"]), tol, margin, run_steps, runs_judged=runs_judged)
    run_line = f"the run: {verdict['verdict']} ({verdict['detail']})"
    if grad_ok is False or (verdict["verdict"] not in CLOSE_VERDICTS and verdict["verdict"] != "unjudged"):
        check = "far"
    elif verdict["verdict"] == "unjudged" or grad_ok is None:
        check = "unjudged"
    else:
        check = "close"
    return dict(check=check, detail=f"{grad_line}; {run_line}")


def failure(check: str, allow_unjudged: bool) -> str | None:
    """Why a one-process check fails its run, or None."""
    if check == "far":
        return "the distributed run is beyond rounding of the single-process one"
    if check == "unjudged" and not allow_unjudged:
        return "nothing to judge the distributed run against one process with (--allow-no-baseline to accept)"
    return None
