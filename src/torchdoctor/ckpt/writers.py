"""Writers for ``ckpt fix``: zip without deserialising tensors, safetensors streamed, torch.save for the rest."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, BinaryIO

from torchdoctor.ckpt.formats import Format
from torchdoctor.ckpt.layouts import SAFETENSORS_DTYPES
from torchdoctor.ckpt.reader import CheckpointReading, StorageInfo
from torchdoctor.ckpt.record_copy import CopiedStorage, LayoutChanged
from torchdoctor.ckpt.records import DTYPE_ITEMSIZE, STORAGE_DTYPES, TensorRecord
from torchdoctor.ckpt.tensor_data import iter_storage_bytes, iter_tensor_values
from torchdoctor.errors import UsageError

TYPED_STORAGES = {dtype: name for name, dtype in STORAGE_DTYPES.items() if not name.startswith(("Q", "QU"))}
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
# Globals whose meaning the records keep exactly; anything else (torch.Size, devices, tensor subclasses,
# quantized tensors) is rebuilt faithfully only by torch.load, so those files take the torch.save path.
STREAMABLE_GLOBALS = frozenset({
    "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.bytearray", "builtins.complex",
    "torch.storage.UntypedStorage", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_meta_tensor_no_storage",
    *(f"torch.{name}" for name in TYPED_STORAGES.values()), *(f"torch.{dtype}" for dtype in DTYPE_ITEMSIZE),
    *(f"torch.{kind}Tensor" for kind in ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                                         "Byte", "Bool")),
})
_PLAIN = (str, bytes, bytearray, int, float, complex, type(None))
_CONTAINERS = (dict, OrderedDict, list, tuple, set)


# --- zip without deserialising -------------------------------------------------------------------------------


def why_not_streamable(reading: CheckpointReading, tree: Any) -> str | None:
    """None when ``tree`` can be pickled from records alone; else why torch.load must rebuild it."""
    odd = sorted({row["name"] for row in reading.globals} - STREAMABLE_GLOBALS)
    if odd:
        return f"the pickle uses {', '.join(odd[:3])}, which only torch.load rebuilds exactly"
    seen: set[int] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, TensorRecord):
            if node.storage_key not in reading.storages and node.device != "meta":
                return "a tensor's data is not in the file"
        elif type(node) in _CONTAINERS and id(node) not in seen:
            seen.add(id(node))
            todo.extend(node.items() if isinstance(node, dict) else node)
            todo.append(getattr(node, "__dict__", None))
        elif node is not None and not isinstance(node, _PLAIN) and type(node) not in _CONTAINERS:
            return f"it holds a {type(node).__name__}, which only torch.load rebuilds exactly"
    return None


def write_zip(reading: CheckpointReading, tree: Any, out: BinaryIO,
              on_copied: Callable[[CopiedStorage], None] | None = None) -> dict[str, Any]:
    """``tree`` (of TensorRecords) as a torch.save zip, its storages copied byte for byte from ``reading``.

    Mirrors ``torch.serialization._save``: a fresh ``data.pkl`` pickled with torch's own rebuild functions
    and persistent ids, then one ``data/KEY`` record per storage through torch's own ``PyTorchFileWriter``
    (aligned for ``torch.load(mmap=True)``, ``version`` and ``.data/serialization_id`` as torch.save writes
    them). Storage bytes never pass through Python: each record's space is reserved with
    ``write_record_metadata`` (what ``torch.serialization.skip_data`` uses), filled with
    ``os.copy_file_range`` (a reflink where the filesystem has them), then given its CRC-32 (see record_copy).
    ``on_copied`` hears of each storage as soon as its bytes are in place, so the caller can start their
    write-back and check them while the next one is copied.
    """
    import torch

    ids = _StorageIds(reading)
    buffer = io.BytesIO()
    _RecordPickler(buffer, ids).dump(tree)
    data = buffer.getvalue()
    try:
        if not hasattr(torch._C.PyTorchFileWriter, "write_record_metadata"):  # torch < 2.5
            raise LayoutChanged
        how = _write_reserved(reading, ids, data, out, on_copied)
    except LayoutChanged:
        out.seek(0)
        out.truncate()
        how = _write_buffered(reading, ids, data, out)
    return {"writer": "zip records copied byte for byte (no tensor deserialised)", "copy": how,
            "storages": len(ids.keys), "storage_bytes": sum(ids.nbytes.values())}


class _StorageIds:
    """Output storage keys in first-use order (as torch.save numbers them) and their persistent ids."""

    def __init__(self, reading: CheckpointReading, *, legacy: bool = False) -> None:
        self.reading = reading
        self.legacy = legacy  # legacy persistent ids end with a view_metadata slot (always None since torch 1.0)
        self.keys: dict[str, str] = {}  # source storage key -> output key
        self.pids: dict[str, tuple[Any, ...]] = {}
        self.nbytes: dict[str, int] = {}

    def pid(self, record: TensorRecord) -> tuple[Any, ...]:
        import torch

        key = self.keys.setdefault(record.storage_key, str(len(self.keys)))
        if key not in self.pids:
            info = self.reading.storages[record.storage_key]
            typed = TYPED_STORAGES.get(record.dtype)
            # torch.save: a typed storage counts elements, an UntypedStorage (dtypes without one) bytes
            storage_type = getattr(torch, typed) if typed else torch.UntypedStorage
            numel = info.nbytes // (record.itemsize or 1) if typed else info.nbytes
            self.pids[key] = ("storage", storage_type, key, info.device, numel, *((None,) if self.legacy else ()))
            self.nbytes[key] = info.nbytes
        return self.pids[key]

    def sources(self) -> Iterator[tuple[str, str, StorageInfo]]:
        for source, key in self.keys.items():
            yield key, source, self.reading.storages[source]


class _Placeholder:
    __slots__ = ("pid",)

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


class _RecordPickler(pickle.Pickler):
    """torch.save's pickling of a tree whose tensors are records: see ``Tensor._reduce_ex_internal``."""

    def __init__(self, file: BinaryIO, ids: _StorageIds) -> None:
        super().__init__(file, protocol=2)  # torch.serialization.DEFAULT_PROTOCOL
        self.ids = ids

    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if type(obj) is _Placeholder else None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not TensorRecord:
            return NotImplemented
        import torch

        hooks: OrderedDict[Any, Any] = OrderedDict()
        if obj.is_parameter:  # Parameter.__reduce_ex__: the plain tensor, then its requires_grad
            return torch._utils._rebuild_parameter, (replace(obj, is_parameter=False, requires_grad=False),
                                                     obj.requires_grad, hooks)
        if obj.storage_key is None:  # a meta tensor: no storage at all
            return torch._utils._rebuild_meta_tensor_no_storage, (getattr(torch, obj.dtype), obj.shape, obj.stride,
                                                                  obj.requires_grad)
        args = (_Placeholder(self.ids.pid(obj)), obj.storage_offset, obj.shape, obj.stride, obj.requires_grad, hooks)
        if obj.dtype in TYPED_STORAGES:
            return torch._utils._rebuild_tensor_v2, args
        return torch._utils._rebuild_tensor_v3, (*args, getattr(torch, obj.dtype))


