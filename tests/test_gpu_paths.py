"""The CUDA branches that can be checked without a GPU: worker placement, the determinism warning
capture, the attention backend, DDP's device per rank, the environment's fields. (What ran on a
GPU: docs/howto/gpu.md, benchmarks/gpu_check.py.)"""

import warnings

import pytest
import torch

from diagnostics import options
from diagnostics.grid import data, devices, recipes
from diagnostics.grid.models import MODELS
from diagnostics.grid.spec import GRIDS, PRECISIONS, RunSpec
from diagnostics.run import determinism, env


def test_workers_fill_each_gpu_round_robin():
    assert devices.gpu_workers(n_gpus=8, per_gpu=4) == 32
    assert devices.gpu_workers(n_gpus=0, per_gpu=4) == 1  # no GPU: one worker
    pins = [devices.worker_device_index(w, 2) for w in range(devices.gpu_workers(n_gpus=2, per_gpu=3))]
    assert pins == [0, 1, 0, 1, 0, 1]
    assert devices.workers_per_gpu({}) == devices.DEFAULT_WORKERS_PER_GPU
    assert devices.workers_per_gpu({devices.WORKERS_PER_GPU_ENV: "4"}) == 4
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="must be a positive integer"):
            devices.workers_per_gpu({devices.WORKERS_PER_GPU_ENV: bad})


def test_each_determinism_warning_is_caught_in_every_run():
    messages = ["adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
                "'torch.use_deterministic_algorithms(True, warn_only=True)'.",
                "Memory Efficient attention defaults to a non-deterministic algorithm. To explicitly enable "
                "determinism call torch.use_deterministic_algorithms(True, warn_only=False)."]
    assert determinism.nondeterministic_op(messages[0]) == "adaptive_avg_pool2d_backward_cuda"
    assert determinism.nondeterministic_op(messages[1]) == "Memory Efficient attention"
    assert determinism.nondeterministic_op("some other warning") is None
    before = torch.is_warn_always_enabled()
    for _ in range(2):  # a second run sees its ops too (torch.set_warn_always inside the context)
        with determinism.nondeterministic_ops() as seen:
            assert torch.is_warn_always_enabled()
            for m in messages:
                warnings.warn(m, UserWarning, stacklevel=1)
        assert seen == ["adaptive_avg_pool2d_backward_cuda", "Memory Efficient attention"]
    assert torch.is_warn_always_enabled() == before
    with pytest.warns(UserWarning, match="unrelated"):  # other warnings pass through
        with determinism.nondeterministic_ops():
            warnings.warn("unrelated", UserWarning, stacklevel=1)


def test_each_ddp_rank_gets_its_own_gpu_or_a_stated_skip(tmp_path):
    from diagnostics.grid import parallel as axis
    from diagnostics.judge.repro import ddp_check

    assert axis.backend("cuda") == "nccl" and axis.backend("cpu") == "gloo"
    assert axis.world_size("cuda", gpus=4) == 4 and axis.world_size("cpu", gpus=0) == 2
    if torch.cuda.device_count() < 2:
        r = ddp_check(RunSpec(model="gpt", optimizer="adamw", scheduler="cosine", warmup="linear", device="cuda",
                              steps=4), tmp_path)
        assert r["result"] == "skipped" and "one per rank" in r["detail"]


def test_the_dataset_moves_once_and_batches_are_the_same_everywhere(tmp_path):
    ds = data.load("image", 0, str(tmp_path))
    assert data.on_device(ds, torch.device("cpu")) is ds
    a = data.train_batch(ds, 0, 3, 8, torch.device("cpu"))
    moved = data.on_device(ds, torch.device("meta"))  # any other device: every tensor moves
    assert all(getattr(moved, k).device.type == "meta" for k in ("train_x", "val_x", "train_y", "val_y", "mean", "std"))
    idx = data.batch_indices(ds, 0, 3, 8)
    assert torch.equal(a[1], ds.train_y[idx])


def test_env_records_driver_nccl_and_float32_settings():
    v = env.versions()
    assert {"driver_version", "nccl_version", "cuda_version", "cudnn_version"} <= set(v)
    profile = determinism.profile()
    assert "TF32 off" in profile["float32_matmul"] and "--attention" in profile["sdpa_backend"]


def test_grid_option_help_is_built_from_the_registries():
    helps = {o.flag: o.help for o in options.GRID_OPTIONS}
    for flag, registry in (("--models", MODELS), ("--optimizers", recipes.OPTIMIZERS),
                           ("--schedulers", recipes.SCHEDULERS), ("--grid", GRIDS), ("--precision", PRECISIONS)):
        assert all(name in helps[flag] for name in registry), flag
    got = options.grid_options({"models": "gpt", "devices": "cpu", "compile": "inductor"}.get)
    assert got.models == "gpt" and got.devices == ("cpu",) and got.compile == "inductor"
    args = options.forward({"models": "gpt", "steps": 5, "update_baseline": True}.get,
                           options.GRID_OPTIONS + options.SESSION_OPTIONS)
    assert args == ["--models", "gpt", "--steps", "5", "--update-baseline"]
