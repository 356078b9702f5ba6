"""What the running torch release can do, asked of torch itself (never of its version number),
for the paths that releases since 2.0 added: each probe returns "" when the path exists, else
the one-line reason a run that needs it is skipped with. No probe substitutes another path.

- ``fp16`` autocast on a device: torch 2.0-2.2 accept ``torch.autocast("cpu", dtype=float16)``
  but disable it with a warning (the run would silently be fp32);
- a loss scaler for a device: ``torch.amp.GradScaler`` (2.3+; before, CUDA only);
- ``nn.Module.compile`` (2.1+) and TorchDynamo on this Python (2.0 has none on 3.11);
- the attention kernels (``attention.py``);
- ``nn.LayerNorm(bias=False)`` (2.1+) and ``nn.RMSNorm`` (2.4+), which do exist in another form.
"""

from __future__ import annotations

import functools
import sys
import warnings

import torch
from torch import nn

TORCH = torch.__version__.split("+")[0]
# normalisation layers whose weights take no weight decay: nn.RMSNorm is torch 2.4+
NORM_MODULES = tuple(m for m in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None))
                     if m is not None)


def layer_norm(n: int, bias: bool = True) -> nn.LayerNorm:
    """``nn.LayerNorm(n, bias=bias)``; before torch 2.1 (no ``bias`` argument) the same module
    with its bias removed, which its forward (``F.layer_norm(..., self.bias, ...)``) accepts."""
    try:
        return nn.LayerNorm(n, bias=bias)
    except TypeError:
        norm = nn.LayerNorm(n)
        if not bias:
            norm.register_parameter("bias", None)
        return norm


@functools.cache
def autocast_unsupported(device_type: str, dtype: torch.dtype) -> str:
    """Why ``torch.autocast(device_type, dtype)`` would not autocast ("" when it does)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ctx = torch.autocast(device_type=device_type, dtype=dtype)
        except (RuntimeError, ValueError) as e:
            return f"torch {TORCH} has no {dtype} autocast on {device_type}: {str(e).splitlines()[0]}"
    if not getattr(ctx, "_enabled", True):  # 2.0-2.2 on CPU with float16: disabled, with a warning
        said = str(caught[0].message).splitlines()[0] if caught else "disabled"
        return f"torch {TORCH} has no {dtype} autocast on {device_type} ({said})"
    return ""


def grad_scaler_unsupported(device_type: str) -> str:
    """Why fp16's loss scaler cannot run on ``device_type`` ("" when it can)."""
    if hasattr(torch.amp, "GradScaler") or device_type == "cuda":
        return ""
    return f"torch {TORCH} has no loss scaler for {device_type} (torch.amp.GradScaler is torch 2.3+)"


def grad_scaler(device_type: str):
    """fp16's loss scaler (torch defaults: initial scale 2**16, growth every 2000 steps)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()


@functools.lru_cache(maxsize=1)
def compile_unsupported() -> str:
    """Why ``model.compile(backend=...)`` cannot run on this torch and Python ("" when it can)."""
    if not hasattr(nn.Module, "compile"):
        return f"torch {TORCH} has no nn.Module.compile (torch 2.1+)"
    try:
        from torch._dynamo import is_dynamo_supported

        supported = is_dynamo_supported()
    except ImportError:
        supported = True
    if not supported:
        return f"torch {TORCH} has no TorchDynamo for Python {sys.version_info.major}.{sys.version_info.minor}"
    return ""


def is_compiling() -> bool:
    """Whether the caller is being traced by TorchDynamo (torch.compiler.is_compiling is 2.3+)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    dynamo = getattr(torch, "_dynamo", None)
    return bool(dynamo is not None and hasattr(dynamo, "is_compiling") and dynamo.is_compiling())
