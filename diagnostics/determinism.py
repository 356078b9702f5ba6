"""The determinism profile, in one place: seeds, deterministic algorithms, cuDNN flags and the
cuBLAS workspace setting. ``apply`` is called at the start of every run; ``profile`` is what
env.csv records."""

from __future__ import annotations

import os
import random

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
    """Seed Python, NumPy and torch; switch on deterministic algorithms where the device
    supports them (elsewhere: warn only). Returns whether determinism is enforced."""
    configure_process()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    enforced = device_type in DETERMINISTIC_DEVICE_TYPES
    torch.use_deterministic_algorithms(True, warn_only=not enforced)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if device_type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    return enforced


def profile() -> dict[str, str]:
    """The settings ``apply`` gives every run (not the state of the calling process)."""
    return {
        "deterministic_algorithms": f"enforced on {', '.join(DETERMINISTIC_DEVICE_TYPES)}; warn-only elsewhere",
        "cudnn_deterministic": "True",
        "cudnn_benchmark": "False",
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE),
        "cpu_threads_per_run": str(CPU_THREADS),
        "seeded": "python random, numpy, torch (all devices); batches from (seed, step)",
    }
