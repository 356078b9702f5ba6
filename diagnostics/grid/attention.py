"""The attention-kernel axis (``--attention``): which scaled-dot-product-attention kernel a run
asks torch for, and which one ran.

- ``default``: torch's choice (what users get: on CPU the blocked "flash" kernel where the
  release has it, on CUDA flash / memory-efficient / cuDNN by shape, dtype and GPU);
- ``math``, ``flash``, ``efficient``, ``cudnn``: that kernel alone (``torch.nn.attention.
  sdpa_kernel``, torch 2.3+; before, ``torch.backends.cuda.sdp_kernel``'s flags, which older
  releases' CPU dispatch reads too).

A kernel the device or release lacks is a skip with its reason: before the run where the
release says so (no such backend, a CUDA-only kernel on CPU), else when torch finds no kernel
for the run's inputs ("No available kernel", e.g. CUDA flash attention in float32).
Nondeterministic kernels (CUDA flash and memory-efficient backward) are run, not replaced: the
row says the run was not deterministic, and calibration's ``repeat`` reruns measure their noise.

The kernel that ran is recorded per run (``Recorder``): the model's attention calls ``sdpa``,
which asks torch's own dispatcher (``torch._fused_sdp_choice``, the function SDPA itself
consults) for the inputs of the run's first eager call.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from diagnostics.grid import compat

ATTENTIONS = ("default", "math", "flash", "efficient", "cudnn")
# torch's SDPBackend numbering (aten/src/ATen/native/transformers/sdp_utils_cpp.h), 2.0 onwards
KERNEL_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
# the enum member of each forced kernel (torch.nn.attention.SDPBackend)
BACKEND_MEMBER = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                  "cudnn": "CUDNN_ATTENTION"}
CUDA_ONLY = ("efficient", "cudnn")  # no CPU implementation in any release
NO_KERNEL = "No available kernel"  # torch's RuntimeError when no enabled kernel takes the inputs


def _sdpa_module():
    try:
        import torch.nn.attention as attention

        return attention if hasattr(attention, "sdpa_kernel") else None
    except ImportError:
        return None


@functools.cache
def unsupported(kernel: str, device_type: str) -> str:
    """Why ``kernel`` cannot be asked for on ``device_type`` with this torch ("" when it can)."""
    if kernel == "default":
        return ""
    if kernel in CUDA_ONLY and device_type != "cuda":
        return f"{kernel} attention is a CUDA kernel; {device_type} has none"
    new = _sdpa_module()
    if new is not None:
        if not hasattr(new.SDPBackend, BACKEND_MEMBER[kernel]):
            return f"torch {compat.TORCH} has no {kernel} attention kernel"
    elif kernel == "cudnn":
        return f"torch {compat.TORCH} has no cudnn attention kernel (torch 2.5+)"
    if kernel == "flash" and device_type == "cpu" and not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return f"torch {compat.TORCH} has no CPU flash attention kernel"
    return ""


def context(kernel: str):
    """The context a run's steps execute in: ``kernel`` alone, or torch's choice for default."""
    if kernel == "default":
        return nullcontext()
    new = _sdpa_module()
    if new is not None:
        return new.sdpa_kernel([getattr(new.SDPBackend, BACKEND_MEMBER[kernel])])
    return torch.backends.cuda.sdp_kernel(enable_math=kernel == "math", enable_flash=kernel == "flash",
                                          enable_mem_efficient=kernel == "efficient")


class Recorder:
    """The kernel a run's eager attention dispatched to (``sdpa`` records the first call). A
    compiled run's calls are traced, not dispatched: ``kernels`` stays empty, and
    ``train.attention_kernel`` asks once, eagerly, after training."""

    active: Recorder | None = None

    def __init__(self):
        self.kernels: set[str] = set()

    def add(self, q, k, v, attn_mask, dropout_p: float, is_causal: bool) -> None:
        try:
            choice = torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal)
        except (AttributeError, RuntimeError, TypeError):
            choice = None
        self.kernels.add(KERNEL_NAMES.get(choice, f"unknown ({choice})"))

    def name(self) -> str:
        """What the row records: "" for a model without attention, else the kernel names."""
        return "+".join(sorted(self.kernels))


@contextmanager
def recording():
    """Make a fresh Recorder the active one for the enclosed run."""
    rec = Recorder.active = Recorder()
    try:
        yield rec
    finally:
        Recorder.active = None


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False):
    """``F.scaled_dot_product_attention``, the kernel the run's first eager call dispatches to
    recorded (once per run: every later step has the same shapes and the same kind of mask).
    Without a mask the call is exactly ``is_causal``'s (no ``attn_mask`` argument passed)."""
    rec = Recorder.active
    if rec is not None and not rec.kernels and not compat.is_compiling():
        rec.add(q, k, v, attn_mask, dropout_p, is_causal)
    if attn_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
