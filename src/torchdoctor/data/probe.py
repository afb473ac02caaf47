"""Gather every fact ``data`` judges: loader settings, real batches, located samples, scans, model, step.

Order matters: the user's DataLoader is read first (so nothing we do in this process, such as calling
``dataset[i]``, runs before its workers fork), per-index probes only locate what reading showed, label facts
are complete before the training step runs, and the step runs last on a copy of the model.
"""

from __future__ import annotations

import contextlib
import functools
import re
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torchdoctor.data import labels as label_scan
from torchdoctor.data import samples as sample_probe
from torchdoctor.data.deadline import DEFAULT_TIMEOUT_S, TimeLimit, can_time_out
from torchdoctor.data.loader import batch_indices, collect_loader_facts, deterministic_batches
from torchdoctor.data.loss import LossChoice, builtin_loss, infer_task
from torchdoctor.data.read import Reading, read_batches
from torchdoctor.explain.rules import match_exception

HANG_SEARCH_BUDGET_S = 20.0  # reading samples one by one in this process to reproduce a worker hang
_TORCH_COLLATE = r"torch[\\/]utils[\\/]data[\\/]_utils[\\/]collate\.py"


@dataclass
class ProbeOptions:
    batches: int = 20
    input_key: Any = None
    target_key: Any = None
    num_classes: int | None = None
    loss: LossChoice | None = None
    device: str | None = None
    on_progress: Callable[[int, int], None] | None = None
    clock: Callable[[], float] = time.perf_counter
    usable_cpus: int | None = None  # None: measured (affinity and cgroup quota, like `env`)
    timeout_s: float | None = DEFAULT_TIMEOUT_S  # per iter()/next() on the loader; None or 0: no limit


def collect_data_facts(loader: Any, wrapped: bool, model: Any, options: ProbeOptions) -> dict[str, Any]:
    """Every fact the checks judge, as plain JSON-safe data; the RNGs the loader draws from are restored."""
    with preserved_rng(loader):
        return _collect(loader, wrapped, model, options)


@contextlib.contextmanager
def preserved_rng(loader: Any) -> Iterator[None]:
    """Iterating a shuffled loader draws from torch's global RNG (and the loader's or sampler's generator);
    a dataset may draw from ``random`` or numpy's. Restore them all, so the user's next epoch is the same one
    it would have been without the probe."""
    import random

    import numpy as np
    import torch

    generators = {id(g): g for g in (getattr(loader, "generator", None), getattr(loader.sampler, "generator", None))
                  if isinstance(g, torch.Generator)}
    saved = [(g, g.get_state()) for g in generators.values()]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        for generator, state in saved:
            generator.set_state(state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _collect(loader: Any, wrapped: bool, model: Any, options: ProbeOptions) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"loader": collect_loader_facts(loader, wrapped=wrapped),
                             "usable_cpus": options.usable_cpus or _usable_cpus(),
                             "cuda_available": bool(torch.cuda.is_available()),
                             # the limit actually applied (TimeLimit's own rule: none off the main thread...)
                             "timeout_s": TimeLimit(options.timeout_s).seconds}
    reading = read_batches(loader, options.batches, input_key=options.input_key, target_key=options.target_key,
                           on_progress=options.on_progress, clock=options.clock, timeout_s=options.timeout_s)
    facts["reading"] = _reading_facts(reading, loader)
    hung = reading.failure is not None and reading.failure.timed_out is not None
    facts["located"] = _locate_hang(loader, reading, options) if hung else _locate_failure(loader, reading, options)
    # the label scan checks a few samples through __getitem__: not on a data set that just hung
    facts["dataset_labels"] = None if hung else label_scan.scan_labels(loader.dataset, reading.layout, options.clock)
    facts["dataset_nonfinite"] = label_scan.scan_nonfinite(loader.dataset)
    facts["nonfinite"] = _nonfinite_indices(loader, reading)
    if model is not None and reading.kept:
        _collect_model_side(facts, model, reading, options)
    else:
        facts["model"] = None
        facts["task"] = _task(facts, options)
        facts["step"] = {"skipped": "no --model given"} if model is None else {"skipped": "no batch was read"}
    return facts


