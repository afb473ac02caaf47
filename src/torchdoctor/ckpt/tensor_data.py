"""Tensor bytes, streamed in bounded chunks with plain file reads: NaN/inf counts and max-abs-diff for any size.

Plain ``seek`` + ``read`` rather than mmap: pages touched through an mmap count toward the process's
resident memory, and the point here is to judge a 70 GB checkpoint on a laptop. A tensor whose data
this file does not hold (meta tensors, DCP records: ``storage_key is None``) or whose dtype has no
known size raises ``InputError``; data that ends early raises ``CheckpointCorrupt``.
"""

from __future__ import annotations

import functools
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, StorageInfo, corruption_as
from torchdoctor.ckpt.records import TensorRecord
from torchdoctor.errors import InputError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_CHUNK_BYTES = 8 << 20
MAX_STRIDED_BYTES = 256 << 20  # a non-contiguous view is gathered in memory up to this covering size
# NumPy has no bfloat16 or float8: those arrive as raw unsigned integers of their width.
_NUMPY_CODES = {
    "float64": "f8", "float32": "f4", "float16": "f2", "complex128": "c16", "complex64": "c8", "complex32": "u4",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1", "uint64": "u8", "uint32": "u4", "uint16": "u2",
    "uint8": "u1", "bool": "b1", "bfloat16": "u2", "qint8": "i1", "quint8": "u1", "qint32": "i4",
}
_RAW_CODES = {1: "u1", 2: "u2", 4: "u4", 8: "u8"}
# (exponent mask, mantissa mask) of IEEE-like formats: all-ones exponent is inf (mantissa 0) or NaN
_IEEE_BITS = {"bfloat16": (0x7F80, 0x007F), "float8_e5m2": (0x7C, 0x03)}
# formats with NaN codes and no inf: (mask, value) such that (x & mask) == value means NaN
_NAN_CODES = {"float8_e4m3fn": (0x7F, 0x7F), "float8_e4m3fnuz": (0xFF, 0x80), "float8_e5m2fnuz": (0xFF, 0x80),
              "float8_e8m0fnu": (0xFF, 0xFF)}


def _numpy() -> Any:
    import numpy

    return numpy


def numpy_dtype(dtype: str, byteorder: str | None = "little") -> np.dtype:
    """The NumPy dtype that chunks of a torch ``dtype`` arrive as (raw unsigned ints where NumPy has none)."""
    np = _numpy()
    from torchdoctor.ckpt.records import DTYPE_ITEMSIZE

    code = _NUMPY_CODES.get(dtype) or _RAW_CODES.get(DTYPE_ITEMSIZE.get(dtype, 0))
    if code is None:
        raise ValueError(f"no NumPy layout for dtype {dtype}")
    return np.dtype(code).newbyteorder(">" if byteorder == "big" else "<")


