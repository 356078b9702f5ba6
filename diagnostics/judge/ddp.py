"""The grid's recipes under ``torch.distributed`` DistributedDataParallel, against one process
with the same global batch.

Each of ``world_size`` processes (gloo on CPU, NCCL on CUDA) takes rows ``rank::world_size`` of
the very global batch the single process trains on, so DDP's gradient average equals the
single-process gradient up to the order of float sums. BatchNorm: on CUDA the model's BatchNorm
layers become SyncBatchNorm (statistics over the global batch, as in one process);
SyncBatchNorm does not run on CPU, so a CPU ResNet normalises each rank's half-batch with its own
statistics. That trains a different function, which no tolerance for rounding covers: for it the
check is ``skipped`` with that reason (its numbers are still in the row), never a hollow pass.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from diagnostics.grid import data
from diagnostics.grid.models import build_model, task_loss
from diagnostics.grid.recipes import after_optimizer_step
from diagnostics.grid.spec import RunSpec
from diagnostics.run import determinism, train


class LossModule(nn.Module):
    """Routes the model's loss through DDP's forward, so gradient hooks fire."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, y, *inputs):
        return task_loss(self.model, self.task, (inputs, y))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def rank_device(device_type: str, rank: int) -> torch.device:
    """Each rank its own device: ``cuda:rank`` (the caller checks there are enough GPUs:
    ``missing_devices``), the CPU for gloo."""
    return torch.device(f"cuda:{rank}") if device_type == "cuda" else torch.device("cpu")


def missing_devices(device_type: str, world_size: int) -> str:
    """Why ``world_size`` ranks cannot each have their own device ("" when they can)."""
    if device_type == "cuda" and torch.cuda.device_count() < world_size:
        return (f"DDP on cuda needs {world_size} GPUs (one per rank); {torch.cuda.device_count()} visible: "
                "ranks sharing a GPU would not test NCCL across devices")
    return ""


def backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def _worker(rank: int, world: int, port: int, spec: RunSpec, data_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = rank_device(spec.device, rank)
    if device.type == "cuda":
        determinism.configure_process()  # before the first cuBLAS call
        torch.cuda.set_device(device)  # NCCL's device for this rank
    dist.init_process_group(backend(device.type), rank=rank, world_size=world)
    try:
        determinism.apply(spec.seed, device.type)
        s = train.setup(spec, device, Path(data_dir), None)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(s.model) if device.type == "cuda" else s.model
        ddp = nn.parallel.DistributedDataParallel(LossModule(model, s.ds.task))  # SyncBatchNorm keeps the same Parameters
        steps = []
        for step in range(1, spec.steps + 1):
            inputs, y = data.train_batch(s.ds, spec.seed, step, s.batch_size, device)
            lr = s.opt.param_groups[0]["lr"]
            with s.autocast:
                loss = ddp(y[rank::world], *(t[rank::world] for t in inputs))
            s.opt.zero_grad(set_to_none=True)
            loss.backward()
            # the global norm as the single-process loop computes it
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
                [p.grad for p in s.params if p.grad is not None])))
            s.opt.step()
            after_optimizer_step(s.sched, step, spec.steps)
            mean_loss = loss.detach().float().clone()
            dist.all_reduce(mean_loss)  # equal shards: the mean of the shard means is the batch mean
            steps.append(dict(step=step, lr=lr, loss=float(mean_loss) / world, grad_norm=float(grad_norm)))
        if rank == 0:
            Path(out).write_text(json.dumps(dict(steps=steps, weights_sha256=train.weights_sha256(model))))
    finally:
        dist.destroy_process_group()


def ddp_steps(spec: RunSpec, data_dir: Path, world_size: int = 2) -> tuple[list[dict], str]:
    """(rank 0's per-step lr / batch-mean loss / grad norm, final weights hash) of a DDP run."""
    data.for_model(spec.model, spec.model_size, data_dir)  # written once, here
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "steps.json"
        mp.start_processes(_worker, args=(world_size, free_port(), spec, str(data_dir), str(out)),
                           nprocs=world_size, start_method="spawn")
        result = json.loads(out.read_text())
    return result["steps"], result["weights_sha256"]


def ddp_check(spec: RunSpec, data_dir: Path, world_size: int = 2, tol: float | None = None) -> dict:
    """repro.csv row: DDP on ``world_size`` processes vs one process, same global batch; the
    final losses agree as ``repro.final_loss_agrees`` says (``tol``: the calibrated one)."""
    from diagnostics.judge.repro import DDP_RTOL, DDP_STEPS, final_loss_agrees, row

    absent = missing_devices(spec.device, world_size)
    if absent:
        return row(spec, "ddp", "skipped", detail=absent)
    if spec.layout != "full":  # shards of unequal real tokens: the mean of shard means is not the batch's
        return row(spec, "ddp", "skipped", detail=f"the DDP check trains full batches; {spec.layout} is not checked")
    single = train.run(spec, data_dir)
    steps, _ = ddp_steps(spec, data_dir, world_size)
    ref = {s["step"]: s["loss"] for s in single.steps}
    diffs = [abs(s["loss"] - ref[s["step"]]) for s in steps if s["step"] in ref]
    k = min(DDP_STEPS, len(diffs))
    first_rel = max((abs(s["loss"] - ref[s["step"]]) / abs(ref[s["step"]]) for s in steps[:k]), default=math.nan)
    tail = max(1, round(0.1 * len(steps)))
    ddp_final = sum(s["loss"] for s in steps[-tail:]) / tail
    info = data.for_model(spec.model, spec.model_size, data_dir).info
    bn = has_batchnorm(build_model(spec.model, spec.model_size, info))
    per_rank_bn = bn and spec.device == "cpu"
    final_ok, how = final_loss_agrees(single.row["final_loss"], ddp_final, tol)
    detail = (f"{world_size} processes ({backend(spec.device)}): final loss {ddp_final:.4g} vs "
              f"{single.row['final_loss']:.4g} ({how}); first {k} steps max rel diff {first_rel:.2g} (tolerance {DDP_RTOL:g})")
    first_diff = next((float(s["step"]) for s in steps if s["step"] in ref and s["loss"] != ref[s["step"]]), math.nan)
    if per_rank_bn:
        result = "skipped"
        detail = "per-rank BatchNorm on CPU (no SyncBatchNorm) trains another function: not comparable; " + detail
    else:
        result = "close" if final_ok and first_rel <= DDP_RTOL else "far"
    return row(spec, "ddp", result, first_diff, max(diffs, default=math.nan), detail)
