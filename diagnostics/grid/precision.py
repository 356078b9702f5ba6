"""The numerics of a precision (``spec.PRECISIONS``): float32 matmul settings, autocast dtype and
gradient scaling, set explicitly for every run and recorded in its row.

- ``fp32``: TF32 off for CUDA matmuls and cuDNN convolutions, ``float32_matmul_precision``
  "highest". torch's own default leaves cuDNN's TF32 *on*, so without this a CUDA "fp32"
  convolution runs TF32.
- ``tf32``: float32 storage, TF32 matmuls and convolutions ("high"). CUDA only: elsewhere a skip.
- ``bf16``: bfloat16 autocast (float32 matmul settings as fp32).
- ``fp16``: float16 autocast with a loss scaler (``torch.amp.GradScaler``): a step whose gradients overflow is
  skipped and the scale halves; the scale and the skip are recorded per step, and a collapsed scale ends the run
  (``detect.ScaleRule``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from diagnostics.grid import compat

AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
MATMUL_PRECISION = {"tf32": "high"}  # every other precision: "highest" (no TF32)
CUDA_ONLY = ("tf32",)  # TF32 is an NVIDIA tensor-core format


def unsupported(precision: str, device_type: str) -> str:
    """Why this precision cannot run on this device type with this torch ("" when it can)."""
    if precision in CUDA_ONLY and device_type != "cuda":
        return f"{precision} is a CUDA precision (TF32 tensor cores); {device_type} has no TF32"
    if precision in AUTOCAST_DTYPE:
        reason = compat.autocast_unsupported(device_type, AUTOCAST_DTYPE[precision])
        if reason:
            return reason
    return compat.grad_scaler_unsupported(device_type) if precision == "fp16" else ""


def set_float32_matmul(precision: str) -> dict:
    """Set (process-wide, before each run) and return the float32 matmul settings."""
    tf32 = precision in MATMUL_PRECISION
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision(MATMUL_PRECISION.get(precision, "highest"))
    return dict(tf32=tf32, matmul_precision=torch.get_float32_matmul_precision())


def autocast(precision: str, device_type: str):
    """The forward pass's autocast context (a no-op for fp32 and tf32)."""
    dtype = AUTOCAST_DTYPE.get(precision)
    return nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)


def grad_scaler(precision: str, device_type: str):
    """fp16's loss scaler (torch defaults: initial scale 2**16, growth every 2000 steps)."""
    return compat.grad_scaler(device_type) if precision == "fp16" else None