def _collect_model_side(facts: dict[str, Any], model: Any, reading: Reading, options: ProbeOptions) -> None:
    from torchdoctor.data.model import collect_model_facts, default_device

    facts["model"] = collect_model_facts(model, reading.kept[0], reading.layout)
    facts["task"] = _task(facts, options)
    device = options.device or default_device()
    facts["device"] = device
    if device != "cpu" and _labels_out_of_range(facts):
        # on CUDA an out-of-range label is a device-side assert that poisons the whole process
        facts["step"] = {"skipped": "labels are out of range; on an accelerator the step would assert"}
        return
    facts["step"] = _step_facts(model, reading, facts["task"], options, device)


def _step_facts(model: Any, reading: Reading, task: dict[str, Any], options: ProbeOptions,
                device: str) -> dict[str, Any]:
    """A real step on batch 0; a second, warm one on batch 1 only when the bottleneck judgement needs its time
    (``needs_warm_step``): a second step costs a whole step, which the probing-overhead goal cannot afford."""
    from torchdoctor.data.checks import needs_warm_step
    from torchdoctor.data.model import training_step
    from torchdoctor.step import LossInferenceError

    choice = options.loss or (builtin_loss(task["name"]) if task["name"] in ("ce", "bce", "mse") else None)
    loss_fn = choice.fn if choice else None
    result, warned = training_step(model, reading.kept[0], reading.layout, loss_fn, device)
    failure = result.failure
    if failure is not None and isinstance(failure.exception, LossInferenceError):
        return {"skipped": f"{failure.message}; pass --loss"}
    step = {**result.to_dict(), "warnings": warned, "batch_size": reading.batch_sizes[0], "timing": "first step"}
    if failure is not None:
        step["explained"] = _explained(failure.exception or f"{failure.exc_type}: {failure.message}")
    step["warnings_explained"] = [e for e in (_explained(w) for w in warned) if e]
    if result.ok and len(reading.kept) > 1 and needs_warm_step(_steady_load_ms(reading), result.timings_ms,
                                                                 result.device):
        warm, _warned = training_step(model, reading.kept[1], reading.layout, loss_fn, device)
        if warm.ok:
            step.update(losses=step["losses"] + warm.to_dict()["losses"], timings_ms=warm.to_dict()["timings_ms"],
                        timing="warm step on batch 1", batch_size=reading.batch_sizes[1])
    return step


def _steady_load_ms(reading: Reading) -> float | None:
    steady = reading.batch_ms[1:]  # batch 0 includes starting the workers
    return statistics.median(steady) if len(steady) >= 2 else None


def _task(facts: dict[str, Any], options: ProbeOptions) -> dict[str, Any]:
    """The loss the targets must suit, where that came from, and the number of classes when known."""
    reading, model = facts["reading"], facts.get("model") or {}
    target = reading["target"]
    output_shape = (model.get("output") or {}).get("shape")
    if options.loss is not None:
        name, source = options.loss.task, "--loss"
    else:
        name, source = infer_task(target, output_shape), "inferred from the targets and the output"
    classes, classes_from = options.num_classes, "--num-classes"
    if classes is None and output_shape and len(output_shape) >= 2 and name == "ce":
        classes, classes_from = output_shape[1], "the model's output width"
    ignore = options.loss.ignore_index if options.loss is not None else -100
    return {"name": name, "source": source, "num_classes": classes, "num_classes_source": classes_from,
            "ignore_index": ignore if name == "ce" else None, "loss": options.loss.name if options.loss else None}


def _labels_out_of_range(facts: dict[str, Any]) -> bool:
    from torchdoctor.data.label_checks import check_label_range

    return bool(check_label_range(facts))


