"""The ``devices`` check: visible accelerators, their architectures, and why CUDA is unusable when it is.

Every judgement here is a pure function of the facts dict, so it is tested on machines without a GPU
with card facts in ``fixtures/gpu_facts/``: transcribed from public outputs until recorded on the card
(``benchmarks/record_gpu_facts.py``; each file's ``provenance`` says which).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import EnvContext
from torchdoctor.report import Finding, Severity

# Oldest Linux driver for each CUDA major version, from NVIDIA's CUDA toolkit release notes
# ("CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility").
MINIMUM_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}


def collect_devices_facts(context: EnvContext) -> dict[str, Any]:
    """The ``devices`` check's facts: the context's (cached) device facts."""
    return dict(context.devices)


# ---- judgements (pure) ----------------------------------------------------------------------


def check_devices(facts: Mapping[str, Any]) -> list[Finding]:
    """cuda-unavailable / cuda-driver-too-old / cuda-arch-unsupported from device facts."""
    findings: list[Finding] = []
    if not facts.get("cuda_available"):
        findings.append(judge_cuda_unavailable(facts))
    for device in facts.get("devices", []):
        finding = judge_arch_support(device, facts.get("arch_list", []), facts.get("hip_compiled_version"))
        if finding is not None:
            findings.append(finding)
    return findings


def judge_cuda_unavailable(facts: Mapping[str, Any]) -> Finding:
    cuda_version = facts.get("cuda_compiled_version")
    if not (cuda_version or facts.get("hip_compiled_version")):
        return make_finding(
            "cuda-unavailable",
            "This PyTorch build is CPU-only, so no GPU can be used.",
            severity=Severity.INFO,
            details={"reason": "cpu-only-build", "mps_available": facts.get("mps_available", False)},
        )
    error = facts.get("cuda_init_error") or ""
    too_old = driver_too_old(facts.get("driver_version"), cuda_version)
    if "too old" in error.lower() or too_old:
        needed = ".".join(map(str, MINIMUM_DRIVER.get(_major(cuda_version), ()))) or "a newer one"
        return make_finding(
            "cuda-driver-too-old",
            f"The NVIDIA driver ({facts.get('driver_version') or 'version unknown'}) is too old for this "
            f"PyTorch build's CUDA {cuda_version} (needs {needed} or newer).",
            details={"driver_version": facts.get("driver_version"), "cuda_compiled_version": cuda_version,
                     "minimum_driver": needed, "error": error or None},
        )
    return make_finding(
        "cuda-unavailable",
        f"This PyTorch build has CUDA {cuda_version or facts.get('hip_compiled_version')} but no usable GPU: "
        f"{_unavailable_reason(facts)}",
        severity=Severity.WARNING,
        details={"reason": error or None, "cuda_visible_devices": facts.get("cuda_visible_devices")},
    )


def _unavailable_reason(facts: Mapping[str, Any]) -> str:
    visible = facts.get("cuda_visible_devices")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU."
    error = facts.get("cuda_init_error")
    if error:
        return error.rstrip(".") + "."
    if facts.get("driver_version") is None:
        return "no NVIDIA driver is loaded (no /proc/driver/nvidia/version)."
    return "CUDA initialisation reported no devices."


def driver_too_old(driver_version: str | None, cuda_version: str | None) -> bool:
    """True when the loaded driver is older than the minimum for the build's CUDA major version."""
    if not driver_version or not cuda_version:
        return False
    minimum = MINIMUM_DRIVER.get(_major(cuda_version))
    if minimum is None:
        return False
    return _version_tuple(driver_version) < minimum


def judge_arch_support(device: Mapping[str, Any], arch_list: list[str], hip: str | None) -> Finding | None:
    """cuda-arch-unsupported when no cubin or PTX in the wheel can run on this device."""
    if hip or not arch_list:  # ROCm names gfx targets; an empty list means we could not read it
        return None
    major, minor = device["capability"]
    if arch_supported((major, minor), arch_list):
        return None
    return make_finding(
        "cuda-arch-unsupported",
        f"GPU {device['index']} ({device['name']}, compute capability {major}.{minor}) is not supported "
        f"by this PyTorch wheel, built for {', '.join(arch_list)}.",
        location=f"cuda:{device['index']}",
        details={"capability": f"{major}.{minor}", "arch_list": list(arch_list), "name": device["name"]},
    )


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """A cubin ``sm_XY`` runs on the same major with minor >= Y; PTX ``compute_XY`` JITs to anything newer."""
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = re.match(r"\d+", number)
        if not digits:
            continue
        target = divmod(int(digits.group()), 10)
        if kind == "sm" and target[0] == capability[0] and target[1] <= capability[1]:
            return True
        if kind == "compute" and target <= capability:
            return True
    return False


def headline_devices(facts: Mapping[str, Any]) -> str:
    devices = facts.get("devices", [])
    visible = facts.get("cuda_visible_devices")
    shown = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    if devices:
        names = ", ".join(f"cuda:{d['index']} {d['name']} (sm_{d['capability'][0]}{d['capability'][1]})"
                          for d in devices)
        return f"{len(devices)} GPU(s){shown}: {names}"
    extra = "; MPS available" if facts.get("mps_available") else ""
    return f"no CUDA device{shown}{extra}"


def _major(version: str | None) -> int:
    return int(version.split(".")[0]) if version else 0


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))