def iter_tensor_chunks(reading: CheckpointReading, tensor_key: str,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[np.ndarray]:
    """1-D arrays covering the tensor's elements, each at most ``chunk_bytes`` (at least one element).

    Contiguous tensors: exactly their elements, in order. Non-contiguous views (rare in checkpoints):
    the covering storage range from the first to the last element used, which may include elements of
    the storage the view skips; use ``iter_tensor_values`` when only the view's elements will do.
    """
    record = reading.tensors[tensor_key]
    info, itemsize = _storage_of(reading, tensor_key, record)
    count = record.numel if record.is_contiguous else record.span
    np_dtype = numpy_dtype(record.dtype, reading.byteorder)
    step = max(1, chunk_bytes // itemsize) * itemsize
    for data in _storage_bytes(info, record.storage_offset * itemsize, count * itemsize, step):
        yield _numpy().frombuffer(data, dtype=np_dtype)


def iter_tensor_values(reading: CheckpointReading, tensor_key: str,
                       chunk_elements: int = DEFAULT_CHUNK_BYTES // 8) -> Iterator[np.ndarray]:
    """The tensor's own elements in row-major order, ``chunk_elements`` at a time (the last may be shorter)."""
    record = reading.tensors[tensor_key]
    itemsize = _storage_of(reading, tensor_key, record)[1]
    if record.is_contiguous:
        yield from iter_tensor_chunks(reading, tensor_key, chunk_elements * itemsize)
        return
    if record.span * itemsize > MAX_STRIDED_BYTES:
        raise ValueError(f"{tensor_key} is a non-contiguous view over {record.span * itemsize} bytes: too large to "
                         "gather in bounded memory")
    np = _numpy()
    covering = np.concatenate(list(iter_tensor_chunks(reading, tensor_key)))
    view = np.lib.stride_tricks.as_strided(covering, shape=record.shape,
                                           strides=[s * itemsize for s in record.stride], writeable=False)
    flat = np.ascontiguousarray(view).reshape(-1)
    for start in range(0, len(flat), chunk_elements):
        yield flat[start:start + chunk_elements]


def _storage_of(reading: CheckpointReading, key: str, record: TensorRecord) -> tuple[StorageInfo, int]:
    if record.storage_key is None or record.storage_key not in reading.storages:
        where = "meta tensor" if record.device == "meta" else f"{reading.format.value} checkpoint"
        raise InputError(f"tensor {key} has no data in this file ({where})")
    if record.itemsize is None:
        raise InputError(f"tensor {key} has dtype {record.dtype}, whose size in bytes torchdoctor does not know")
    info = reading.storages[record.storage_key]
    end = (record.storage_offset + (record.numel if record.is_contiguous else record.span)) * record.itemsize
    if end > info.nbytes:
        raise CheckpointCorrupt(f"tensor {key} reaches byte {end} of a storage of {info.nbytes} bytes")
    return info, record.itemsize


def iter_storage_bytes(reading: CheckpointReading, storage_key: str,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """All bytes of one storage, as stored (e.g. to copy it into a new file without deserialising it)."""
    info = reading.storages[storage_key]
    yield from _storage_bytes(info, 0, info.nbytes, chunk_bytes)


def iter_record_bytes(path: str | Path, record_name: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of one zip record (decompressed if it is compressed), streamed."""
    with corruption_as(f"zip record {record_name} cannot be read"):
        with zipfile.ZipFile(path) as archive:
            size = archive.getinfo(record_name).file_size
        yield from _zip_record_bytes(Path(path), record_name, 0, size, chunk_bytes)


def zip_record_span(path: str | Path, record_name: str) -> tuple[int, int] | None:
    """``(absolute offset, size)`` of a STORED zip record's bytes; None when it is compressed."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(record_name)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        archive.fp.seek(info.header_offset)
        header = archive.fp.read(30)
    if len(header) != 30 or not header.startswith(b"PK\x03\x04"):
        raise CheckpointCorrupt(f"zip record {record_name} has no local header at byte {info.header_offset}")
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _storage_bytes(info: StorageInfo, start: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
    if start < 0 or length < 0 or start + length > info.nbytes:
        raise CheckpointCorrupt(f"bytes {start}..{start + length} are outside a storage of {info.nbytes} bytes")
    if info.record is None and info.offset is None:
        raise InputError(f"storage data is not in {info.path.name}")
    with corruption_as(f"tensor data in {info.path.name} cannot be read"):
        if info.record is not None:
            yield from _zip_record_bytes(info.path, info.record, start, length, chunk_bytes)
        else:
            yield from _file_bytes(info.path, info.offset + start, length, chunk_bytes)


def _zip_record_bytes(path: Path, record: str, start: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
    span = zip_record_span(path, record)
    if span is not None:  # torch.save writes STORED records: read them in place
        if start + length > span[1]:
            raise CheckpointCorrupt(f"zip record {record} holds {span[1]} bytes, {start + length} were asked for")
        yield from _file_bytes(path, span[0] + start, length, chunk_bytes)
        return
    with zipfile.ZipFile(path) as archive, archive.open(record) as stream:
        _discard(stream, start, chunk_bytes)
        yield from _stream_bytes(stream, length, chunk_bytes, f"zip record {record}")


def _file_bytes(path: Path, offset: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        yield from _stream_bytes(f, length, chunk_bytes, path.name)


def _stream_bytes(stream: Any, length: int, chunk_bytes: int, where: str) -> Iterator[bytes]:
    left = length
    while left > 0:
        data = stream.read(min(chunk_bytes, left))  # buffered reads return short only at the end
        if not data:
            raise CheckpointCorrupt(f"{where} ends {left} bytes before the end of a tensor's data")
        left -= len(data)
        yield data


def _discard(stream: Any, count: int, chunk_bytes: int) -> None:
    while count > 0:
        data = stream.read(min(chunk_bytes, count))
        if not data:
            raise CheckpointCorrupt("a compressed zip record ends early")
        count -= len(data)


def nonfinite_counts(chunk: np.ndarray, dtype: str) -> tuple[int, int]:
    """``(nan, inf)`` in one chunk of torch ``dtype`` as ``iter_tensor_chunks`` yields it; (0, 0) for integers."""
    np = _numpy()
    if dtype in ("float16", "float32", "float64"):
        return int(np.isnan(chunk).sum()), int(np.isinf(chunk).sum())
    if dtype in ("complex32", "complex64", "complex128"):
        part = chunk.dtype.byteorder + {"complex32": "f2", "complex64": "f4", "complex128": "f8"}[dtype]
        parts = chunk.view(part).reshape(-1, 2)  # torch.isnan / isinf of a complex: either part
        return int(np.isnan(parts).any(axis=1).sum()), int(np.isinf(parts).any(axis=1).sum())
    if dtype in _IEEE_BITS:
        exponent, mantissa = _IEEE_BITS[dtype]
        special = (chunk & exponent) == exponent
        fraction = (chunk & mantissa) != 0
        return int((special & fraction).sum()), int((special & ~fraction).sum())
    if dtype in _NAN_CODES:
        mask, value = _NAN_CODES[dtype]
        return int(((chunk & mask) == value).sum()), 0
    return 0, 0


def count_nonfinite(reading: CheckpointReading, key: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, int]:
    """``(nan, inf)`` over a whole tensor, streamed (covering range for non-contiguous views)."""
    dtype = reading.tensors[key].dtype
    nan = inf = 0
    for chunk in iter_tensor_chunks(reading, key, chunk_bytes):
        n, i = nonfinite_counts(chunk, dtype)
        nan, inf = nan + n, inf + i
    return nan, inf


def as_numbers(chunk: np.ndarray, dtype: str) -> np.ndarray:
    """A chunk as float64 (complex128 for complex dtypes), decoding bfloat16 and float8 bit patterns."""
    np = _numpy()
    if dtype == "bfloat16":
        return (chunk.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype.startswith("float8"):
        return _float8_table(dtype)[chunk]
    if dtype.startswith("complex"):
        if dtype == "complex32":
            parts = chunk.view(chunk.dtype.byteorder + "f2").astype(np.float64).reshape(-1, 2)
            return parts[:, 0] + 1j * parts[:, 1]
        return chunk.astype(np.complex128)
    if dtype in ("float16", "float32", "float64", "bool") or dtype.startswith(("int", "uint")):
        return chunk.astype(np.float64)
    raise ValueError(f"cannot compare values of dtype {dtype}")


@functools.cache
def _float8_table(dtype: str) -> np.ndarray:
    """All 256 values of a float8 format, decoded once by torch itself."""
    import torch

    codes = torch.arange(256, dtype=torch.uint8).view(getattr(torch, dtype))
    return codes.to(torch.float64).numpy()


def tensor_max_abs_diff(reading_a: CheckpointReading, key_a: str, reading_b: CheckpointReading, key_b: str,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> float:
    """``max |a - b|`` over two same-shaped tensors, streamed in lockstep.

    Equal values (equal infinities, NaN facing NaN) count as 0; a NaN facing a number gives NaN.
    """
    a, b = reading_a.tensors[key_a], reading_b.tensors[key_b]
    if a.shape != b.shape:
        raise ValueError(f"cannot compare {key_a} {list(a.shape)} with {key_b} {list(b.shape)}: shapes differ")
    elements = max(1, chunk_bytes // 16)  # the float64/complex128 copies are the largest arrays made
    best = 0.0
    pairs = zip(iter_tensor_values(reading_a, key_a, elements), iter_tensor_values(reading_b, key_b, elements),
                strict=True)
    np = _numpy()
    for x, y in pairs:
        x, y = as_numbers(x, a.dtype), as_numbers(y, b.dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled by `same` below
            diff = np.abs(x - y)
        # equal infinities and NaN facing NaN are the same value, not a difference
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        diff = np.where(same, 0.0, diff)
        peak = float(diff.max()) if diff.size else 0.0
        if math.isnan(peak):
            return math.nan
        best = max(best, peak)
    return best