def _reading_facts(reading: Reading, loader: Any) -> dict[str, Any]:
    layout = reading.layout
    fields = {name: stats.to_dict() for name, stats in reading.fields.items()}
    target_name = layout.target_name if layout else None
    target = dict(fields[target_name]) if target_name in fields else None
    if target is not None and reading.labels is not None:
        target.update(reading.labels.to_dict())
    failure = reading.failure.to_dict() if reading.failure else None
    if failure is not None:
        failure["explained"] = _explained(reading.failure.exception)
        failure["worker"] = _worker_facts(reading, loader)
        failure["stage"] = "collate" if _in_collate(reading.failure.exception, loader.collate_fn) else "fetch"
    return {"requested": reading.requested, "read": reading.read, "exhausted": reading.exhausted,
            "start_ms": reading.start_ms,
            "batch_ms": reading.batch_ms, "batch_sizes": reading.batch_sizes,
            "layout": layout.to_dict() if layout else None, "fields": fields,
            "input": layout.input_name if layout and layout.input_name in fields else None,
            "target_field": target_name if target is not None else None, "target": target,
            "failure": failure, "warnings": reading.warnings}


def _worker_facts(reading: Reading, loader: Any) -> dict[str, Any] | None:
    """Why a worker died, when the failure is about worker processes rather than the data they read."""
    from torchdoctor.env.child import signal_name
    from torchdoctor.env.workers import classify_worker_failure

    failure = reading.failure
    if loader.num_workers == 0 or failure is None:
        return None
    explained = match_exception(failure.exception)
    text = f"{failure.exc_type}: {failure.message}"
    cause = classify_worker_failure(text, timed_out=False)
    is_worker = (explained is not None and explained.id == "worker-failed") or (
        failure.at_start and cause == "pickling")
    if not is_worker:
        return None
    signals = [signal_name(-code) for code in failure.worker_exit_codes or () if code is not None and code < 0]
    if "SIGBUS" in signals:
        cause = "bus-error"
    elif signals and cause in ("worker-killed", "other"):
        cause = "worker-killed"
    return {"cause": cause, "exit_codes": failure.worker_exit_codes, "signals": signals}


def _in_collate(exc: BaseException, collate_fn: Any) -> bool:
    """The error came out of the collate step (the loader's collate_fn, or torch's own collate functions), not
    out of ``__getitem__``: seen in the traceback, or, from a worker, in the traceback text it sent back."""
    code = getattr(collate_fn, "__code__", None)
    for frame, _line in traceback.walk_tb(exc.__traceback__):
        if frame.f_code is code or re.search(_TORCH_COLLATE + "$", frame.f_code.co_filename):
            return True
    files = [_TORCH_COLLATE + '", line \\d+, in \\w+']
    if code is not None:
        files.append(f'{re.escape(code.co_filename)}", line \\d+, in {re.escape(code.co_name)}\\b')
    return any(re.search(r'File "[^"]*' + pattern, str(exc)) for pattern in files)


def _locate_failure(loader: Any, reading: Reading, options: ProbeOptions) -> dict[str, Any] | None:
    """Name the sample(s) behind a failed batch: from torch's fetcher, the sampler's order, or seeded draws."""
    from torchdoctor.data.loader import is_map_style

    failure = reading.failure
    if failure is None or failure.at_start or not is_map_style(loader.dataset):
        return None
    if failure.samples is not None:
        return {"order": "batch", "samples": sample_probe.summarize(failure.samples, failure.indices),
                "failures": []}
    if failure.index is not None:
        probe = sample_probe.SampleProbe("batch", failures=[sample_probe.SampleFailure(
            failure.index, failure.exception, failure.user_frame)])
        return _probe_facts(probe)
    indices, order = failure.indices, "batch"
    if indices is None:
        indices, order = batch_indices(loader, failure.batch_number), "sampler"
    if indices is None:
        size = _safe_len(loader.dataset)
        if not size:
            return None
        indices, order = sample_probe.seeded_indices(size, options.batches * (loader.batch_size or 1)), "seeded"
    return _probe_facts(sample_probe.probe_indices(loader.dataset, indices, order=order, clock=options.clock))


