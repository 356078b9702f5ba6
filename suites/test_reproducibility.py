"""Reproducibility: is this stack deterministic, can training resume exactly, does DDP agree with
one process, do devices agree? Results go to repro.csv (run_id, check, result, first_diff_step,
max_abs_diff, detail); with several --seeds the session also writes seeds.csv.

- twice_same: each grid config trained twice -> bitwise identical trace and weights. On CPU a
  difference fails; elsewhere it is reported as nondeterministic (first differing step, largest
  difference) and fails only where the baseline's repro.csv recorded the check as identical.
- resume: N steps in one go vs N/2, checkpoint (torch.save), load (weights_only=True) into fresh
  objects, N/2 more -> identical trace and weights, for every optimizer x scheduler x warmup.
- ddp: gpt and resnet (those of --models) under DistributedDataParallel with 2 processes vs one
  process, same global batch, on each device of --devices (CUDA: one GPU per rank, else a
  stated skip; see diagnostics/run/parallel.py for BatchNorm).
- cross_device: CPU vs each accelerator of --devices (a stated skip when there is none).
"""

from dataclasses import replace

import pytest

from diagnostics.grid.spec import RunSpec
from diagnostics.judge import compare, repro

GRID = "default"
DDP_MODELS = ("gpt", "resnet")


def run_kw(session):
    return dict(data_dir=session.data_dir, data_root=session.data_root, worker=session.worker)


def final_loss_tol(session, spec: RunSpec) -> float | None:
    """The config's final-loss noise band from the baseline's calibration, if it has one."""
    return compare.noise_band(session.baseline(spec.grid).tolerance(spec.to_dict()))


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


def pytest_generate_tests(metafunc):
    """DDP and cross-device checks per model of the grid (gpt, resnet) and per device of
    ``--devices``: DDP on each device type, cross-device for CPU against each other type."""
    from diagnostics.pytest_plugin import SESSION

    if not {"ddp_spec", "cross_device_spec"} & set(metafunc.fixturenames):
        return
    grid = metafunc.config.stash[SESSION].grid(GRID)
    models = [m for m in DDP_MODELS if m in grid.models]
    base = [RunSpec(model=m, optimizer="adamw", scheduler="cosine", warmup="linear", device="cpu", steps=grid.steps,
                    model_size=grid.model_size, grid=grid.name)
            for m in models]
    if "ddp_spec" in metafunc.fixturenames:
        specs = [replace(b, device=d) for d in grid.devices for b in base]
        metafunc.parametrize("ddp_spec", specs, ids=[s.id for s in specs])
    else:
        others = [d for d in grid.devices if d != "cpu"] or ["none"]
        pairs = [(b, d) for d in others for b in base]
        metafunc.parametrize("cross_device_spec", pairs, ids=[f"{b.id}-vs-{d}" for b, d in pairs])


def test_ddp(ddp_spec, diagnostics_session):
    s = diagnostics_session
    result = repro.ddp_check(ddp_spec, s.data_dir, tol=s.baseline(ddp_spec.grid).tolerance(ddp_spec.to_dict()))
    s.record_repro(result)
    if result["result"] == "skipped":
        pytest.skip(result["detail"])
    from diagnostics.judge import parallel

    assert parallel.failure(result["result"], s.policy.allow_no_baseline) is None, result["detail"]


def test_cross_device(cross_device_spec, diagnostics_session):
    spec, other = cross_device_spec
    if other == "none":
        pytest.skip("no accelerator among --devices: the CPU vs accelerator check needs one")
    s = diagnostics_session
    result = repro.cross_device(spec, other, tol=final_loss_tol(s, spec), **run_kw(s))
    s.record_repro(result)
    assert result["result"] == "close", result["detail"]
