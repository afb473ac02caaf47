"""The ``reproducibility`` check: determinism flags and the cuBLAS setting deterministic mode needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import EnvContext
from torchdoctor.report import Finding

# cuBLAS only honours these two workspace configurations in deterministic mode (CUDA >= 10.2).
DETERMINISTIC_CUBLAS_CONFIGS = (":4096:8", ":16:8")


def collect_reproducibility(context: EnvContext) -> dict[str, Any]:
    import torch

    return {
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "deterministic_warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "cublas_workspace_config": context.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "pythonhashseed": context.environ.get("PYTHONHASHSEED"),
        "cuda_available": bool(context.devices.get("devices")),
    }


def check_reproducibility(facts: Mapping[str, Any]) -> list[Finding]:
    """cublas-workspace-unset (info) when a CUDA device is present and deterministic mode could not work."""
    config = facts.get("cublas_workspace_config")
    if facts.get("cuda_available") and config not in DETERMINISTIC_CUBLAS_CONFIGS:
        shown = f"is {config!r}" if config else "is not set"
        return [make_finding(
            "cublas-workspace-unset",
            f"CUBLAS_WORKSPACE_CONFIG {shown}, so torch.use_deterministic_algorithms(True) will raise on "
            "CUDA matmuls.",
            details={"cublas_workspace_config": config},
        )]
    return []


def headline_reproducibility(facts: Mapping[str, Any]) -> str:
    return (f"deterministic algorithms {'on' if facts['deterministic_algorithms'] else 'off'}, "
            f"cudnn.deterministic={facts['cudnn_deterministic']}, cudnn.benchmark={facts['cudnn_benchmark']}")
