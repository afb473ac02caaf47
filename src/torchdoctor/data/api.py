"""``probe_loader``: the Python twin of ``torchdoctor data`` (collect → judge → report)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from torchdoctor.data.deadline import DEFAULT_TIMEOUT_S
from torchdoctor.data.loader import DEFAULT_BATCH_SIZE
from torchdoctor.errors import UsageError
from torchdoctor.report import Report

__all__ = ["probe_loader"]


def probe_loader(
    loader: Any,
    model: Any = None,
    *,
    num_classes: int | None = None,
    loss: str | Callable[[Any, Any], Any] | None = None,
    batches: int = 20,
    input_key: str | int | None = None,
    target_key: str | int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
) -> Report:
    """Read the first ``batches`` batches of ``loader`` and judge them; with ``model``, train a real step on a copy.

    ``loader`` is a DataLoader, or a Dataset (read through ``DataLoader(dataset, batch_size=batch_size)``).
    ``loss`` is ``"ce"``, ``"bce"``, ``"mse"``, a callable ``loss(output, target)`` or a ``file.py:name``
    spec; without it the loss is inferred from the targets. ``device`` defaults to CUDA when available.
    ``timeout``: seconds ``iter(loader)`` and each batch may take before the loader counts as hung
    (``loader-hang``; None or 0: wait forever). It uses SIGALRM while reading, so it applies on the main
    thread only, and not while another SIGALRM handler or alarm is set (``result["timeout_s"]`` says if it did).
    The loader, the dataset, the model and the RNG state are left as they were found.
    """
    from torchdoctor.data.checks import check_data
    from torchdoctor.data.loader import as_loader
    from torchdoctor.data.loss import resolve_loss
    from torchdoctor.data.probe import ProbeOptions, collect_data_facts
    from torchdoctor.data.sections import data_sections

    _validate(batches, num_classes, batch_size, model)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
        raise UsageError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    loader, wrapped = as_loader(loader, batch_size)
    options = ProbeOptions(batches=batches, input_key=input_key, target_key=target_key, num_classes=num_classes,
                           loss=resolve_loss(loss), device=device, on_progress=on_progress, timeout_s=timeout)
    facts = collect_data_facts(loader, wrapped, model, options)
    findings = tuple(check_data(facts))
    result = {**facts, "throughput": throughput(facts)}
    return Report("data", findings, result, sections=data_sections(result, findings))


def throughput(facts: dict[str, Any]) -> dict[str, Any]:
    """Loader speed (batch 0 includes starting workers, so the steady rate leaves it out) vs the step time."""
    reading = facts["reading"]
    times, sizes = reading["batch_ms"], reading["batch_sizes"]
    steady, steady_sizes = times[1:], sizes[1:]
    per_batch = statistics.median(steady) if steady else None
    total_ms = sum(steady)
    from torchdoctor.data.checks import compute_ms

    step = facts.get("step") or {}
    step_ms = compute_ms(step["timings_ms"]) if step.get("ok") else None
    return {
        "first_batch_ms": reading["start_ms"] + times[0] if times else None,
        "per_batch_ms": per_batch,
        "samples": sum(sizes),
        "samples_per_s": 1000.0 * sum(steady_sizes) / total_ms if total_ms > 0 else None,
        "step_ms": step_ms,
        "step_samples_per_s": 1000.0 * sizes[0] / step_ms if step_ms and sizes else None,
    }


def _validate(batches: int, num_classes: int | None, batch_size: int, model: Any) -> None:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UsageError(f"batches must be a positive integer, got {batches!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if model is not None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, got {type(model).__name__}")
