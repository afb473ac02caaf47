"""Whole-data-set scans when they are cheap: every label (TensorDataset, a ``targets``/``labels`` attribute)
and every non-finite sample of a TensorDataset, without calling ``__getitem__`` per sample."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torchdoctor.data.fields import BatchLayout, split_batch

MAX_SCAN_ELEMENTS = 200_000_000  # a NaN scan over more than this is no longer "cheap" (about 1 s)
MAX_NAMED = 20
LABEL_ATTRIBUTES = ("targets", "labels")
CHECKED_SAMPLES = 4  # an attribute must agree with what __getitem__ returns for these first indices


def scan_labels(dataset: Any, layout: BatchLayout | None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, Any] | None:
    """Min, max and class counts of the whole data set's labels, or None when no cheap source exists."""
    import torch

    start = clock()
    try:
        found = _label_source(dataset, layout)
    except Exception:  # the user's __len__ or attributes raised: no cheap scan, reading already told the story
        return None
    if found is None:
        return None
    labels, source = found
    if labels.numel() == 0 or labels.is_complex() or labels.dtype == torch.bool:
        return None
    facts = {"source": source, "samples": int(labels.shape[0]), "dtype": str(labels.dtype).replace("torch.", "")}
    facts.update(_label_summary(labels))
    facts["seconds"] = round(clock() - start, 4)
    return facts


def scan_nonfinite(dataset: Any) -> dict[str, Any] | None:
    """Data-set indices of samples holding NaN/inf in any floating tensor of a TensorDataset (None: no scan)."""
    import torch
    from torch.utils.data import TensorDataset

    if not isinstance(dataset, TensorDataset):
        return None
    floating = [(i, t) for i, t in enumerate(dataset.tensors) if t.is_floating_point()]
    if sum(t.numel() for _, t in floating) > MAX_SCAN_ELEMENTS:
        return None
    bad = torch.zeros(len(dataset), dtype=torch.bool)
    for _, tensor in floating:
        # finite min and max prove every element finite (aminmax propagates NaN): one pass, no mask allocated
        if tensor.numel() and not all(bool(torch.isfinite(v)) for v in torch.aminmax(tensor)):
            bad |= ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    indices = torch.nonzero(bad).flatten()
    return {"count": int(indices.numel()), "indices": indices[:MAX_NAMED].tolist()}


def _label_summary(labels: Any) -> dict[str, Any]:
    """Range and class counts, through numpy (one thread, no pool to wake; bincount is linear)."""
    import numpy as np

    flat = labels.reshape(-1).numpy() if labels.device.type == "cpu" else labels.reshape(-1).cpu().numpy()
    if np.issubdtype(flat.dtype, np.floating):
        flat = flat[np.isfinite(flat)]
        if flat.size == 0 or not np.array_equal(flat, np.round(flat)):
            return {"integral": False, "histogram": None}
        flat = flat.astype(np.int64)
    low, high = int(flat.min()), int(flat.max())
    if 0 <= low and high < 10_000_000:
        counts = np.bincount(flat)
        present = np.flatnonzero(counts)
        histogram = dict(zip(present.tolist(), counts[present].tolist(), strict=True))
    else:
        values, counts = np.unique(flat, return_counts=True)
        histogram = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return {"integral": True, "min": low, "max": high, "histogram": histogram if len(histogram) <= 1000 else None,
            "classes": len(histogram)}


def _label_source(dataset: Any, layout: BatchLayout | None) -> tuple[Any, str] | None:
    from torch.utils.data import Subset, TensorDataset

    if layout is None or layout.target_key is None:
        return None
    if isinstance(dataset, TensorDataset) and isinstance(layout.target_key, int):
        if layout.target_key < len(dataset.tensors):
            return dataset.tensors[layout.target_key], "TensorDataset"
        return None
    if isinstance(dataset, Subset):
        base = _label_source(dataset.dataset, layout)
        if base is None:
            return None
        return base[0][list(dataset.indices)], f"Subset of {base[1]}"
    return _attribute_labels(dataset, layout)


def _attribute_labels(dataset: Any, layout: BatchLayout) -> tuple[Any, str] | None:
    """``dataset.targets`` / ``dataset.labels`` when it is one number per sample that ``__getitem__`` returns."""
    import numpy as np
    import torch

    for name in LABEL_ATTRIBUTES:
        values = getattr(dataset, name, None)
        if values is None or isinstance(values, (str, bytes)):
            continue
        try:
            # numpy parses a list of Python ints several times faster than torch.as_tensor does
            listed = isinstance(values, (list, tuple))
            labels = torch.from_numpy(np.asarray(values)) if listed else torch.as_tensor(values)
        except Exception:  # names of classes, ragged lists: not labels we can scan
            continue
        if labels.dim() >= 1 and labels.shape[0] == len(dataset) and _agrees(dataset, layout, labels):
            return labels, f"{type(dataset).__name__}.{name}"
    return None


def _agrees(dataset: Any, layout: BatchLayout, labels: Any) -> bool:
    """A target_transform or a ``label - 1`` in ``__getitem__`` would make the attribute lie: check a few."""
    import torch

    for index in range(min(CHECKED_SAMPLES, len(labels))):
        try:
            _inputs, target = split_batch(dataset[index], layout)
            if not torch.equal(torch.as_tensor(target).reshape(-1).to(labels.dtype), labels[index].reshape(-1)):
                return False
        except Exception:  # the sample does not look like the batches: do not trust the attribute
            return False
    return True
