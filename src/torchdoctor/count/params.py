"""Parameter facts: totals with shared (tied) parameters counted once, trainable/frozen, buffers, bytes by dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SharedParameter:
    """One parameter reachable under several names (tied weights): counted once in every total."""

    names: tuple[str, ...]
    numel: int

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "numel": self.numel}


@dataclass(frozen=True)
class ParamFacts:
    """Counts of a model's parameters and buffers; works on the meta device (nothing is read)."""

    total: int
    """Distinct parameters' elements (a tied parameter once): what ``sum(p.numel() for p in model.parameters())``
    gives, and what torchvision publishes as ``num_params``."""
    trainable: int
    frozen: int
    buffers: int
    """Elements of distinct buffers (BatchNorm running stats, position indices, ...)."""
    buffer_bytes: int
    bytes_by_dtype: dict[str, int]
    """Bytes of parameters and buffers together (the state dict's tensors), by dtype name."""
    shared: tuple[SharedParameter, ...]

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "buffers": self.buffers,
            "buffer_bytes": self.buffer_bytes,
            "bytes": self.bytes,
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "shared": [group.to_dict() for group in self.shared],
        }


def collect_params(model: Any, dtype: Any = None) -> ParamFacts:
    """Facts about ``model``'s parameters; with ``dtype``, floating tensors are sized as if converted to it."""
    by_identity: dict[int, tuple[Any, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(param), (param, []))[1].append(name)
    params = [param for param, _ in by_identity.values()]
    buffers = list(model.buffers())
    bytes_by_dtype: dict[str, int] = {}
    for tensor in [*params, *buffers]:
        kind = _effective_dtype(tensor, dtype)
        name = str(kind).removeprefix("torch.")
        bytes_by_dtype[name] = bytes_by_dtype.get(name, 0) + tensor.numel() * kind.itemsize
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    shared = tuple(SharedParameter(tuple(names), param.numel())
                   for param, names in by_identity.values() if len(names) > 1)
    return ParamFacts(
        total=total,
        trainable=trainable,
        frozen=total - trainable,
        buffers=sum(b.numel() for b in buffers),
        buffer_bytes=sum(b.numel() * _effective_dtype(b, dtype).itemsize for b in buffers),
        bytes_by_dtype=dict(sorted(bytes_by_dtype.items())),
        shared=shared,
    )


def _effective_dtype(tensor: Any, dtype: Any) -> Any:
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def module_params(module: Any) -> int:
    """Distinct parameter elements under ``module`` (recursively)."""
    return sum(p.numel() for p in module.parameters())
