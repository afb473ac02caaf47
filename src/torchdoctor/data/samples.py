"""Per-index probing of a map-style dataset: ``dataset[i]`` before collation, to name the sample at fault.

Only run to *locate* a problem the real loader showed (a failed batch), so a healthy loader is read once.
The indices are the failed batch's own when torch's fetcher showed them, the loader's batch sampler's when
its order is deterministic, and otherwise drawn with a seeded generator of our own (the user's RNG is not
touched) — the report says which.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.data.frames import user_frame

SEED = 0
MAX_FAILURES = 5
MAX_SUMMARIES = 64  # enough to show differing shapes; a seeded search may probe many more for a failure


@dataclass
class SampleFailure:
    index: int
    exception: BaseException = field(repr=False)
    user_frame: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "exc_type": type(self.exception).__name__,
                "message": str(self.exception).strip(), "user_frame": self.user_frame}


@dataclass
class SampleProbe:
    """Summaries of the samples probed (by data-set index) and the indices whose ``__getitem__`` raised."""

    order: str  # "sampler" (the loader's own order), "batch" (torch's fetcher showed them) or "seeded"
    samples: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[SampleFailure] = field(default_factory=list)



def probe_indices(dataset: Any, indices: Iterable[int], *, order: str, budget_s: float = 10.0,
                  clock: Callable[[], float] = time.perf_counter) -> SampleProbe:
    """``dataset[i]`` for each index (within ``budget_s``), summarised; exceptions kept with the user's frame."""
    probe = SampleProbe(order)
    deadline = clock() + budget_s
    for index in indices:
        if clock() > deadline or len(probe.failures) >= MAX_FAILURES:
            break
        try:
            sample = dataset[index]
        except Exception as exc:
            probe.failures.append(SampleFailure(index, exc, user_frame(exc)))
            traceback.clear_frames(exc.__traceback__)
            continue
        if len(probe.samples) < MAX_SUMMARIES:
            probe.samples[index] = summarize_sample(sample)
    return probe


def summarize(samples: list[Any], indices: list[int] | None) -> dict[int, list[dict[str, Any]]]:
    """Summaries of already fetched samples (torch's fetcher held them), keyed by index or position."""
    keys = indices if indices is not None and len(indices) == len(samples) else list(range(len(samples)))
    return {key: summarize_sample(sample) for key, sample in zip(keys, samples, strict=True)}


def seeded_indices(dataset_len: int, count: int) -> list[int]:
    """``count`` distinct indices from our own seeded generator (the global RNG is left alone)."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    return torch.randperm(dataset_len, generator=generator)[:count].tolist()


def summarize_sample(sample: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Every array-like leaf of a sample: name, kind, shape, dtype, negative strides, non-finite values."""
    if isinstance(sample, Mapping):
        return [row for key, value in sample.items()
                for row in summarize_sample(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(sample, (tuple, list)):
        return [row for index, value in enumerate(sample) for row in summarize_sample(value, f"{prefix}[{index}]")]
    return [_leaf(sample, prefix or "sample")]


def _leaf(value: Any, name: str) -> dict[str, Any]:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        nonfinite = value.is_floating_point() and not bool(torch.isfinite(value).all())
        return {"name": name, "kind": "tensor", "shape": list(value.shape),
                "dtype": str(value.dtype).replace("torch.", ""), "negative_strides": False, "nonfinite": nonfinite}
    if isinstance(value, np.ndarray):
        floating = np.issubdtype(value.dtype, np.floating)
        return {"name": name, "kind": "ndarray", "shape": list(value.shape), "dtype": str(value.dtype),
                "negative_strides": any(s < 0 for s in value.strides),
                "strides": list(value.strides), "nonfinite": floating and not bool(np.isfinite(value).all())}
    if isinstance(value, float):
        return {"name": name, "kind": "number", "shape": [], "dtype": "float", "negative_strides": False,
                "nonfinite": not math.isfinite(value)}
    return {"name": name, "kind": type(value).__name__, "shape": None, "dtype": None, "negative_strides": False,
            "nonfinite": False}
