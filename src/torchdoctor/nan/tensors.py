"""Cheap non-finite checks on tensors and on nested outputs; the only per-step work nan-hunt does."""

from __future__ import annotations

import cmath
import math
from collections.abc import Iterable, Iterator
from typing import Any

NAN = "nan"
INF = "inf"
LOW_PRECISION = ("float16", "bfloat16")


def leaves(obj: Any) -> list[Any]:
    """Every tensor in a nested structure (tuples, lists, dicts, namedtuples, registered pytrees)."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves(obj) if isinstance(leaf, torch.Tensor)]


def shallow_tensors(args: Iterable[Any], kwargs: dict[str, Any] | None = None) -> Iterator[Any]:
    """Tensors among an op's arguments, one level deep (aten ops take tensors or lists of them)."""
    import torch

    values = list(args) + list((kwargs or {}).values())
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, torch.Tensor))


def checkable(tensor: Any) -> bool:
    """Floating/complex, dense and non-empty: the tensors a NaN or inf can live in."""
    import torch

    return (
        (tensor.is_floating_point() or tensor.is_complex())
        and tensor.layout is torch.strided
        and tensor.device.type != "meta"
        and tensor.numel() > 0
    )


def bad_kinds(tensors: Iterable[Any], kinds: tuple[str, ...]) -> set[str]:
    """Which of ``kinds`` ("nan", "inf") occur anywhere in ``tensors``."""
    import torch

    found: set[str] = set()
    for tensor in tensors:
        if not checkable(tensor) or screened_finite(tensor):
            continue
        tensor = tensor.detach()
        if INF in kinds and bool(torch.isinf(tensor).any()):
            found.add(INF)
        if NAN in kinds and bool(torch.isnan(tensor).any()):
            found.add(NAN)
    return found


def screened_finite(tensor: Any) -> bool:
    """True when the tensor is surely free of NaN/inf: one sum, which any NaN or inf makes non-finite.

    A plain sum reads the tensor once; ``isfinite(t).all()`` writes a mask and reads it again and
    is ~50x slower on CPU. A finite tensor whose sum overflows only costs the exact check after.
    """
    import torch

    low = tensor.dtype in (torch.float16, torch.bfloat16)
    total = tensor.detach().sum(dtype=torch.float32 if low else None).item()
    return cmath.isfinite(total) if isinstance(total, complex) else math.isfinite(total)


def output_sum(tensor: Any) -> Any:
    """``screened_finite``'s sum, left on the device (no sync): non-finite when the tensor held NaN/inf."""
    import torch

    low = tensor.dtype in (torch.float16, torch.bfloat16)
    return tensor.detach().sum(dtype=torch.float32 if low else None)


def worst_kind(tensors: Iterable[Any], kinds: tuple[str, ...]) -> str | None:
    """"nan" if any NaN, else "inf" if any inf (and inf counts), else None."""
    found = bad_kinds(tensors, kinds)
    return NAN if NAN in found else (INF if INF in found else None)


def has_kind(tensor: Any, kind: str) -> bool:
    import torch

    if not checkable(tensor):
        return False
    return bool((torch.isnan(tensor) if kind == NAN else torch.isinf(tensor)).any())


def bad_rows(tensor: Any, kind: str, limit: int = 16) -> list[int]:
    """Indices along dim 0 of the rows holding ``kind`` (the samples of a batch), at most ``limit``."""
    import torch

    if tensor.dim() == 0:
        return []
    mask = torch.isnan(tensor) if kind == NAN else torch.isinf(tensor)
    rows = mask.reshape(tensor.shape[0], -1).any(dim=1)
    return [int(i) for i in torch.nonzero(rows).flatten()[:limit].tolist()]


def total_norm(tensors: list[Any]) -> float:
    """Global L2 norm, inf/NaN only when an element is: a fused float32 pass, redone in float64 if it overflowed.

    float32 squares overflow above ~1.8e19 per element, so a run whose gradients are all finite (true norm
    6e20) would otherwise record ``inf``; the float64 pass runs only on that rare non-finite result.
    """
    import torch

    dense = [t.detach() for t in tensors if t.layout is torch.strided]
    if not dense:
        return 0.0
    norm = float(torch.nn.utils.get_total_norm(dense).item())
    if math.isfinite(norm):
        return norm
    norms = torch._foreach_norm(dense, 2, dtype=torch.float64)
    return float(torch.linalg.vector_norm(torch.stack(norms)).item())


def dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).replace("torch.", "")
