"""The ``parallel`` axis: how the model is parallelised across processes.

- ``none``: one process trains the whole global batch (every run before this axis existed);
- ``ddp``: ``torch.nn.parallel.DistributedDataParallel``, gradients all-reduced (averaged);
- ``fsdp``: FSDP2, ``fully_shard`` on each transformer block / ResNet block and on the root,
  parameters sharded over the ranks, gradients reduce-scattered. Its precision ``bf16`` is the
  mixed-precision policy people pass, ``MixedPrecisionPolicy(param_dtype=torch.bfloat16)`` with
  ``reduce_dtype`` left to torch's default (no autocast); ``fp32`` is no policy.

Every rank takes rows ``rank::world_size`` of the very global batch one process trains on, so a
distributed run computes the single-process function up to the order of sums (``run/parallel.py``;
``judge/parallel.py`` checks it). On the CPU the world is ``CPU_WORLD_SIZE`` processes over gloo;
on CUDA one process per GPU over NCCL (one GPU: a stated skip).
"""

from __future__ import annotations

PARALLELS = {
    "none": "one process, the whole global batch",
    "ddp": "DistributedDataParallel: each rank its rows of the global batch, gradients all-reduced",
    "fsdp": "FSDP2 fully_shard per block and at the root; precision bf16 = MixedPrecisionPolicy(param_dtype=bf16)",
}
DISTRIBUTED = ("ddp", "fsdp")
CPU_WORLD_SIZE = 2  # gloo processes on the CPU: the fewest that split a batch and reduce across ranks
FSDP_PRECISIONS = ("fp32", "tf32", "bf16")  # fsdp's bf16 is its policy; fp16 would need a sharded GradScaler


def backend(device_type: str) -> str:
    """The process-group backend of a device type: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device_type == "cuda" else "gloo"


def world_size(device_type: str, gpus: int, asked: int | None = None) -> int:
    """How many ranks a distributed run of ``device_type`` uses: ``asked`` where given (checked by
    ``unavailable``), else ``CPU_WORLD_SIZE`` on the CPU and every visible GPU on CUDA."""
    if asked is not None:
        return asked
    return gpus if device_type == "cuda" else CPU_WORLD_SIZE


def unavailable(device_type: str, world: int, gpus: int, cpus: int) -> str:
    """Why ``world`` ranks cannot run on this machine ("" when they can): a rank per GPU on CUDA
    (one GPU is no test of NCCL across devices), a core per rank on the CPU."""
    if device_type == "cuda":
        if gpus < 2:
            return f"a distributed run on cuda needs at least 2 GPUs (one per rank); {gpus} visible"
        if world > gpus:
            return f"world size {world} on cuda needs {world} GPUs (one per rank); {gpus} visible"
        return ""
    if world < 2:
        return f"world size {world}: a distributed run needs at least 2 ranks"
    if world > cpus:
        return f"world size {world} on the CPU needs a core per rank; this machine has {cpus}"
    return ""


def unsupported(parallel: str, precision: str, compile_backend: str) -> str:
    """Why a grid point of this axis value cannot run ("" when it can), before anything starts."""
    if parallel == "none":
        return ""
    if compile_backend != "none":
        return f"{parallel} with torch.compile is not in the grid (the wrapper and the compiled graph interact)"
    if parallel == "fsdp" and precision not in FSDP_PRECISIONS:
        return f"fsdp runs {', '.join(FSDP_PRECISIONS)} (bf16: its MixedPrecisionPolicy); {precision} is not covered"
    return ""
