"""The parallel axis: DDP and FSDP2 on 2 gloo ranks, each run checked against one process."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace

import pytest

from diagnostics.grid import parallel as axis
from diagnostics.grid.spec import GRIDS, GridOptions, RunSpec, resolve_grid
from diagnostics.judge import parallel as one_process
from diagnostics.run import parallel, train
from diagnostics.run.faults import Fault
from tests.conftest import cli

GPT = RunSpec(model="gpt", optimizer="sgd", scheduler="cosine", warmup="linear", device="cpu", steps=6)


def test_the_axis_names_its_runs_and_the_release_presets_cover_it():
    assert replace(GPT, parallel="ddp").id == "gpt-sgd-cosine-linear-cpu-fp32-ddp-s0"
    assert replace(GPT, parallel="none").id == GPT.id  # ids of one-process runs never change
    for name in ("release", "changelog", "parallel"):
        specs = resolve_grid(GridOptions(grid=name, devices=("cpu",))).specs()
        distributed = [s for s in specs if s.parallel != "none"]
        assert {s.parallel for s in distributed} == {"ddp", "fsdp"}
        assert {s.model for s in distributed} == {"gpt", "resnet"}
        assert {s.optimizer for s in distributed} == {"adamw", "sgd"}
        assert {(s.parallel, s.precision) for s in distributed} >= {("fsdp", "fp32"), ("fsdp", "bf16")}
        assert "right" in {s.layout for s in distributed}
        ids = {s.id for s in specs}
        assert all(parallel.one_process_of(s).id in ids for s in distributed if not parallel.policy_point(s))
    assert {s.parallel for s in resolve_grid(GridOptions(grid="default", devices=("cpu",))).specs()} == {"none"}
    assert "ddp" in {s.parallel for s in GRIDS["nightly"].parts[-1].specs()} or GRIDS["nightly"].parts[-1].parallels


@pytest.mark.parametrize("device_type, world, gpus, cpus, says", [
    ("cpu", 2, 0, 2, ""),
    ("cpu", 3, 0, 2, "needs a core per rank"),
    ("cpu", 1, 0, 2, "at least 2 ranks"),
    ("cuda", 1, 1, 16, "at least 2 GPUs"),
    ("cuda", 4, 2, 16, "needs 4 GPUs"),
    ("cuda", 2, 2, 16, ""),
])
def test_a_world_the_machine_cannot_hold_is_said(device_type, world, gpus, cpus, says):
    why = axis.unavailable(device_type, world, gpus, cpus)
    assert (says in why) if says else why == ""


def steps(*norms):
    return [dict(step=i + 1, grad_norm=g, loss=1.0, lr=0.1) for i, g in enumerate(norms)]


@pytest.mark.parametrize("precision, ratio, within", [
    ("fp32", 1 + 2**-23, True), ("fp32", 2.0, False), ("fp32", 1.0001, False),
    ("bf16", 1.001, True), ("bf16", 1.01, False), ("bf16", 2.0, False),
])
def test_the_first_gradient_is_judged_with_the_measured_rounding(precision, ratio, within):
    ok, line = one_process.first_gradient_test(steps(1.5 * ratio), steps(1.5), precision)
    assert ok is within
    assert f"{ratio:.4g}x" in line


def test_the_first_gradient_with_nothing_to_compare_is_not_a_pass():
    assert one_process.first_gradient_test([], steps(1.0), "fp32")[0] is None
    assert one_process.failure("unjudged", allow_unjudged=False)
    assert one_process.failure("unjudged", allow_unjudged=True) is None
    assert one_process.failure("far", allow_unjudged=True)
    assert one_process.failure("close", allow_unjudged=False) is None


@pytest.fixture(scope="module")
def single(data_dir):
    return train.run(GPT, data_dir)


def test_ddp_and_fsdp_train_the_one_process_function(data_dir, single):
    for kind in ("ddp", "fsdp"):
        run = parallel.run(replace(GPT, parallel=kind), data_dir=data_dir)
        assert run.status == "converged", run.row["status_reason"]
        assert (run.row["world_size"], run.row["backend"], run.row["reduce_dtype"]) == (2, "gloo", "float32")
        check = one_process.against_one_process(run.row, run.steps, single.row, single.steps, None, 0.05)
        assert check["detail"].startswith("step-1 gradient norm")
        ok, _ = one_process.first_gradient_test(run.steps, single.steps, "fp32")
        assert ok
        assert abs(run.row["final_loss"] - single.row["final_loss"]) < 1e-5


def test_a_gradient_summed_over_the_ranks_fails_the_check_whatever_the_optimizer(data_dir):
    """2x the gradient (what FSDP2 on gloo did in torch 2.7 and 2.8) fails even under AdamW,
    whose losses barely feel the scale."""
    for optimizer in ("sgd", "adamw"):
        spec = replace(GPT, optimizer=optimizer, parallel="ddp")
        ref = train.run(parallel.one_process_of(spec), data_dir)
        doubled = parallel.run(spec, data_dir=data_dir, fault=Fault("grad_scale", step=1, magnitude=2.0, duration=10**6))
        check = one_process.against_one_process(doubled.row, doubled.steps, ref.row, ref.steps, None, 0.05)
        assert check["check"] == "far", check
        assert "2x" in check["detail"]


def test_the_bf16_policy_records_the_reduce_dtype_torch_resolved(data_dir):
    """The policy asks reduce_dtype=None; torch reduces in the parameters' bfloat16: the row says
    what the collectives ran in, and the check runs against the same policy on one rank."""
    spec = replace(GPT, parallel="fsdp", precision="bf16")
    run = parallel.run(spec, data_dir=data_dir)
    assert run.status == "converged", run.row["status_reason"]
    assert (run.row["param_dtype"], run.row["reduce_dtype"]) == ("bfloat16", "bfloat16")
    ref = parallel.reference(spec, data_dir=data_dir)
    assert ref.row["world_size"] == 1
    ok, line = one_process.first_gradient_test(run.steps, ref.steps, "bf16")
    assert ok, line


def test_a_resnet_with_batchnorm_on_the_cpu_is_a_stated_skip(data_dir):
    run = parallel.run(replace(GPT, model="resnet", parallel="ddp"), data_dir=data_dir)
    assert run.status == "skipped" and "BatchNorm" in run.row["status_reason"]


def test_a_rank_that_dies_is_an_error_row_naming_it_and_the_group_restarts(data_dir):
    group = parallel.group("cpu", 2)
    spec = replace(GPT, parallel="ddp", steps=3000)

    def kill_rank_1():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (group.procs and group.procs[1].is_alive()):
            time.sleep(0.1)
        time.sleep(1)
        group.procs[1].kill()

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    run = parallel.run(spec, data_dir=data_dir)
    killer.join()
    assert run.status == "error"
    assert run.row["status_reason"].startswith("rank 1 died")
    again = parallel.run(replace(GPT, parallel="ddp"), data_dir=data_dir)  # a fresh group for the next point
    assert again.status == "converged"


def test_a_rank_that_does_not_answer_in_time_is_an_error_row(data_dir):
    run = parallel.run(replace(GPT, parallel="ddp", steps=3000), timeout=1, data_dir=data_dir)
    assert run.status == "error" and "no answer within 1 s" in run.row["status_reason"]


def test_bad_worlds_and_ports_are_one_line_before_training(tmp_path, monkeypatch):
    out = cli("run", "--grid", "smoke", "--models", "gpt", "--parallel", "ddp", "--world-size", "64",
              "--report-dir", tmp_path / "r", "-n", "0")
    assert out.returncode != 0
    assert "world size 64 on the CPU needs a core per rank" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("MASTER_PORT", str(taken.getsockname()[1]))
        out = cli("run", "--grid", "smoke", "--models", "gpt", "--parallel", "ddp", "--report-dir", tmp_path / "p",
                  "-n", "0")
    assert out.returncode != 0
    assert "the port is in use" in out.stdout + out.stderr
    assert not (tmp_path / "p" / "runs.csv").exists()


def origin_at(op, phase, reproduced=True):
    from diagnostics.run.origin import Origin

    return Origin(5, op, phase, "", "NaN", "", reproduced=reproduced)


@pytest.mark.parametrize("found, rank", [
    # rank 1 made it in its loss; rank 0 met it in the reduced gradients
    ([origin_at("aten::as_strided", "backward"), origin_at("aten::mul.Tensor", "loss")], 1),
    ([origin_at("c10d::allreduce_", "backward"), origin_at("aten::gelu", "backward")], 1),
    ([origin_at("aten::gelu", "forward"), origin_at("aten::gelu", "forward")], 0),
    ([origin_at("", "", reproduced=False), origin_at("aten::_softmax", "forward")], 1),
])
def test_the_nan_origin_names_the_rank_that_made_it(found, rank):
    from diagnostics.run.origin import across_ranks

    assert across_ranks(found).rank == rank
    assert f"rank {rank})" in across_ranks(found).line()


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_nan_made_on_one_rank_is_located_there(data_dir, kind):
    run = parallel.run(replace(GPT, parallel=kind, steps=10), data_dir=data_dir, fault=Fault("nan", step=5, rank=1))
    assert run.status == "diverged_nonfinite"
    assert "first NaN at step 5: aten::mul.Tensor (loss, rank 1)" in run.row["status_reason"]


def test_a_distributed_family_is_traced_on_its_ranks_with_its_collectives(data_dir):
    from diagnostics.release import numerics

    ops = {kind: {(r["phase"], r["op"]) for r in numerics.trace_distributed(replace(GPT, parallel=kind, precision=p),
                                                                             data_dir, None, 1)}
           for kind, p in (("ddp", "fp32"), ("fsdp", "bf16"))}
    assert ("backward", "c10d::allreduce_") in ops["ddp"]
    assert {("backward", "c10d::_reduce_scatter_base_"), ("forward", "c10d::_allgather_base_"),
            ("backward", "aten::_to_copy")} <= ops["fsdp"]  # the policy's bf16 gradients cast back to fp32


def test_a_wrapper_that_fails_inside_torch_is_a_stated_skip_and_other_failures_are_errors():
    """torch 2.6.0's FSDP2 raises inside its own all-gather on a gloo mesh: the release cannot run
    the wrapper (a skip with that line); an exception from anywhere else stays an error."""
    import torch.distributed as dist

    ranks = parallel.Ranks("fsdp", 0, 2, "cpu")
    try:
        dist.get_rank(group=object())  # raises inside torch/distributed
    except Exception as e:
        inside = e
    reason = ranks.wrapper_failure(inside)
    assert reason.startswith("torch ") and "fsdp cannot run on gloo (cpu)" in reason
    try:
        raise RuntimeError("a bug of the recipe")
    except RuntimeError as e:
        assert ranks.wrapper_failure(e) == ""
    assert train.ONE_PROCESS.wrapper_failure(inside) == ""


def test_calibration_perturbs_distributed_runs_too(data_dir):
    """The noise of a distributed config is measured like any config's: the perturbations that
    reach into a step (each gradient, each layer output) run on FSDP2's sharded gradients and
    change the run's bits."""
    spec = replace(GPT, parallel="fsdp", steps=3)
    plain = parallel.run(spec, data_dir=data_dir)
    for name in ("grad1", "fwd1"):
        run = parallel.run(spec, data_dir=data_dir, perturbation=name)
        assert run.status != "error", f"{name}: {run.row['status_reason']}"
        assert run.row["weights_sha256"] != plain.row["weights_sha256"], name


