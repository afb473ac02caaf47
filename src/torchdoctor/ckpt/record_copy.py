"""Filling a reserved torch zip with storage bytes in the kernel: ``copy_file_range``, CRCs, early write-back.

``writers.write_zip`` lets torch's own zip writer lay the archive out with every storage record reserved
but empty; the functions here find where each record's bytes go, copy the source's bytes there without
them passing through Python, and patch in the CRC-32 that torch's writer could not compute.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from torchdoctor.ckpt.formats import Format
from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, StorageInfo
from torchdoctor.ckpt.tensor_data import DEFAULT_CHUNK_BYTES, iter_storage_bytes

SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}


class LayoutChanged(Exception):
    """The zip torch's writer produced is not laid out as expected: write the storages the buffered way."""


@dataclass(frozen=True)
class CopiedStorage:
    """One storage record filled in the output: which source storage, and where its bytes now lie."""

    output_key: str
    """The output's storage key: its record is ``data/<output_key>``."""
    source_key: str
    start: int
    """Offset of the record's first byte in the output file."""
    nbytes: int


def record_places(out: BinaryIO) -> dict[str, tuple[int, int]]:
    """Record name (without the archive folder) → (offset of its data, offset of its central directory entry)."""
    out.seek(0)
    with zipfile.ZipFile(out) as archive:
        infos, start_dir = archive.infolist(), archive.start_dir
    out.seek(start_dir)
    central = out.read()  # the central directory and end records: a few hundred bytes per record
    places, pos = {}, 0
    for info in infos:
        head = central[pos:pos + 46]
        if len(head) < 46 or head[:4] != b"PK\x01\x02":
            raise LayoutChanged
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", head, 28)
        out.seek(info.header_offset)
        start = info.header_offset + 30 + sum(struct.unpack_from("<HH", out.read(30), 26))
        places[info.filename.split("/", 1)[-1]] = (start, start_dir + pos)
        pos += 46 + name_len + extra_len + comment_len
    return places


def set_crc(fd: int, data_end: int, central: int, crc: int) -> None:
    # torch's writer uses data descriptors: the CRC sits after the data and in the central directory
    if os.pread(fd, 4, data_end) != b"PK\x07\x08" or os.pread(fd, 4, central) != b"PK\x01\x02":
        raise LayoutChanged
    pwrite_all(fd, struct.pack("<I", crc), data_end + 4)
    pwrite_all(fd, struct.pack("<I", crc), central + 16)


def zip_spans(reading: CheckpointReading) -> dict[str, zipfile.ZipInfo]:
    """The source's zip entries by full record name (empty for a file that is not a zip); for torch.save shards
    of a Hugging Face checkpoint, every shard's (their archive folders are named after the shard files)."""
    if reading.format is Format.HF_SHARDED:
        return _shard_spans(reading)
    if reading.format not in (Format.ZIP, Format.TORCHSCRIPT):  # TorchScript: a 1.0-1.2 model.json archive
        return {}
    with zipfile.ZipFile(reading.path) as archive:
        return {info.filename: info for info in archive.infolist()}


def _shard_spans(reading: CheckpointReading) -> dict[str, zipfile.ZipInfo]:
    spans: dict[str, zipfile.ZipInfo] = {}
    owners: dict[str, Any] = {}
    for path in sorted({info.path for info in reading.storages.values() if info.record is not None}):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if owners.setdefault(info.filename, path) != path:  # shards renamed after saving
                    raise CheckpointCorrupt(f"shards {owners[info.filename].name} and {path.name} both hold a "
                                            f"zip record {info.filename}: fix them one at a time")
                spans[info.filename] = info
    return spans


def source_crc(reading: CheckpointReading, source: str, info: StorageInfo, spans: Mapping[str, Any]) -> int:
    zipped = spans.get(info.record or "")
    if zipped is not None and zipped.file_size == info.nbytes:
        return zipped.CRC  # the same bytes: the source's checksum holds
    crc = 0
    for chunk in iter_storage_bytes(reading, source):
        crc = zlib.crc32(chunk, crc)
    return crc


def copy_storage(reading: CheckpointReading, source: str, info: StorageInfo, spans: Mapping[str, Any], fd: int,
                 start: int) -> str:
    """The source storage's bytes written at ``start`` of ``fd``; returns how they were copied."""
    offset = plain_offset(info, spans)
    if offset is not None:
        with open(info.path, "rb") as src:
            done = copy_range(src.fileno(), fd, offset, start, info.nbytes)
            if done == info.nbytes:
                return "copy_file_range"
            copy_chunks(src.fileno(), fd, offset + done, start + done, info.nbytes - done)
            return "read/write"
    for chunk in iter_storage_bytes(reading, source):  # a compressed record: decompressed as it streams
        pwrite_all(fd, chunk, start)
        start += len(chunk)
    return "read/write"


def plain_offset(info: StorageInfo, spans: Mapping[str, Any]) -> int | None:
    """Where the storage's bytes lie as they are in its file; None for a compressed zip record."""
    if info.record is None:
        return info.offset
    zipped = spans[info.record]
    if zipped.compress_type != zipfile.ZIP_STORED:
        return None
    with open(info.path, "rb") as f:
        f.seek(zipped.header_offset)
        local = f.read(30)
    return zipped.header_offset + 30 + sum(struct.unpack_from("<HH", local, 26))


def copy_range(src: int, dst: int, src_at: int, dst_at: int, count: int) -> int:
    """Bytes copied in the kernel; stops early (returns less) where copy_file_range is not available."""
    done = 0
    while done < count:
        try:
            copied = os.copy_file_range(src, dst, count - done, src_at + done, dst_at + done)
        except OSError as e:
            if e.errno in _NO_COPY_RANGE:
                return done
            raise
        if copied == 0:
            raise CheckpointCorrupt(f"the source ends {count - done} bytes before the end of a storage")
        done += copied
    return done


def copy_chunks(src: int, dst: int, src_at: int, dst_at: int, count: int) -> None:
    while count > 0:
        chunk = os.pread(src, min(DEFAULT_CHUNK_BYTES, count), src_at)
        if not chunk:
            raise CheckpointCorrupt(f"the source ends {count} bytes before the end of a storage")
        pwrite_all(dst, chunk, dst_at)
        src_at, dst_at, count = src_at + len(chunk), dst_at + len(chunk), count - len(chunk)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    # pwrite may write less than asked (a disk filling up): the rest must raise, not vanish
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


@functools.cache
def _libc_function(name: str, *argtypes: Any) -> Any:
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = list(argtypes)
    return function


def preallocate(fd: int, length: int) -> None:
    """Allocate the blocks of the reserved records before the copy fills them.

    Measured on ext4 here, 1 GiB copied then fsynced: 0.27 s with it, 0.38 s without (the write-back no
    longer allocates blocks as it goes). fallocate(2) itself, not glibc's posix_fallocate, which writes
    zeros where the filesystem cannot allocate. A full disk is reported now, before any byte is copied.
    """
    function = _libc_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if function is not None and function(fd, 0, 0, length) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(code, os.strerror(code))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a copied storage to disk while the next one is copied; the final fsync then waits less.

    Measured on a 1 GiB copy here: copy + fsync 0.7-0.9 s with it, 1.0-1.5 s without. It only starts
    the writeback (SYNC_FILE_RANGE_WRITE); durability still comes from the fsync before the rename.
    """
    function = _libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    if function is not None:
        function(fd, offset, length, SYNC_FILE_RANGE_WRITE)
