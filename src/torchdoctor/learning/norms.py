"""L2 norms of many tensors (a step's gradients, its updates) that stay finite while the tensors' values are.

``measure`` queues one float32 norm per tensor on the device (``torch._foreach_norm``: one fused pass). Those
sum squares in float32, which overflow past 1.8e19: a diverging run's gradients get there long before any
value is non-finite, and its series then read inf just where they matter. A float64 norm of every tensor
costs ~30x, so once the collector has read a step back, ``rescued`` measures again only the tensors whose
norm came out inf (a run on its way to NaN: rare, and one more read-back then), scaled by their largest
value so that no square overflows, in float64 (float32 on MPS, which has none). Layers are summed on the
host (``per_layer``: ``math.hypot``, which does not overflow either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Norms:
    """The float32 norms of ``tensors`` as one device vector, and each tensor's version when measured."""

    tensors: list[Any]
    versions: list[int]
    values: Any


def measure(tensors: Sequence[Any]) -> Norms:
    """Per tensor, its L2 norm (float32, on the first tensor's device); nothing is read back here."""
    import torch

    tensors = list(tensors)
    norms = torch._foreach_norm(tensors)
    device = norms[0].device
    values = torch.stack([n.detach().to(device, torch.float32) for n in norms])
    return Norms(tensors, [t._version for t in tensors], values)


def rescued(norms: Norms, values: Sequence[float]) -> list[float]:
    """``values`` (``norms.values`` read back) with every inf one measured again where that still can be.

    A tensor changed in place since it was measured (its version moved on: ``grad.zero_()``) keeps its inf.
    So does one whose values are inf or NaN: its norm is no number."""
    values = list(values)
    again = [i for i, v in enumerate(values) if v == math.inf and norms.tensors[i]._version == norms.versions[i]]
    if again:
        for i, value in zip(again, scaled_norms([norms.tensors[i] for i in again]), strict=True):
            values[i] = value
    return values


def scaled_norms(tensors: Sequence[Any]) -> list[float]:
    """``max|t| * norm(t / max|t|)`` per tensor, in float64 (float32 on MPS): no square can overflow."""
    import torch

    results = []
    for tensor in tensors:
        wide = tensor.detach().to(torch.float32 if tensor.device.type == "mps" else torch.float64)
        largest = wide.abs().max()
        scaled = largest * torch.linalg.vector_norm(wide / largest)
        results.append(torch.where(largest.isfinite(), scaled, largest).to(tensors[0].device))
    return torch.stack(results).tolist()


def per_layer(values: Sequence[float], index: Sequence[int], groups: int) -> list[float]:
    """The norm of each group (``index[i]`` = group of value i): the hypotenuse of its members' norms."""
    members: list[list[float]] = [[] for _ in range(groups)]
    for value, group in zip(values, index, strict=True):
        members[group].append(value)
    return [math.hypot(*group) for group in members]


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Element-wise, as a tensor division would give them: x / 0 is inf, 0 / 0 is NaN."""
    return [n / d if d else (math.nan if n == 0 or math.isnan(n) else math.inf)
            for n, d in zip(numerators, denominators, strict=True)]