@contextmanager
def _torch_zip_writer(out: BinaryIO) -> Iterator[Any]:
    """torch's zip writer, always finalized: destroyed unfinalized after a failed write, it aborts the process."""
    import torch

    alignment = getattr(torch.serialization, "_get_storage_alignment", lambda: 64)()
    writer = torch._C.PyTorchFileWriter(out, torch.serialization.get_crc32_options(), alignment)
    try:
        yield writer
    except BaseException:
        try:
            writer.write_end_of_file()
        except Exception:
            pass  # it fails the same way; the first error is the one to report
        raise
    writer.write_end_of_file()  # version and .data/serialization_id, then the central directory
    out.flush()


def _write_head(writer: Any, data: bytes, byteorder: str) -> None:
    """The records ``torch.serialization._save`` writes before the storages, in its order."""
    import torch

    alignment = str(getattr(torch.serialization, "_get_storage_alignment", lambda: 64)())
    writer.write_record("data.pkl", data, len(data))
    writer.write_record(".format_version", "1", 1)
    writer.write_record(".storage_alignment", alignment, len(alignment))
    # the bytes are copied as they are, so the file keeps the source's byte order
    writer.write_record("byteorder", byteorder, len(byteorder))


def _write_reserved(reading: CheckpointReading, ids: _StorageIds, data: bytes, out: BinaryIO,
                    on_copied: Callable[[CopiedStorage], None] | None) -> str:
    from torchdoctor.ckpt import record_copy

    with _torch_zip_writer(out) as writer:
        _write_head(writer, data, reading.byteorder or "little")
        for key, _, _ in ids.sources():
            writer.write_record_metadata(f"data/{key}", ids.nbytes[key])
    places = record_copy.record_places(out)
    spans = record_copy.zip_spans(reading)
    fd, how = out.fileno(), set()
    record_copy.preallocate(fd, os.fstat(fd).st_size)
    for key, source, info in ids.sources():
        start, central = places[f"data/{key}"]
        how.add(record_copy.copy_storage(reading, source, info, spans, fd, start))
        record_copy.set_crc(fd, start + info.nbytes, central, record_copy.source_crc(reading, source, info, spans))
        if on_copied is not None:
            on_copied(CopiedStorage(key, source, start, info.nbytes))
    return " + ".join(sorted(how)) or "no storages"


