"""Environment capture: software versions, hardware and memory, as the reports record them."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import psutil
import torch

from diagnostics.run import determinism

MB = 1024 * 1024


def package_version(name: str) -> str:
    """Installed version of a distribution, or "" if it is absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=1)
def torchvision_status() -> tuple[str, str]:
    """(version, "") when torchvision imports beside this torch, else ("", the reason)."""
    try:
        import torchvision
        import torchvision.models  # noqa: F401  (fails when its C ops do not match torch)
        return torchvision.__version__, ""
    except Exception as e:  # ImportError, RuntimeError("operator torchvision::nms does not exist")
        return "", f"torchvision unavailable: {str(e).splitlines()[0]}"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    if device_type == "xpu":
        return torch.xpu.get_device_name()
    if device_type == "mps":
        return "Apple MPS"
    return cpu_model()


def cudnn_version() -> str:
    v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return str(v) if v else ""


@functools.lru_cache(maxsize=1)
def driver_version() -> str:
    """The NVIDIA driver's version (nvidia-smi), "" without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def nccl_version() -> str:
    """NCCL's version as torch was built with it, "" without CUDA."""
    try:
        if not torch.cuda.is_available():
            return ""
        v = torch.cuda.nccl.version()
        return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except (AttributeError, RuntimeError):
        return ""


def versions() -> dict[str, str]:
    return {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision_status()[0],
        "lion_pytorch_version": package_version("lion-pytorch"),
        "python_version": platform.python_version(),
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": cudnn_version(),
        "driver_version": driver_version(),
        "nccl_version": nccl_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "git_sha": git_sha(),
    }


def memory() -> dict[str, float]:
    vm = psutil.virtual_memory()
    return {"mem_total_mb": vm.total / MB, "mem_available_mb": vm.available / MB}


# torch.__config__.show()'s lines that name what builds the CPU kernels: when a release changes
# the bits of every CPU run, these usually say why (docs/concepts/releases.md)
BUILD_LINES = {"torch_build_compiler": ("GCC ", "clang "), "torch_build_blas": ("Math Kernel Library", "OpenBLAS"),
               "torch_build_onednn": ("MKL-DNN", "oneDNN")}


@functools.lru_cache(maxsize=1)
def torch_build() -> dict[str, str]:
    """The compiler, BLAS and oneDNN the running torch was built with (from
    ``torch.__config__.show()``; "" where it does not say)."""
    try:
        lines = [line.strip(" -") for line in torch.__config__.show().splitlines()]
    except Exception:  # a build without the config text
        lines = []
    return {key: next((line for line in lines if any(m in line for m in marks)), "")[:120]
            for key, marks in BUILD_LINES.items()}


def cpu_capability() -> str:
    """The vectorised CPU kernels torch dispatches to on this machine (DEFAULT, AVX2, AVX512,
    ...): ``torch.backends.cpu.get_cpu_capability()`` where it exists (2.1+), else the "CPU
    capability usage" line of ``torch.__config__.show()``; "" where neither says. Two releases on
    one machine can select different ones, and so compute different bits with the same kernels'
    source (``ATEN_CPU_CAPABILITY`` pins it)."""
    backend = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if backend is not None:
        try:
            return str(backend())
        except Exception:  # a build that cannot say
            pass
    try:
        text = torch.__config__.show()
    except Exception:
        return ""
    line = next((ln for ln in text.splitlines() if "CPU capability usage" in ln), "")
    return line.split(":", 1)[1].strip() if ":" in line else ""


def cpu_flags() -> str:
    """The CPU's vector instruction flags that torch's dispatch chooses between (from
    /proc/cpuinfo; "" where it is not readable)."""
    wanted = ("avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16", "fma",
              "sve", "neon", "asimd")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith(("flags", "Features"))), [])
    return ",".join(f for f in wanted if f in flags)


def capture(devices: tuple[str, ...] = ()) -> dict[str, str]:
    """Everything env.csv holds: versions, hardware, memory, threads, determinism profile."""
    from diagnostics.grid.devices import available_devices

    env = versions()
    env.update({
        "python_executable": sys.executable,
        "cpu_count_logical": str(psutil.cpu_count()),
        "cpu_count_physical": str(psutil.cpu_count(logical=False)),
        "num_threads": str(torch.get_num_threads()),
        "available_devices": ",".join(available_devices()),
        "requested_devices": ",".join(devices),
        "torchvision_problem": torchvision_status()[1],
        "cpu_capability": cpu_capability(),
        "cpu_flags": cpu_flags(),
    })
    env.update(torch_build())
    env.update({k: f"{v:.0f}" for k, v in memory().items()})
    for d in devices:
        if d != "cpu":
            env[f"device_name_{d}"] = device_name(d)
    env.update(determinism.profile())
    return env
