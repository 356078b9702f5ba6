"""The determinism profile, in one place: seeds, deterministic algorithms, cuDNN flags and the
cuBLAS workspace setting. ``apply`` is called at the start of every run; ``profile`` is what
env.csv records."""

from __future__ import annotations

import os
import random
import warnings
from contextlib import contextmanager

import numpy as np
import torch

# cuBLAS needs a fixed workspace for deterministic results on CUDA >= 10.2 (torch's
# reproducibility notes); it must be set before the first cuBLAS call in the process.
CUBLAS_WORKSPACE = ":4096:8"
DETERMINISTIC_DEVICE_TYPES = ("cpu", "cuda")  # torch enforces determinism on these
# Intra-op threads of a CPU run. The thread count changes how reductions are split, and so the
# last bits of a CPU trace (seen here: a final loss of 0.0628 with 2 threads, 0.0630 with 1), so
# it is fixed per run: results do not depend on how many xdist workers share the machine.
CPU_THREADS = 1


def configure_process() -> None:
    """Process-wide settings that must precede any CUDA work."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def apply(seed: int, device_type: str) -> bool:
    """Seed Python, NumPy and torch and ask for deterministic algorithms. An op without a
    deterministic kernel (e.g. adaptive pooling's CUDA backward in torchvision's resnet18) warns
    instead of failing the run; ``nondeterministic_ops`` collects those warnings so the report
    can say the run was not deterministic. Returns whether the device type honours the flag."""
    configure_process()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    enforced = device_type in DETERMINISTIC_DEVICE_TYPES
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if device_type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    return enforced


# The texts torch's warn_only alerts use: "<op> does not have a deterministic implementation,
# but you set 'torch.use_deterministic_algorithms(True, warn_only=True)'" (at::Context::
# alertNotDeterministic) and, for scaled-dot-product attention's fused CUDA kernels, "<kernel>
# defaults to a non-deterministic algorithm".
NONDETERMINISTIC_WARNINGS = (" does not have a deterministic implementation", " defaults to a non-deterministic algorithm")


def nondeterministic_op(message: str) -> str | None:
    """The op a determinism warning names, or None for any other warning."""
    for marker in NONDETERMINISTIC_WARNINGS:
        if marker in message:
            return message.split(marker)[0].strip().split("\n")[-1].strip()
    return None


@contextmanager
def nondeterministic_ops():
    """Collect the names of ops that warned they ran without a deterministic kernel, in every
    run: torch warns some of these once per process unless ``torch.set_warn_always(True)``,
    which holds inside this context."""
    seen: list[str] = []
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
    finally:
        torch.set_warn_always(always)
    for w in caught:
        op = nondeterministic_op(str(w.message))
        if op is not None:
            seen.append(op)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def profile() -> dict[str, str]:
    """The settings ``apply`` gives every run (not the state of the calling process)."""
    return {
        "deterministic_algorithms": "requested (warn_only: a run that used a nondeterministic op says so)",
        "cudnn_deterministic": "True",
        "cudnn_benchmark": "False",
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE),
        "cpu_threads_per_run": str(CPU_THREADS),
        "sdpa_backend": "the run's --attention kernel (default: torch's choice; CUDA flash and memory-efficient "
                        "backward are nondeterministic: such runs say so, calibration's repeats measure them)",
        "float32_matmul": "fp32/bf16/fp16 runs: TF32 off, precision highest; tf32 runs: TF32 on, high",
        "seeded": "python random, numpy, torch (all devices); batches from (seed, step)",
    }
