"""Read the first batches through the user's own DataLoader: timing, statistics, and how it failed if it did.

The loader is left as found: our iterator's workers are shut down, a persistent-workers loader gets its
previous iterator back, and Python warnings raised while reading are recorded, not printed.
"""

from __future__ import annotations

import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.data.deadline import TimedOut, TimeLimit
from torchdoctor.data.fields import BatchLayout, find_layout, split_batch, tensor_fields
from torchdoctor.data.frames import fetch_context, user_frame
from torchdoctor.data.stats import FieldStats, LabelStats

KEPT_BATCHES = 2  # the training step uses the first batch; a second one is kept for a warm step
_DATALOADER_FILE = re.compile(r"torch[\\/]utils[\\/]data[\\/]dataloader\.py$")


@dataclass
class ReadFailure:
    """The loader raised: when (batch number, or ``at_start`` for ``iter()``), what, and where."""

    batch_number: int
    at_start: bool
    exc_type: str
    message: str
    user_frame: dict[str, Any] | None
    exception: BaseException = field(repr=False)
    indices: list[int] | None = None  # the failing batch's data-set indices, when torch's fetcher showed them
    index: int | None = None  # the index __getitem__ raised for
    samples: list[Any] | None = field(default=None, repr=False)  # fetched samples when collation failed
    worker_exit_codes: list[int | None] | None = None
    timed_out: float | None = None  # the limit in seconds, when the loader did not answer in time
    timed_out_by: str | None = None  # "torchdoctor" (--timeout) or "DataLoader(timeout=...)", the loader's own

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch_number, "at_start": self.at_start, "exc_type": self.exc_type,
                "message": self.message, "user_frame": self.user_frame, "indices": self.indices,
                "index": self.index, "worker_exit_codes": self.worker_exit_codes, "timed_out": self.timed_out,
                "timed_out_by": self.timed_out_by}


@dataclass
class Reading:
    """What reading the batches gave."""

    requested: int
    start_ms: float = 0.0
    batch_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    layout: BatchLayout | None = None
    indices: list[list[int]] | None = None  # per batch read: its data-set indices, when they could be recorded
    fields: dict[str, FieldStats] = field(default_factory=dict)
    labels: LabelStats | None = None
    kept: list[Any] = field(default_factory=list, repr=False)
    failure: ReadFailure | None = None
    warnings: list[str] = field(default_factory=list)
    exhausted: bool = False  # the loader ran out before ``requested`` batches: it has no more

    @property
    def read(self) -> int:
        return len(self.batch_ms)


def read_batches(loader: Any, count: int, *, input_key: Any = None, target_key: Any = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter, timeout_s: float | None = None) -> Reading:
    """Read up to ``count`` batches; a layout error (a usage error) propagates after the loader is closed.

    ``timeout_s`` limits ``iter()`` and each ``next()``: a loader that does not answer in time is a failure
    with ``timed_out`` set, and its hung workers are terminated rather than waited for.
    """
    reading = Reading(requested=count)
    previous = getattr(loader, "_iterator", None)
    iterator = None
    with warnings.catch_warnings(record=True) as caught, TimeLimit(timeout_s) as limit:
        warnings.simplefilter("always")
        try:
            start = clock()
            try:
                iterator = limit.call(iter, loader)
            except (Exception, TimedOut) as exc:
                reading.failure = _failure(exc, 0, at_start=True, iterator=None)
                return reading
            reading.start_ms = (clock() - start) * 1000.0
            reading.indices = _record_indices(iterator, loader)
            _read_loop(reading, iterator, count, input_key, target_key, on_progress, clock, limit)
            _own_timeout(reading.failure, loader)
        finally:
            _close(loader, iterator, previous, hung=bool(reading.failure and reading.failure.timed_out))
            reading.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return reading


def _read_loop(reading: Reading, iterator: Any, count: int, input_key: Any, target_key: Any,
               on_progress: Callable[[int, int], None] | None, clock: Callable[[], float],
               limit: TimeLimit) -> None:
    for number in range(count):
        start = clock()
        try:
            batch = limit.call(next, iterator)
        except StopIteration:
            reading.exhausted = True
            return
        except (Exception, TimedOut) as exc:
            reading.failure = _failure(exc, number, at_start=False, iterator=iterator)
            return
        reading.batch_ms.append((clock() - start) * 1000.0)
        _take(reading, batch, number, input_key, target_key)
        if on_progress is not None:
            on_progress(number + 1, count)