def _locate_hang(loader: Any, reading: Reading, options: ProbeOptions) -> dict[str, Any]:
    """Where the loader hung: the main process's own frame, or, for workers, the samples read again here.

    A worker's stack cannot be read from outside it; reading the same samples in this process under the same
    limit tells a sample that blocks wherever it is read from a deadlock that only forked workers meet.
    """
    from torchdoctor.data.loader import is_map_style

    failure = reading.failure
    if loader.num_workers == 0:
        return {"hang": "main", "index": failure.index, "indices": failure.indices, "user_frame": failure.user_frame}
    if failure.at_start or not is_map_style(loader.dataset) or not can_time_out():
        # (without a limit of our own, reading a sample that blocks here would hang the probe itself)
        return {"hang": "workers", "reproduced": None}
    indices, order = batch_indices(loader, failure.batch_number), "sampler"
    if indices is None:
        size = _safe_len(loader.dataset)
        if not size:
            return {"hang": "workers", "reproduced": None}
        indices, order = sample_probe.seeded_indices(size, options.batches * (loader.batch_size or 1)), "seeded"
    return {"hang": "workers", "order": order, **_read_one_by_one(loader.dataset, indices, failure.timed_out,
                                                                   options.clock)}


def _read_one_by_one(dataset: Any, indices: list[int], limit: float, clock: Callable[[], float]) -> dict[str, Any]:
    from torchdoctor.data.deadline import TimedOut
    from torchdoctor.data.frames import user_frame

    start, read = clock(), 0
    with TimeLimit(limit) as time_limit:
        for index in indices:
            if clock() - start > HANG_SEARCH_BUDGET_S:
                break
            try:
                time_limit.call(dataset.__getitem__, index)
            except TimedOut as exc:
                return {"reproduced": True, "index": index, "user_frame": user_frame(exc)}
            except Exception:  # an error is not a hang: reading went on past it
                pass
            read += 1
    return {"reproduced": False, "read": read, "read_ms": round((clock() - start) * 1000.0, 3)}


def _probe_facts(probe: sample_probe.SampleProbe) -> dict[str, Any]:
    failures = [{**f.to_dict(), "explained": _explained(f.exception)} for f in probe.failures]
    return {"order": probe.order, "samples": probe.samples, "failures": failures}


def _nonfinite_indices(loader: Any, reading: Reading) -> dict[str, Any]:
    """For each field with NaN/inf: the (batch, position) pairs and, when the order is known, data-set indices."""
    known = reading.indices is not None or deterministic_batches(loader)
    found = {}
    for name, stats in reading.fields.items():
        if not stats.nonfinite_positions:
            continue
        indices = [_index_at(loader, reading, batch, position) for batch, position in stats.nonfinite_positions]
        found[name] = {"nan": stats.nan, "inf": stats.inf, "positions": [list(p) for p in stats.nonfinite_positions],
                       "indices": indices if known else None}
    return found


def _index_at(loader: Any, reading: Reading, batch: int, position: int) -> int | None:
    if reading.indices is not None:
        order = reading.indices[batch] if batch < len(reading.indices) else None
    else:
        order = batch_indices(loader, batch)
    return order[position] if order and position < len(order) else None


def _safe_len(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:  # no __len__, or a user's __len__ that raises
        return None


def _explained(exc: BaseException | str) -> dict[str, Any] | None:
    explanation = match_exception(exc)
    if explanation is None:
        return None
    return {"id": explanation.id, "sentence": explanation.sentence, "quote": explanation.quote}


@functools.lru_cache(maxsize=1)
def _usable_cpus() -> int:
    """Measured once per process: ~70 small /sys and cgroup reads that do not change while it runs."""
    from torchdoctor.env.base import EnvContext
    from torchdoctor.env.threads import collect_threads

    return int(collect_threads(EnvContext(isolate=False))["usable_cpus"])
