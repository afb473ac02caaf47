"""The ``build`` check: what PyTorch was built with and which CUDA/cuDNN/NCCL libraries it loaded."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torchdoctor.env.base import EnvContext

# Packages whose versions matter when PyTorch misbehaves (collect_env greps pip for similar names).
RELATED_PACKAGES = (
    "torch", "torchvision", "torchaudio", "torchtext", "torchdata", "triton", "numpy", "pillow",
    "nvidia-cudnn-cu11", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "nvidia-nccl-cu11", "nvidia-nccl-cu12",
    "nvidia-nccl-cu13", "nvidia-cuda-runtime-cu11", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime",
    "pytorch-lightning", "lightning", "accelerate", "transformers", "deepspeed", "safetensors",
    "onnx", "onnxruntime", "intel-extension-for-pytorch", "torchdoctor",
)

# Where each field of `python -m torch.utils.collect_env` (its SystemEnv) lives in `result`: env's
# result is a judging superset of collect_env's torch-related fields (tests/env/test_build.py checks it).
COLLECT_ENV_FIELDS = {
    "torch_version": "build.torch_version",
    "is_debug_build": "build.is_debug_build",
    "cuda_compiled_version": "build.cuda_compiled_version",
    "hip_compiled_version": "build.hip_compiled_version",
    "os": "build.os",
    "libc_version": "build.libc_version",
    "python_version": "build.python_version",
    "python_platform": "build.python_platform",
    "is_cuda_available": "devices.cuda_available",
    "cuda_runtime_version": "build.loaded_libraries",  # the libcudart actually loaded, not the system nvcc
    "cuda_module_loading": "build.cuda_module_loading",
    "nvidia_driver_version": "devices.driver_version",
    "nvidia_gpu_models": "devices.devices",
    "cudnn_version": "build.cudnn_version",
    "is_xpu_available": "devices.xpu_available",
    "hip_runtime_version": "build.loaded_libraries",  # libamdhip64 as loaded
    "miopen_runtime_version": "build.loaded_libraries",
    "caching_allocator_config": "build.caching_allocator_config",
    "is_xnnpack_available": "build.xnnpack_available",
    "pip_packages": "build.packages",
    "conda_packages": "build.packages",
    "cpu_info": "build.cpu_model",
}
# Toolchain facts collect_env also prints; not about torch, so env does not gather them.
COLLECT_ENV_NOT_TORCH = frozenset({"gcc_version", "clang_version", "cmake_version", "pip_version"})

# Names of the shared libraries whose loaded paths we report: the ones actually mapped into this
# process, which is what matters when a system copy shadows the wheel's (pytorch#78489).
LOADED_LIBRARIES = ("libcudnn", "libnccl", "libcudart", "libcublas", "libtorch_cuda", "libamdhip64", "libMIOpen")


def collect_build(context: EnvContext) -> dict[str, Any]:
    """Versions and build flags of torch and its native libraries; never initialises CUDA."""
    import torch

    facts: dict[str, Any] = {
        "torch_version": torch.__version__,
        "torch_git_version": getattr(torch.version, "git_version", None),
        "torch_path": os.path.dirname(torch.__file__),
        "is_debug_build": bool(torch.version.debug),
        "cuda_compiled_version": torch.version.cuda,
        "hip_compiled_version": torch.version.hip,
        "cudnn_version": _cudnn_version(torch),
        "nccl_version": _nccl_version(torch),
        "mps_built": bool(torch.backends.mps.is_built()),
        "xpu_built": _xpu_built(torch),
        "mkl_available": bool(torch.backends.mkl.is_available()),
        "mkldnn_available": bool(torch.backends.mkldnn.is_available()),
        "openmp_available": bool(torch.backends.openmp.is_available()),
        "xnnpack_available": _xnnpack_available(torch),
        "cuda_module_loading": context.environ.get("CUDA_MODULE_LOADING"),
        "caching_allocator_config": _allocator_config(context.environ),
        "python_version": sys.version.replace("\n", " "),
        "python_platform": platform.platform(),
        "python_executable": sys.executable,
        "os": _os_name(context.path),
        "libc_version": "-".join(platform.libc_ver()) or None,
        "cpu_model": _cpu_model(context.path),
        "loaded_libraries": collect_loaded_libraries(context.path("/proc/self/maps")),
        "packages": collect_packages(),
    }
    return facts


def check_build(facts: Mapping[str, Any]) -> list:
    """The build has no judgements of its own yet; devices and steps judge what it enables."""
    return []


def headline_build(facts: Mapping[str, Any]) -> str:
    parts = [f"torch {facts['torch_version']}"]
    if facts.get("cuda_compiled_version"):
        parts.append(f"CUDA {facts['cuda_compiled_version']}")
    if facts.get("hip_compiled_version"):
        parts.append(f"ROCm/HIP {facts['hip_compiled_version']}")
    if facts.get("cudnn_version"):
        parts.append(f"cuDNN {facts['cudnn_version']}")
    if facts.get("nccl_version"):
        parts.append(f"NCCL {facts['nccl_version']}")
    if not (facts.get("cuda_compiled_version") or facts.get("hip_compiled_version")):
        parts.append("CPU-only build")
    parts.append(f"Python {facts['python_version'].split()[0]}")
    return ", ".join(parts)


def collect_packages() -> dict[str, str]:
    """Installed versions of PyTorch-related distributions (importlib.metadata: no pip subprocess)."""
    found: dict[str, str] = {}
    for name in RELATED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def collect_loaded_libraries(maps_path: str) -> dict[str, str]:
    """Library base name -> path of the CUDA/ROCm libraries mapped into this process."""
    loaded: dict[str, str] = {}
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                name = os.path.basename(path)
                for library in LOADED_LIBRARIES:
                    if name.startswith(library + ".") or name.startswith(library + "_"):
                        loaded.setdefault(name, path)
    except OSError:  # not Linux, or /proc hidden
        return {}
    return loaded


def _cudnn_version(torch: Any) -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # a broken cuDNN install raises here; devices/training report the effect
        return None


def _nccl_version(torch: Any) -> str | None:
    if not torch.version.cuda:
        return None
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # built without NCCL (e.g. Windows)
        return None
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def _xpu_built(torch: Any) -> bool:
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and getattr(torch._C, "_has_xpu", False))


def _xnnpack_available(torch: Any) -> bool:
    return bool(getattr(torch._C, "_is_xnnpack_enabled", lambda: False)())


def _allocator_config(environ: Mapping[str, str]) -> str | None:
    return environ.get("PYTORCH_CUDA_ALLOC_CONF") or environ.get("PYTORCH_ALLOC_CONF")


def _os_name(path: Callable[[str], str]) -> str:
    try:
        with open(path("/etc/os-release"), encoding="utf-8") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    return f"{line.split('=', 1)[1].strip().strip(chr(34))} ({platform.machine()})"
    except OSError:
        pass
    return f"{platform.system()} {platform.release()} ({platform.machine()})"


def _cpu_model(path: Callable[[str], str]) -> str | None:
    try:
        with open(path("/proc/cpuinfo"), encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