def _take(reading: Reading, batch: Any, number: int, input_key: Any, target_key: Any) -> None:
    import torch

    if reading.layout is None:
        reading.layout = find_layout(batch, input_key, target_key)
    tensors = tensor_fields(batch)
    for name, tensor in tensors:
        reading.fields.setdefault(name, FieldStats(name)).add(tensor, number)
    reading.batch_sizes.append(next((int(t.shape[0]) for _, t in tensors if t.dim() > 0), 1))
    _inputs, target = split_batch(batch, reading.layout)
    if isinstance(target, torch.Tensor):
        reading.labels = reading.labels or LabelStats()
        reading.labels.add(target)
    if len(reading.kept) < KEPT_BATCHES:
        reading.kept.append(batch)


def _record_indices(iterator: Any, loader: Any) -> list[list[int]] | None:
    """Record each batch's indices as a single-process iterator draws them (it draws one batch per ``next``),
    so shuffled batches name their samples too. Worker iterators prefetch inside ``iter()``: not recordable."""
    from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

    from torchdoctor.data.loader import is_map_style

    source = getattr(iterator, "_sampler_iter", None)
    if not isinstance(iterator, _SingleProcessDataLoaderIter) or source is None or not is_map_style(loader.dataset):
        return None
    recorded: list[list[int]] = []

    def recording() -> Iterator[Any]:
        for item in source:
            recorded.append([int(i) for i in item] if isinstance(item, (list, tuple)) else [int(item)])
            yield item

    iterator._sampler_iter = recording()
    return recorded


def _failure(exc: BaseException, number: int, *, at_start: bool, iterator: Any) -> ReadFailure:
    context = fetch_context(exc)
    failure = ReadFailure(
        batch_number=number, at_start=at_start, exc_type=type(exc).__name__, message=str(exc).strip(),
        user_frame=user_frame(exc), exception=exc, indices=context.get("indices"), index=context.get("index"),
        samples=context.get("samples"), worker_exit_codes=_exit_codes(iterator),
        timed_out=exc.seconds if isinstance(exc, TimedOut) else None,
        timed_out_by="torchdoctor" if isinstance(exc, TimedOut) else None,
    )
    # the frames hold the fetcher, the batch and the dataset; what we need was copied out above
    traceback.clear_frames(exc.__traceback__)
    return failure


def _own_timeout(failure: ReadFailure | None, loader: Any) -> None:
    """A loader built with ``DataLoader(timeout=S)`` raises RuntimeError from its own ``_get_data`` when its
    workers send nothing for S seconds: a hang it caught itself, not an error in the data. Told by where it
    was raised, not by its wording."""
    timeout = getattr(loader, "timeout", 0) or 0
    if failure is None or failure.timed_out is not None or timeout <= 0:
        return
    frames = [frame.f_code for frame, _line in traceback.walk_tb(failure.exception.__traceback__)]
    if isinstance(failure.exception, RuntimeError) and frames and frames[-1].co_name == "_get_data" and \
            _DATALOADER_FILE.search(frames[-1].co_filename):
        failure.timed_out, failure.timed_out_by = float(timeout), f"DataLoader(timeout={timeout:g})"


def _exit_codes(iterator: Any) -> list[int | None] | None:
    """Exit codes of the iterator's worker processes (negative: killed by that signal), before shutdown."""
    workers = getattr(iterator, "_workers", None)
    if not workers:
        return None
    codes = []
    for worker in workers:
        try:
            codes.append(worker.exitcode)  # polls (waitpid WNOHANG): set once the worker is dead
        except Exception:  # a worker object in an odd state tells us nothing
            codes.append(None)
    return codes


def _close(loader: Any, iterator: Any, previous: Any, *, hung: bool = False) -> None:
    """Stop our workers now (not at garbage collection) and give a persistent loader its old iterator back.

    ``hung``: the workers did not answer in time. They are terminated first: torch's shutdown would wait
    5 s for each before doing the same.
    """
    if hung:
        for worker in getattr(iterator, "_workers", None) or ():
            try:
                if worker.is_alive():
                    worker.terminate()
            except Exception:  # a worker object in an odd state: torch's shutdown deals with it
                pass
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        try:
            shutdown()
        except Exception:  # workers that already died leave nothing to shut down
            pass
    if getattr(loader, "_iterator", None) is not previous:
        loader._iterator = previous
