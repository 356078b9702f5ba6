"""Fault injection into real training runs, for testing and benchmarking the detectors.

A ``Fault`` is applied by ``train.run(..., fault=...)`` at three points of a step: the loss
before backward, the gradients after backward, and the LR of the optimizer step (restored
afterwards, so the schedule itself is untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diagnostics.errors import UsageError

FAULT_KINDS = ("nan", "grad_scale", "lr_bomb", "slow_blowup")
NONE = "none"  # the no-op fault every healthy run carries (train.run's default)


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULT_KINDS
    step: int  # first step affected (1-based)
    magnitude: float = 100.0  # grad_scale / lr_bomb: the factor; slow_blowup: LR growth per step
    duration: int = 1  # steps affected (slow_blowup: until the end)
    rank: int | None = None  # a distributed run: the one rank it strikes (None: every rank, and one process)

    def __post_init__(self):
        if self.kind not in FAULT_KINDS + (NONE,):
            raise UsageError(f"unknown fault {self.kind!r}; valid: {', '.join(FAULT_KINDS)}")

    def active(self, step: int) -> bool:
        if self.rank is not None and self.rank != current_rank():
            return False
        return self.step <= step < self.step + self.duration or (self.kind == "slow_blowup" and step >= self.step)

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """NaN fault: the loss (and so every gradient) becomes NaN."""
        return loss * math.nan if self.kind == "nan" and self.active(step) else loss

    def grads(self, step: int, params: list[torch.Tensor]) -> None:
        if self.kind == "grad_scale" and self.active(step):
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.magnitude)

    def lr_factor(self, step: int) -> float:
        if self.kind == "lr_bomb" and self.active(step):
            return self.magnitude
        if self.kind == "slow_blowup" and step >= self.step:
            return self.magnitude ** (step - self.step + 1)
        return 1.0


def current_rank() -> int:
    """This process's rank in a process group (0 outside one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


NO_FAULT = Fault(NONE, step=0)  # changes nothing: loss, gradients and LR pass through
