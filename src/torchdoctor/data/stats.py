"""Running statistics over the batches read: per field shape, dtype, range, mean/std, NaN/inf; label counts.

Cheap by construction (the probing-overhead goal is 10%): min/max and mean/std per field and batch, on one
thread through numpy; NaN/inf are counted only when the range is not finite (min/max propagate NaN), so
clean data pays for no extra pass.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

MAX_HISTOGRAM_VALUES = 1000  # more distinct values than this: regression targets or ids, not classes
MAX_POSITIONS = 20  # non-finite samples remembered per field


class FieldStats:
    """Statistics of one named tensor field across batches (Chan's parallel mean/variance merge)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype: str | None = None
        self.shape: list[int] | None = None
        self.shapes_vary = False
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nan = 0
        self.inf = 0
        self.nonfinite_positions: list[tuple[int, int]] = []  # (batch number, position in the batch)

    def add(self, tensor: Any, batch_number: int) -> None:
        import torch

        self._note_shape(tensor)
        if tensor.numel() == 0 or tensor.dtype == torch.bool or tensor.is_complex():
            return
        values = tensor.detach()
        if values.is_floating_point() and not _all_finite(values):
            values = self._count_nonfinite(values, batch_number)
            if values.numel() == 0:
                return
        low, high, mean, std = _summary(values)
        self.min, self.max = min(self.min, low), max(self.max, high)
        self._merge(values.numel(), mean, std * std * values.numel())

    def _note_shape(self, tensor: Any) -> None:
        shape = list(tensor.shape)
        if self.shape is None:
            self.shape, self.dtype = shape, str(tensor.dtype).replace("torch.", "")
        elif shape[1:] != self.shape[1:]:
            self.shapes_vary = True

    def _count_nonfinite(self, values: Any, batch_number: int) -> Any:
        import torch

        self.nan += int(torch.isnan(values).sum())
        self.inf += int(torch.isinf(values).sum())
        if values.dim() >= 1 and len(self.nonfinite_positions) < MAX_POSITIONS:
            rows = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
            for position in torch.nonzero(rows).flatten().tolist()[:MAX_POSITIONS]:
                self.nonfinite_positions.append((batch_number, position))
        return values[torch.isfinite(values)]

    def _merge(self, count: int, mean: float, m2: float) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def to_dict(self) -> dict[str, Any]:
        seen = self.count > 0
        return {
            "shape": self.shape,
            "shapes_vary": self.shapes_vary,
            "dtype": self.dtype,
            "min": self.min if seen else None,
            "max": self.max if seen else None,
            "mean": self.mean if seen else None,
            "std": math.sqrt(self.m2 / self.count) if seen else None,
            "nan": self.nan,
            "inf": self.inf,
            "nonfinite_positions": [list(p) for p in self.nonfinite_positions],
        }


def _all_finite(values: Any) -> bool:
    low, high, _mean, _std = _summary(values, moments=False)
    return math.isfinite(low) and math.isfinite(high)


def _summary(values: Any, moments: bool = True) -> tuple[float, float, float, float]:
    """min, max, mean, std. CPU tensors go through numpy (zero-copy, one thread): torch's parallel reductions
    wait milliseconds for their thread pool on a busy machine, which turned 20 batches of statistics into
    longer than reading them (benchmarks/bench_data.py)."""
    import torch

    if values.device.type != "cpu" or values.dtype in (torch.float16, torch.bfloat16):
        low, high = (float(v) for v in torch.aminmax(values))
        std, mean = torch.std_mean(values.double(), correction=0) if moments else (0.0, 0.0)
        return low, high, float(mean), float(std)
    array = values.numpy()
    low, high = float(array.min()), float(array.max())  # NaN propagates, like torch.aminmax
    if not moments:
        return low, high, 0.0, 0.0
    return (low, high, *_moments(array))


def _moments(array: Any) -> tuple[float, float]:
    """Mean and std from one sum and one dot product (a few µs per 100k values, versus ~100 µs for np.std);
    exact two-pass float64 where E[x²] - mean² would cancel (values far from zero with a small spread)."""
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    count = flat.size
    mean = float(flat.sum()) / count
    variance = float(np.dot(flat, flat)) / count - mean * mean
    if variance <= 1e-3 * mean * mean:
        return float(flat.mean(dtype=np.float64)), float(flat.std(dtype=np.float64))
    return mean, math.sqrt(variance)


class LabelStats:
    """Class counts of the target field (integer, or float holding whole numbers) and per-batch class sets."""

    def __init__(self) -> None:
        self.histogram: Counter[int] = Counter()
        self.classes_per_batch: list[list[int]] = []
        self.integral = True
        self.too_many = False
        self.one_hot_rows = True  # every row of a 2-D target is 0/1 with exactly one 1

    def add(self, target: Any) -> None:
        import numpy as np
        import torch

        if target.numel() == 0 or target.is_complex() or target.dtype in (torch.float16, torch.bfloat16):
            return
        values = target.detach().cpu().numpy()  # numpy: one thread, no pool to wake (see _summary)
        if np.issubdtype(values.dtype, np.floating):
            finite = values[np.isfinite(values)]
            self.integral = self.integral and bool(np.array_equal(finite, np.round(finite)))
            if not self.integral:
                return
            values = finite.astype(np.int64)
        self._note_one_hot(values)
        classes, counts = np.unique(values, return_counts=True)
        keys = classes.tolist()
        if target.dim() == 1:
            self.classes_per_batch.append(keys)
        if not self.too_many:
            self.histogram.update(dict(zip(keys, counts.tolist(), strict=True)))
            self.too_many = len(self.histogram) > MAX_HISTOGRAM_VALUES
            if self.too_many:
                self.histogram.clear()

    def _note_one_hot(self, values: Any) -> None:
        if values.ndim != 2 or not self.one_hot_rows:
            self.one_hot_rows = self.one_hot_rows and values.ndim == 2
            return
        binary = bool(((values == 0) | (values == 1)).all())
        self.one_hot_rows = binary and bool((values.sum(axis=1) == 1).all())

    def to_dict(self) -> dict[str, Any]:
        return {
            "integral": self.integral,
            "histogram": None if self.too_many or not self.integral else dict(sorted(self.histogram.items())),
            "classes_per_batch": [len(c) for c in self.classes_per_batch],
            "first_batch_classes": self.classes_per_batch[0] if self.classes_per_batch else None,
            "one_hot_rows": self.one_hot_rows,
        }
