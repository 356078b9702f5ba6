"""Reproducibility: is this stack deterministic, can training resume exactly, does DDP agree with
one process, do devices agree? Results go to repro.csv (run_id, check, result, first_diff_step,
max_abs_diff, detail); with several --seeds the session also writes seeds.csv.

- twice_same: each grid config trained twice -> bitwise identical trace and weights. On CPU a
  difference fails; elsewhere it is reported as nondeterministic (first differing step, largest
  difference) and fails only where the baseline's repro.csv recorded the check as identical.
- resume: N steps in one go vs N/2, checkpoint (torch.save), load (weights_only=True) into fresh
  objects, N/2 more -> identical trace and weights, for every optimizer x scheduler x warmup.
- ddp: gpt and resnet under DistributedDataParallel with 2 processes vs one process, same
  global batch (see diagnostics/ddp.py for BatchNorm).
- cross_device: CPU vs CUDA, when a CUDA device is present.
"""

from dataclasses import replace

import pytest

from diagnostics import devices, repro
from diagnostics.ddp import ddp_check
from diagnostics.spec import RunSpec

GRID = "default"
DDP_MODELS = ("gpt", "resnet")


def run_kw(session):
    return dict(data_dir=session.data_dir, data_root=session.data_root, worker=session.worker)


def final_loss_tol(session, spec: RunSpec) -> float | None:
    """The config's calibrated final-loss tolerance from the baseline, if it has one."""
    tol = session.baseline(spec.grid).tolerance(dict(spec.to_dict(), model_size=spec.size))
    return None if tol is None else float(tol["final_loss_tol"])


def judge(session, spec, result: dict, strict: bool) -> None:
    session.record_repro(result)
    assert result["result"] != "error", result["detail"]
    if result["result"] == "identical":
        return
    recorded = session.baseline(spec.grid).repro_result(spec.id, result["check"])
    if strict or recorded == "identical":
        raise AssertionError(f"{spec.id}: {result['check']} not reproducible: {result['detail']} "
                             f"(first differing step {result['first_diff_step']}, max diff {result['max_abs_diff']:.3g})")


def test_twice_same(run_spec, diagnostics_session):
    judge(diagnostics_session, run_spec, repro.twice_same(run_spec, **run_kw(diagnostics_session)),
          strict=run_spec.device == "cpu")


def test_resume(run_spec, diagnostics_session):
    judge(diagnostics_session, run_spec, repro.resume(run_spec, **run_kw(diagnostics_session)),
          strict=run_spec.device == "cpu")


@pytest.mark.parametrize("model", DDP_MODELS)
def test_ddp(model, diagnostics_session):
    s = diagnostics_session
    grid = s.grid(GRID)
    spec = RunSpec(model, "adamw", "cosine", "linear", "cpu", steps=grid.steps, grid=grid.name)
    result = ddp_check(spec, s.data_dir, tol=final_loss_tol(s, spec))
    s.record_repro(result)
    if result["result"] == "skipped":
        pytest.skip(result["detail"])
    assert result["result"] == "close", result["detail"]


@pytest.mark.parametrize("model", DDP_MODELS)
def test_cross_device(model, diagnostics_session):
    if not devices.is_available("cuda"):
        pytest.skip("no CUDA device: the CPU vs CUDA check needs one")
    s = diagnostics_session
    grid = s.grid(GRID)
    spec = replace(RunSpec(model, "adamw", "cosine", "linear", "cpu", steps=grid.steps, grid=grid.name))
    result = repro.cross_device(spec, "cuda", tol=final_loss_tol(s, spec), **run_kw(s))
    s.record_repro(result)
    assert result["result"] == "close", result["detail"]