def test_a_changed_op_of_a_distributed_family_is_not_reproduced_alone_and_says_why():
    import pandas as pd

    from diagnostics.release import explain, questions

    table = pd.DataFrame([
        dict(family="gpt-sgd-cpu-fp32-fsdp", op="c10d::_reduce_scatter_base_", signature="float32[8]"),
        dict(family="gpt-sgd-cpu-fp32-ddp", op="aten::mm", signature="float32[4, 4]"),
    ]).assign(finding=explain.CHANGED_KERNEL, capability="", repro="", first_step=1)
    out = questions.confirmed_kernels(table, sessions=None, base="2.8.0", cand="2.9.1")
    assert (out["repro"] == questions.NO_RANKS_REPRO).all()


def test_a_padded_gather_buffer_is_judged_by_its_arguments_and_is_never_a_root():
    """A gather buffer's padding is never written (its output not hashed): its arguments are
    what two releases can differ in; the parameters split out of it were fed bytes no one hashed,
    so a change there is downstream, never a changed kernel."""
    from diagnostics.release import explain

    row = dict(op="fsdp::all_gather_copy_in.default", signature="float32[8]", input_hash="i", args_hash="a",
               output_hash="")
    assert explain.matched_finding(row, dict(row, args_hash="b")) == explain.CHANGED_ARGUMENTS
    assert explain.matched_finding(row, dict(row)) is None
    split = dict(op="fsdp::split_with_sizes_copy.default", signature="float32[64]", input_hash="", args_hash="a",
                 output_hash="x")
    assert explain.matched_finding(split, dict(split, output_hash="y")) == explain.DOWNSTREAM


