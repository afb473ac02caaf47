"""A batch meets a model: its tensors moved to a device, unpacked into a call, the output's prediction picked.

One definition for the training-step harness (step.py), data's shape probe and built-in losses, and count,
so every command calls a user's model the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def as_call(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments for ``model(...)``."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def to_device(obj: Any, dev: torch.device) -> Any:
    """Move every tensor in nested tuples/lists/dicts to ``dev``; other leaves stay as they are."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, Mapping):
        return {k: to_device(v, dev) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, dev) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, dev) for v in obj) if type(obj) in (tuple, list) else obj
    return obj


def prediction_of(output: Any) -> Any:
    """The tensor a loss compares with the targets: the output, its element 0, or its ``logits``."""
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    return output
