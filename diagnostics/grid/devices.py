"""Device discovery and per-worker placement."""

from __future__ import annotations

import os

import torch

from diagnostics.errors import UsageError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def is_available(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "mps":
        return torch.backends.mps.is_available()
    if device_type == "xpu":
        return hasattr(torch, "xpu") and torch.xpu.is_available()
    return False


def available_devices() -> tuple[str, ...]:
    return tuple(d for d in DEVICE_TYPES if is_available(d))


def resolve(value: str) -> tuple[str, ...]:
    """``auto`` -> every available device type; else each named type must be available
    (raises SpecError with one line naming what is)."""
    from diagnostics.grid.spec import SpecError

    available = available_devices()
    if value == "auto":
        return available
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in DEVICE_TYPES]
    if unknown or not names:
        raise SpecError(f"unknown device {', '.join(map(repr, unknown)) or repr(value)}; "
                        f"valid: auto, {', '.join(DEVICE_TYPES)}")
    absent = [n for n in names if n not in available]
    if absent:
        raise SpecError(f"requested device {', '.join(absent)} is not available on this machine "
                        f"(available: {', '.join(available)})")
    return names


def worker_device_index(worker_number: int, n_visible: int) -> int:
    """GPU a pytest-xdist worker pins itself to: round-robin over the visible devices (which
    are the caller's CUDA_VISIBLE_DEVICES, in its order, when set), so with k workers per GPU
    every GPU gets k of them."""
    return worker_number % n_visible if n_visible else 0


# xdist workers per visible GPU for ``-n gpus`` (tox -e gpu): small models leave a GPU mostly
# idle, so several processes share one, pinned round-robin (worker_device_index). docs/howto/gpu.md
# has the runs per minute measured with 1, 2 and 4 (benchmarks/gpu_check.py).
WORKERS_PER_GPU_ENV = "DIAGNOSTICS_WORKERS_PER_GPU"
DEFAULT_WORKERS_PER_GPU = 4


def workers_per_gpu(environ=os.environ) -> int:
    """DIAGNOSTICS_WORKERS_PER_GPU, a positive integer (default DEFAULT_WORKERS_PER_GPU);
    raises ValueError with one line otherwise."""
    raw = environ.get(WORKERS_PER_GPU_ENV, "") or str(DEFAULT_WORKERS_PER_GPU)
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"{WORKERS_PER_GPU_ENV}={raw!r}: must be a positive integer")
    return int(raw)


def gpu_workers(n_gpus: int | None = None, per_gpu: int | None = None) -> int:
    """xdist workers that fill the visible GPUs: GPUs x workers per GPU (1 without a GPU)."""
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    return max(1, n_gpus * (per_gpu or workers_per_gpu()))


def threads_per_worker(n_workers: int, cpu_count: int | None = None) -> int:
    """Intra-op threads each worker may use so that workers share the cores without
    oversubscription."""
    cpu_count = cpu_count or os.cpu_count() or 1
    return max(1, cpu_count // max(1, n_workers))


def pin_worker(worker_number: int) -> None:
    """Pin this process to one GPU of each available GPU type."""
    if torch.cuda.is_available():
        torch.cuda.set_device(worker_device_index(worker_number, torch.cuda.device_count()))
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.set_device(worker_device_index(worker_number, torch.xpu.device_count()))
