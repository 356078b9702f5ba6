"""The attention-kernel axis and the probes of what a torch release lacks (every release since
2.0 runs: what one lacks is a skip that says why, never an error or a silent substitute)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diagnostics.grid import attention, compat, precision
from diagnostics.grid.spec import GridOptions, RunSpec, resolve_grid
from diagnostics.run import train
from tests.conftest import GPT_ADAMW


def test_cuda_kernels_are_skips_on_cpu_and_the_others_are_asked_for():
    for kernel in ("efficient", "cudnn"):
        assert "CUDA kernel; cpu has none" in attention.unsupported(kernel, "cpu")
    assert attention.unsupported("default", "cpu") == "" and attention.unsupported("math", "cpu") == ""
    assert attention.unsupported("math", "cuda") == ""  # asked for on CUDA; whether it runs is torch's answer


def test_a_forced_kernel_is_the_one_that_runs_and_is_recorded():
    q = torch.randn(1, 2, 8, 4)
    with attention.recording() as rec:
        with attention.context("math"):
            attention.sdpa(q, q, q, is_causal=True)
    assert rec.name() == "math"
    with attention.recording() as rec:
        attention.sdpa(q, q, q, is_causal=True)
    choice = torch._fused_sdp_choice(q, q, q, None, 0.0, True)
    assert rec.name() == attention.KERNEL_NAMES[choice]  # torch's own choice, as its dispatcher states it
    assert attention.Recorder.active is None  # nothing is recorded outside a run
    attention.sdpa(q, q, q)


def test_a_grid_sets_the_axis_on_attention_models_only():
    specs = resolve_grid(GridOptions(grid="smoke", attention="default,math", devices=("cpu",))).specs()
    gpt = [s for s in specs if s.model == "gpt"]
    resnet = [s for s in specs if s.model == "resnet"]
    assert {s.attention for s in gpt} == {"default", "math"} and {s.attention for s in resnet} == {"default"}
    assert len(resnet) == 2 and any(s.id.endswith("-fp32-math-s0") for s in gpt)


@pytest.mark.slow
def test_runs_record_the_kernel_and_a_kernel_torch_cannot_run_is_a_skip(monkeypatch, data_dir):
    spec = RunSpec(**GPT_ADAMW, steps=3, attention="math")
    row = train.run(spec, data_dir=data_dir).row
    assert row["status"] != "error" and row["sdpa_backend"] == "math" and row["attention"] == "math"
    skipped = train.run(RunSpec(**GPT_ADAMW, steps=3, attention="efficient"),
                        data_dir=data_dir).row
    assert skipped["status"] == "skipped" and skipped["status_reason"].startswith("efficient attention is a CUDA kernel")

    def no_kernel(*args, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_kernel)
    row = train.run(RunSpec(**GPT_ADAMW, steps=3, attention="flash"), data_dir=data_dir).row
    assert row["status"] == "skipped"
    assert row["status_reason"] == "flash attention: No available kernel. Aborting execution."


def test_a_resnet_run_records_no_kernel(data_dir):
    row = train.run(RunSpec(model="resnet", optimizer="sgd", scheduler="constant", warmup="none", device="cpu", steps=2),
                            data_dir=data_dir).row
    assert row["status"] != "error" and row["sdpa_backend"] == ""


class DisabledAutocast:
    """torch 2.0-2.2's CPU float16 autocast: constructed, then disabled with a warning."""

    def __init__(self, device_type, dtype):
        import warnings

        warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling autocast.", stacklevel=1)
        self._enabled = False


def test_an_autocast_the_release_disables_is_a_skip_not_an_fp32_run(monkeypatch):
    assert precision.unsupported("bf16", "cpu") == ""  # this torch autocasts bf16 on CPU
    compat.autocast_unsupported.cache_clear()
    monkeypatch.setattr(torch, "autocast", DisabledAutocast)
    try:
        reason = precision.unsupported("fp16", "cpu")
    finally:
        compat.autocast_unsupported.cache_clear()
    assert "has no torch.float16 autocast on cpu" in reason and "Disabling autocast" in reason


def test_missing_scaler_and_compile_are_skips_with_reasons(monkeypatch):
    assert compat.grad_scaler_unsupported("cpu") == "" and compat.compile_unsupported() == ""
    monkeypatch.delattr(torch.amp, "GradScaler")
    assert "torch.amp.GradScaler is torch 2.3+" in compat.grad_scaler_unsupported("cpu")
    assert compat.grad_scaler_unsupported("cuda") == ""  # torch.cuda.amp.GradScaler serves CUDA before 2.3
    monkeypatch.delattr(nn.Module, "compile")
    compat.compile_unsupported.cache_clear()
    try:
        assert "has no nn.Module.compile" in compat.compile_unsupported()
        assert "nn.Module.compile" in train.unsupported(RunSpec(**GPT_ADAMW,
                                                                compile="inductor"))
        assert train.unsupported(RunSpec(**GPT_ADAMW)) == ""  # eager runs still run
    finally:
        compat.compile_unsupported.cache_clear()


def test_a_layernorm_without_bias_is_the_same_module_on_a_release_without_the_argument(monkeypatch):
    modern = compat.layer_norm(8, bias=False)
    assert modern.bias is None

    class OldLayerNorm(nn.LayerNorm):  # torch 2.0's signature: no bias argument
        def __init__(self, n, eps=1e-5, elementwise_affine=True):
            super().__init__(n, eps=eps, elementwise_affine=elementwise_affine)

    monkeypatch.setattr(nn, "LayerNorm", OldLayerNorm)
    old = compat.layer_norm(8, bias=False)
    assert isinstance(old, OldLayerNorm) and old.bias is None and list(dict(old.named_parameters())) == ["weight"]
    x = torch.randn(3, 8)
    assert torch.equal(old(x), modern(x))
    assert compat.layer_norm(8, bias=True).bias is not None


def test_env_records_the_cpu_capability_torch_dispatches_to(monkeypatch):
    import torch

    from diagnostics.run import env

    assert env.capture()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # an older release without the function: the "CPU capability usage" line of the build config
    monkeypatch.delattr(torch.backends.cpu, "get_cpu_capability")
    monkeypatch.setattr(torch.__config__, "show", lambda: "PyTorch built with:\n  - CPU capability usage: AVX2\n")
    assert env.cpu_capability() == "AVX2"
    monkeypatch.setattr(torch.__config__, "show", lambda: "PyTorch built with:\n")
    assert env.cpu_capability() == ""