def test_a_reduce_op_is_traced_by_its_kind():
    """SUM and AVG reach a collective as opaque script objects; the trace tells them apart."""
    import torch
    import torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode

    from diagnostics.release.numerics import scalar_repr

    seen = []

    class Args(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func).startswith("c10d."):
                seen.append([scalar_repr(a) for a in args if isinstance(a, torch.ScriptObject)])
            return func(*args, **(kwargs or {}))

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with Args():
            for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
                dist.all_reduce(torch.ones(2), op=op)
    finally:
        dist.destroy_process_group()
    assert [x[-1] for x in seen] == ["ReduceOp.0", "ReduceOp.1"]


def test_a_collective_s_output_is_traced_once_it_is_complete(data_dir):
    """A collective fills its output after it returns; the trace waits for it, so the
    reduce-scatter's output hash is the same in two traces (and a change of what it computes,
    from the same inputs and arguments, is a changed kernel)."""
    from diagnostics.release import numerics

    spec = replace(GPT, parallel="fsdp")
    a, b = (numerics.trace_distributed(spec, data_dir, None, 1) for _ in range(2))
    scatter = [(x["output_hash"], y["output_hash"]) for x, y in zip(a, b) if x["op"] == "c10d::_reduce_scatter_base_"]
    assert scatter and all(x == y and x for x, y in scatter)
