"""The env checks, in the order they are shown: one ``EnvCheck`` per selectable ``--check`` name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torchdoctor.env.base import EnvCheck


def _lazy(module: str, function: str) -> Callable[..., Any]:
    """Resolve ``torchdoctor.env.<module>.<function>`` on first call: keeps `--help` and imports light."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"torchdoctor.env.{module}"), function)(*args)

    call.__name__ = function
    return call


def _check(name: str, title: str, description: str, module: str, collect: str, judge: str, headline: str,
           process: str = "collector") -> EnvCheck:
    return EnvCheck(name, title, description, _lazy(module, collect), _lazy(module, judge),
                    _lazy(module, headline), process)


CHECKS: tuple[EnvCheck, ...] = (
    _check("build", "PyTorch build", "torch version, CUDA/ROCm/MPS/XPU build flags, loaded cuDNN and NCCL",
           "build", "collect_build", "check_build", "headline_build"),
    _check("devices", "Devices", "visible GPUs, compute capability vs the wheel's arch list, driver",
           "devices", "collect_devices_facts", "check_devices", "headline_devices"),
    _check("training", "Training steps", "a real training step per device and precision, checked against "
           "the CPU float32 loss", "training", "collect_training", "check_training", "headline_training"),
    _check("shm", "Shared memory", "/dev/shm size and free space, container detection",
           "shm", "collect_shm_facts", "check_shm", "headline_shm", process="local"),
    _check("dataloader", "DataLoader workers", "a real 2-worker DataLoader step through shared memory, in a "
           "subprocess", "workers", "collect_dataloader_facts", "check_dataloader", "headline_dataloader",
           process="dataloader"),
    _check("threads", "CPU threads", "intra-op/interop/OpenMP threads vs usable CPUs (affinity, cgroup quota)",
           "threads", "collect_threads", "check_threads", "headline_threads"),
    _check("memory", "Memory", "RAM available (and the container limit), free memory per GPU",
           "memory", "collect_memory", "check_memory", "headline_memory"),
    _check("reproducibility", "Reproducibility", "determinism flags and CUBLAS_WORKSPACE_CONFIG",
           "reproducibility", "collect_reproducibility", "check_reproducibility", "headline_reproducibility"),
)

CHECK_NAMES = tuple(check.name for check in CHECKS)
BY_NAME = {check.name: check for check in CHECKS}
