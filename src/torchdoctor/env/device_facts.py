"""Collecting accelerator facts: the torch build's CUDA/HIP versions, the driver, each visible GPU.

Apart from the ``devices`` check (devices.py) so that ``EnvContext.devices`` (base.py) can gather them
without importing the check that itself imports ``EnvContext``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def collect_devices(environ: Mapping[str, str], path: Callable[[str], str]) -> dict[str, Any]:
    """Accelerator facts; initialises CUDA (in this process only) to learn why it is unusable."""
    import torch

    facts: dict[str, Any] = {
        "cuda_compiled_version": torch.version.cuda,
        "hip_compiled_version": torch.version.hip,
        "cuda_visible_devices": environ.get("CUDA_VISIBLE_DEVICES"),
        "driver_version": read_driver_version(path("/proc/driver/nvidia/version")),
        "arch_list": list(torch.cuda.get_arch_list()) if _has_cuda_build(torch) else [],
        "cuda_available": False,
        "cuda_init_error": None,
        "devices": [],
        "mps_available": bool(torch.backends.mps.is_available()),
        "xpu_available": _xpu_available(torch),
    }
    if not _has_cuda_build(torch):
        return facts
    facts["cuda_available"] = bool(torch.cuda.is_available())
    if not facts["cuda_available"]:
        facts["cuda_init_error"] = _cuda_init_error(torch)
        return facts
    facts["devices"] = [_device_facts(torch, index) for index in range(torch.cuda.device_count())]
    return facts


def _device_facts(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "capability": [props.major, props.minor],
        "total_memory_bytes": int(props.total_memory),
        "multi_processor_count": int(props.multi_processor_count),
        "gcn_arch_name": getattr(props, "gcnArchName", None),
    }


def _has_cuda_build(torch: Any) -> bool:
    return bool(torch.version.cuda or torch.version.hip)


def _cuda_init_error(torch: Any) -> str | None:
    """The error CUDA initialisation gives: names a missing or too-old driver, or hidden devices."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.init()
    except Exception as exc:  # the message is the fact we want
        return " ".join(str(exc).split())
    messages = [str(w.message) for w in caught]
    return " ".join(" ".join(messages).split()) or None


def _xpu_available(torch: Any) -> bool:
    xpu = getattr(torch, "xpu", None)
    try:
        return bool(xpu is not None and xpu.is_available())
    except Exception:  # a broken XPU runtime is not our concern here
        return False


def read_driver_version(version_path: str) -> str | None:
    """The NVIDIA kernel driver version from ``/proc/driver/nvidia/version`` (no nvidia-smi call)."""
    try:
        with open(version_path, encoding="utf-8") as version_file:
            text = version_file.read()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None