def write_legacy(reading: CheckpointReading, tree: Any, out: BinaryIO,
                 on_copied: Callable[[CopiedStorage], None] | None = None) -> dict[str, Any]:
    """``tree`` (of TensorRecords) as a legacy (pre-1.6) torch.save stream, storages copied byte for byte.

    Mirrors ``torch.serialization._legacy_save``: magic number, protocol version and sys_info pickles, the
    tree pickled with 6-tuple storage persistent ids, the sorted storage keys, then per storage (in that
    order) its element count as a little-endian int64 and its raw bytes — which ``record_copy`` copies in
    the kernel, as for zip. Only little-endian data: the stream's sys_info declares the host's order.
    """
    import torch

    from torchdoctor.ckpt import record_copy

    ids = _StorageIds(reading, legacy=True)
    serialization = torch.serialization
    sys_info = {"protocol_version": serialization.PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": serialization.SHORT_SIZE, "int": serialization.INT_SIZE,
                               "long": serialization.LONG_SIZE}}
    for value in (serialization.MAGIC_NUMBER, serialization.PROTOCOL_VERSION, sys_info):
        pickle.dump(value, out, protocol=2)
    _RecordPickler(out, ids).dump(tree)
    sources = {key: (source, info) for key, source, info in ids.sources()}
    keys = sorted(sources)
    pickle.dump(keys, out, protocol=2)
    out.flush()
    fd, at = out.fileno(), out.tell()
    record_copy.preallocate(fd, at + sum(8 + ids.nbytes[key] for key in keys))
    spans, how = record_copy.zip_spans(reading), set()
    for key in keys:
        source, info = sources[key]
        record_copy.pwrite_all(fd, struct.pack("<q", ids.pids[key][4]), at)  # the storage's element count
        how.add(record_copy.copy_storage(reading, source, info, spans, fd, at + 8))
        if on_copied is not None:
            on_copied(CopiedStorage(key, source, at + 8, info.nbytes))
        at += 8 + info.nbytes
    out.seek(at)
    return {"writer": "legacy stream, storages copied byte for byte (no tensor deserialised)",
            "copy": " + ".join(sorted(how)) or "no storages", "storages": len(keys),
            "storage_bytes": sum(ids.nbytes.values())}


def _write_buffered(reading: CheckpointReading, ids: _StorageIds, data: bytes, out: BinaryIO) -> str:
    """One storage in memory at a time: for a torch without ``write_record_metadata``."""
    import torch

    with _torch_zip_writer(out) as writer:
        _write_head(writer, data, reading.byteorder or "little")
        for key, source, info in ids.sources():
            buffer = bytearray(info.nbytes)
            view, done = memoryview(buffer), 0
            for chunk in iter_storage_bytes(reading, source):
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
            storage = torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage() if buffer else b""
            writer.write_record(f"data/{key}", storage, info.nbytes)
            del view, storage, buffer
    return "one storage at a time through memory"


# --- safetensors ---------------------------------------------------------------------------------------------


def write_safetensors(reading: CheckpointReading, state_dict: Mapping[str, TensorRecord], out: BinaryIO,
                      metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A flat dict of records as safetensors: header, then each tensor's values contiguous, little-endian."""
    sources = {id(record): key for key, record in reading.tensors.items()}
    header: dict[str, Any] = {"__metadata__": {**(metadata or {}), "format": "pt"}}
    offset = 0
    for key, record in state_dict.items():
        code = SAFETENSORS_CODES.get(record.dtype)
        if code is None:
            raise UsageError(f"safetensors has no dtype for {key} ({record.dtype})", hint="convert to zip instead")
        header[key] = {"dtype": code, "shape": list(record.shape), "data_offsets": [offset, offset + record.nbytes]}
        offset += record.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the reference writer pads the header to 8 bytes
    out.write(struct.pack("<Q", len(encoded)) + encoded)
    for record in state_dict.values():
        for chunk in iter_tensor_values(reading, sources[id(record)]):
            out.write(chunk.astype(chunk.dtype.newbyteorder("<"), copy=False).data)
    return {"writer": "safetensors, values streamed", "tensors": len(state_dict), "data_bytes": offset}


# --- torch.load + torch.save -----------------------------------------------------------------------------------


def load_tree(reading: CheckpointReading) -> Any:
    """The checkpoint as real tensors: torch.load(weights_only=True) or, for safetensors, the streaming reader."""
    import torch

    if reading.format is Format.SAFETENSORS:
        from torchdoctor.ckpt.against_model import materialize

        return OrderedDict(materialize(reading, reading.tree))
    if reading.format not in (Format.ZIP, Format.LEGACY):
        raise UsageError(f"a {reading.format.value} checkpoint can be rewritten as zip or safetensors only")
    # safe: files naming anything beyond tensors and containers were refused before this point
    return torch.load(reading.path, weights_only=True, map_location="cpu", mmap=reading.format is Format.ZIP)


def save_with_torch(obj: Any, out: BinaryIO, format_out: Format) -> dict[str, Any]:
    import torch

    torch.save(obj, out, _use_new_zipfile_serialization=format_out is Format.ZIP)
    return {"writer": f"torch.save ({format_out.value}) of torch.load(weights_only=True)"}
