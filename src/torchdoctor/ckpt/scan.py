"""The NaN/inf scan of every floating tensor, fast: plain reads into reused buffers, one pass of
``isfinite`` per chunk (counting only when a chunk holds a non-finite value), tensors spread over threads.

NumPy and file reads release the GIL, so threads scale with cores. Tensors whose bytes are not lying
plainly in a file (compressed zip records, non-contiguous views) take the generic streamed path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, corruption_as
from torchdoctor.ckpt.tensor_data import count_nonfinite, nonfinite_counts, numpy_dtype, zip_record_span
from torchdoctor.errors import InputError

CHUNK_BYTES = 16 << 20
IEEE_FLOATS = ("float16", "float32", "float64")
MAX_THREADS = 8
Progress = Callable[[int, int], None]


def scan_nonfinite(reading: CheckpointReading, on_progress: Progress | None = None) -> dict[str, tuple[int, int]]:
    """NaN/inf counts per floating tensor; tensors without data in this file (meta, dcp) are skipped."""
    keys = [key for key, record in reading.tensors.items()
            if record.storage_key in reading.storages and _is_float(record.dtype)]
    counts: dict[str, tuple[int, int]] = {}
    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(keys)))
    with ThreadPoolExecutor(threads) as pool:
        for done, (key, found) in enumerate(zip(keys, pool.map(lambda key: _scan(reading, key), keys), strict=True), 1):
            if found is not None:
                counts[key] = found
            if on_progress is not None:
                on_progress(done, len(keys))
    return counts


def _scan(reading: CheckpointReading, key: str) -> tuple[int, int] | None:
    record = reading.tensors[key]
    try:
        place = _plain_place(reading, key)
        if place is None or record.dtype not in IEEE_FLOATS:
            return count_nonfinite(reading, key)
        with corruption_as(f"tensor data in {os.path.basename(place[0])} cannot be read"):
            return _scan_file(*place, record.dtype, reading.byteorder)
    except InputError:  # a dtype whose layout we do not know: nothing to scan
        return None


def _plain_place(reading: CheckpointReading, key: str) -> tuple[Any, int, int] | None:
    """``(path, offset, length)`` of a contiguous tensor's bytes lying as they are in a file, else None."""
    record = reading.tensors[key]
    info = reading.storages[record.storage_key]
    if not record.is_contiguous or record.itemsize is None:
        return None
    start, length = record.storage_offset * record.itemsize, record.numel * record.itemsize
    if start + length > info.nbytes:
        raise CheckpointCorrupt(f"tensor {key} reaches byte {start + length} of a storage of {info.nbytes} bytes")
    if info.record is not None:
        span = zip_record_span(info.path, info.record)
        if span is None:
            return None
        return info.path, span[0] + start, length
    return (info.path, info.offset + start, length) if info.offset is not None else None


def _scan_file(path: Any, offset: int, length: int, dtype: str, byteorder: str | None) -> tuple[int, int]:
    import numpy as np

    np_dtype = numpy_dtype(dtype, byteorder)
    buffer = np.empty(min(CHUNK_BYTES, max(length, 1)), dtype=np.uint8)
    finite = np.empty(len(buffer) // np_dtype.itemsize, dtype=bool)
    nan = inf = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        left = length
        while left > 0:
            got = f.readinto(memoryview(buffer)[:min(len(buffer), left)])
            if not got:
                raise CheckpointCorrupt(f"{os.path.basename(path)} ends {left} bytes before the end of a tensor")
            if got % np_dtype.itemsize:  # a short read inside an element: read the rest of it next round
                f.seek(-(got % np_dtype.itemsize), 1)
                got -= got % np_dtype.itemsize
            left -= got
            values = buffer[:got].view(np_dtype)
            mask = np.isfinite(values, out=finite[:len(values)])
            if not mask.all():  # rare: count exactly only then
                found = nonfinite_counts(values, dtype)
                nan, inf = nan + found[0], inf + found[1]
    return nan, inf


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))
