"""Arithmetic-only perturbations, the noise that calibration measures (``diagnostics calibrate``).

Each perturbation keeps every formula of a run and changes only how its numbers are rounded —
the kind of difference a new torch release, BLAS library or machine brings to the same recipe:

- ``threadsN``: the CPU run uses N intra-op threads instead of ``determinism.CPU_THREADS``, so
  reductions (matmuls, norms, losses) are split and summed in another order;
- ``ulpK``: every nonzero initial weight is moved one unit in the last place up or down, the
  direction drawn from seed K (and the run's seed), before the first step;
- ``gradK``: on every step, every nonzero gradient element is moved one ulp up or down (seed K,
  the run's seed and the step): what a backward kernel that sums in another order does to each
  step, which is how a release's kernel change reaches a run (the one-off ``ulpK`` nudge alone
  moved the gpt final losses 10-100x less than that);
- ``fwdK``: every output of every Linear and Conv layer, on every forward pass, moved one ulp up
  or down: what a forward kernel that sums in another order does. Sign-based optimizers (Lion)
  barely feel gradient nudges but do feel this: held out, a split-K matmul moved gpt-Lion final
  losses ~10x further than the other perturbations did;
- ``repeatK``: nothing changed, the same run again: where kernels are nondeterministic (CUDA
  flash and memory-efficient attention backward, atomics in some CUDA backward passes), a
  repeat differs from the reference by exactly their run-to-run noise. Calibration adds two on
  a device other than the CPU (``default_for``); on the CPU every kernel is deterministic and a
  repeat is the reference bit for bit (a sample of zero spread, which would understate the noise).

Training amplifies these last-bit differences; how far each config's final and held-out losses
move under them is its measured numerical noise (``calibrate.tolerances``).
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnostics.errors import UsageError


@dataclass(frozen=True)
class Perturbation:
    name: str
    threads: int | None = None  # CPU intra-op threads for the run (None: the determinism profile's)
    ulp_seed: int | None = None  # seed of the one-ulp nudge of the initial weights (None: no nudge)
    grad_seed: int | None = None  # seed of the per-step one-ulp nudge of the gradients (None: none)
    forward_seed: int | None = None  # seed of the one-ulp nudge of every Linear/Conv output (None: none)

    def apply(self, model, device_type: str, run_seed: int) -> None:
        """Perturb a freshly built (and seeded) run in place, after ``determinism.apply``."""
        import torch

        if self.threads is not None and device_type == "cpu":
            torch.set_num_threads(self.threads)
        if self.ulp_seed is not None:
            nudge_ulp(model.parameters(), self.ulp_seed * 1_000_003 + run_seed)
        if self.forward_seed is not None:
            nudge_outputs(model, self.forward_seed * 1_000_003 + run_seed)

    def after_backward(self, params: list, run_seed: int, step: int) -> None:
        """Perturb one step's gradients in place, between backward and the optimizer step."""
        if self.grad_seed is not None:
            nudge_ulp([p.grad for p in params if p.grad is not None],
                      (self.grad_seed * 1_000_003 + run_seed) * 100_003 + step)


def nudge_ulp(tensors, seed: int) -> None:
    """Move every nonzero element one ulp towards +inf or -inf (a fair coin per element, drawn
    on the CPU from ``seed`` in tensor order, so every device gets the same coins); zeros stay
    zero (no denormals). torch is imported here: the CLI lists perturbations without it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2's sharded gradients: this rank's shard, in place
        up = (torch.rand(t.shape, generator=gen) < 0.5).to(t.device)
        target = torch.where(up, float("inf"), float("-inf")).to(t.dtype)
        with torch.no_grad():
            t.copy_(torch.where(t != 0, torch.nextafter(t, target), t))


def nudge_outputs(model, seed: int) -> None:
    """Forward hooks moving every Linear/Conv output one ulp (coins from one generator per run,
    drawn in call order: the same run gets the same coins)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def hook(module, inputs, output):
        out = output.detach().clone()
        nudge_ulp([out], int(torch.randint(0, 2**62, (1,), generator=gen)))
        return output + (out - output.detach())  # the same values as the nudged copy, gradients intact

    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            m.register_forward_hook(hook)


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p for p in (
        Perturbation("threads2", threads=2),
        Perturbation("threads3", threads=3),
        *(Perturbation(f"ulp{k}", ulp_seed=k) for k in range(1, 9)),
        *(Perturbation(f"grad{k}", grad_seed=k) for k in range(1, 9)),
        *(Perturbation(f"fwd{k}", forward_seed=k) for k in range(1, 9)),
        *(Perturbation(f"repeat{k}") for k in range(1, 9)),
    )
}
# calibration's default set: a reduction-order change, a one-off nudge of the initial weights, two
# independent per-step nudges of the gradients and one of the forward outputs (the others, and the
# rounding-size changes of benchmarks/sensitivity.py, are held out)
DEFAULT = ("threads2", "ulp1", "grad1", "grad2", "fwd1")
REPEATS = ("repeat1", "repeat2")  # run-to-run noise of nondeterministic kernels (not on the CPU)


def default_for(device_types) -> tuple[str, ...]:
    """Calibration's perturbations for a grid on these device types: ``DEFAULT``, plus
    ``REPEATS`` where a device other than the CPU may run nondeterministic kernels."""
    return DEFAULT + (REPEATS if any(d != "cpu" for d in device_types) else ())


def get(name: str | None) -> Perturbation | None:
    if name is None or name == "none":
        return None
    if name not in PERTURBATIONS:
        raise UsageError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]
