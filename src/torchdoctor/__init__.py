"""torchdoctor: a doctor for PyTorch training. Importing it never imports torch.

Public API (each a twin of a CLI command, returning the same ``Report``):
``run_env``, ``inspect_checkpoint``, ``fix_checkpoint``, ``diff_checkpoints``, ``nan_hunt``,
``watch``, ``probe_loader``, ``count``, ``resolve_target``, ``run_training_step``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; loaded on first use so `import torchdoctor` stays torch-free.
_LAZY = {
    "run_env": "torchdoctor.env.api",
    "resolve_target": "torchdoctor.targets",
    "run_training_step": "torchdoctor.step",
    "inspect_checkpoint": "torchdoctor.ckpt.inspect",
    "fix_checkpoint": "torchdoctor.ckpt.fix",
    "diff_checkpoints": "torchdoctor.ckpt.diff",
    "probe_loader": "torchdoctor.data.api",
    "nan_hunt": "torchdoctor.nan.hunt",
    "watch": "torchdoctor.learning.api",
    "count": "torchdoctor.count.api",
    "Report": "torchdoctor.report",
    "Finding": "torchdoctor.report",
    "Severity": "torchdoctor.report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchdoctor' has no attribute {name!r}")
