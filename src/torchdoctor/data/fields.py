"""What a batch is made of: which part is the model's input, which the target, and every tensor by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchdoctor.errors import UsageError

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "img", "pixel_values", "input_ids", "features", "data")
TARGET_KEYS = ("y", "target", "targets", "label", "labels", "class", "classes")

Key = str | int


@dataclass(frozen=True)
class BatchLayout:
    """Where the input and the target sit in a batch; for a dict without an input key, every other key is input."""

    kind: str  # "sequence" (tuple/list), "dict" or "tensor"
    input_key: Key | None
    target_key: Key | None

    @property
    def input_name(self) -> str:
        return field_name(self.input_key) if self.input_key is not None else "(other keys)"

    @property
    def target_name(self) -> str | None:
        return field_name(self.target_key) if self.target_key is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "input": self.input_name, "target": self.target_name}


def find_layout(batch: Any, input_key: Key | None = None, target_key: Key | None = None) -> BatchLayout:
    """The layout of ``batch``; an explicit key the batch does not have is a usage error."""
    if isinstance(batch, Mapping):
        return _dict_layout(batch, input_key, target_key)
    if isinstance(batch, (tuple, list)):
        size = len(batch)
        inputs = _position(input_key, size, "--input-key", 0)
        target = _position(target_key, size, "--target-key", 1 if size >= 2 and inputs != 1 else None)
        return BatchLayout("sequence", inputs, target)
    if input_key is not None or target_key is not None:
        raise UsageError("--input-key/--target-key need tuple or dict batches; this loader yields single tensors")
    return BatchLayout("tensor", None, None)


def split_batch(batch: Any, layout: BatchLayout) -> tuple[Any, Any]:
    """``(inputs, target)``; target None when the batch has none."""
    if layout.kind == "tensor":
        return batch, None
    target = batch[layout.target_key] if layout.target_key is not None else None
    if layout.input_key is not None:
        return batch[layout.input_key], target
    return {k: v for k, v in batch.items() if k != layout.target_key}, target


def tensor_fields(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every tensor in nested tuples/lists/dicts, named like ``[0]`` or ``image`` or ``inputs.mask``."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [(prefix or "batch", obj)]
    if isinstance(obj, Mapping):
        items = [(f"{prefix}.{key}" if prefix else str(key), value) for key, value in obj.items()]
    elif isinstance(obj, (tuple, list)):
        items = [(f"{prefix}[{index}]", value) for index, value in enumerate(obj)]
    else:
        return []
    return [pair for name, value in items for pair in tensor_fields(value, name)]


def field_name(key: Key) -> str:
    return f"[{key}]" if isinstance(key, int) else str(key)


def _dict_layout(batch: Mapping, input_key: Key | None, target_key: Key | None) -> BatchLayout:
    keys = list(batch)
    for given, option in ((input_key, "--input-key"), (target_key, "--target-key")):
        if given is not None and given not in batch:
            raise UsageError(f"{option} {given!r} is not a key of the batch; its keys are {_names(keys)}")
    target = target_key if target_key is not None else next((k for k in TARGET_KEYS if k in batch), None)
    inputs = input_key if input_key is not None else next((k for k in INPUT_KEYS if k in batch and k != target), None)
    if inputs is None and len([k for k in keys if k != target]) == 1:
        inputs = next(k for k in keys if k != target)
    return BatchLayout("dict", inputs, target)


def _position(key: Key | None, size: int, option: str, default: int | None) -> int | None:
    if key is None:
        return default if default is None or default < size else None
    try:
        position = int(key)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {key!r}: batches are tuples of {size}; give a position 0..{size - 1}") from None
    if not -size <= position < size:
        raise UsageError(f"{option} {position} is out of range for batches that are tuples of {size}")
    return position % size


def _names(keys: list[Any]) -> str:
    return ", ".join(repr(k) for k in keys)
