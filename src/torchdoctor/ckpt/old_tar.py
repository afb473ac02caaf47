"""The tar checkpoints of torch < 0.4 (members ``sys_info``, ``pickle``, ``tensors``, ``storages``), every
layout torch ever wrote, read without running anything.

Two layouts exist. torch 0.1.1–0.1.5 wrote storages as ``(key, StorageType)`` and tensors as
``(key, TensorType, storage_key)``; from 0.1.6 storages carry a location — ``(key, location, StorageType)``,
followed by a list of storage views — and tensors are ``(key, storage_key, TensorType)``, the layout
today's ``torch.serialization.legacy_load`` still reads. Their main pickles often hold a whole
``nn.Module``: parameters as ``Parameter(data)`` with a BUILD of ``(requires_grad, volatile, hooks)``
(``Variable.__reduce_ex__`` at protocol 2) and ``_backend`` as ``_get_thnn_function_backend()``.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.formats import Detection
from torchdoctor.ckpt.parts import CheckpointCorrupt, FormatParts, StorageInfo, corruption_as
from torchdoctor.ckpt.pickle_safe import BoundedReader, GlobalLog, SafeUnpickler, load_data_pickle
from torchdoctor.ckpt.records import DTYPE_ITEMSIZE, PickledObject, StorageClass, StorageRef, TensorRecord, TorchClass

MAX_NDIM = 64
# Old torch's own callables that its checkpoints name: each only wraps a tensor or returns a constant.
VARIABLE_CLASSES = frozenset({"torch.nn.parameter.Parameter", "torch.autograd.variable.Variable"})
THNN_BACKEND = "torch.nn.backends.thnn._get_thnn_function_backend"


def read_old_tar(path: Path, detection: Detection) -> FormatParts:
    """Mirror of ``legacy_load``, for both layouts: storages, then tensors over them, then the pickle."""
    log = GlobalLog()
    with tarfile.open(path, "r:") as tar:
        members = {member.name: member for member in tar.getmembers()}
        with corruption_as("tar member 'storages' cannot be read"):
            storages, views = _storages(tar, members["storages"], path, log)
        with corruption_as("tar member 'tensors' cannot be read"):
            tensors = _tensors(tar, members["tensors"], storages, views, log)
        with corruption_as("tar member 'pickle' cannot be unpickled"):
            tree = _main_pickle(tar, members["pickle"], tensors, storages, log)
        sys_info = _sys_info(tar, members.get("sys_info"), log)
    byteorder = "little" if sys_info.get("little_endian", True) else "big"
    version = sys_info.get("protocol_version")
    hint = f"legacy tar format (protocol {version}): torch < 0.4" if version else "legacy tar format: torch < 0.4"
    return FormatParts(tree, storages, log.report(), byteorder, hint)


def _member_reader(tar: tarfile.TarFile, member: tarfile.TarInfo) -> BoundedReader:
    f = tar.extractfile(member)
    if f is None:
        raise CheckpointCorrupt(f"tar member {member.name!r} is not a regular file")
    return BoundedReader(f, member.size, start=0)


def _sys_info(tar: tarfile.TarFile, member: tarfile.TarInfo | None, log: GlobalLog) -> dict[str, Any]:
    if member is None:
        return {}
    with corruption_as("tar member 'sys_info' cannot be read"):
        info = load_data_pickle(_member_reader(tar, member), log)
    return info if isinstance(info, dict) else {}


def _storages(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path,
              log: GlobalLog) -> tuple[dict[str, StorageInfo], dict[str, tuple[str, int]]]:
    reader = _member_reader(tar, member)
    storages = {}
    for _ in range(_count(load_data_pickle(reader, log))):  # each round reads >= 8 bytes or fails: bounded
        key, location, storage_type = _storage_entry(OldTorchUnpickler(reader, log).load())
        numel = struct.unpack("<q", reader.read(8))[0]
        if numel < 0:
            raise CheckpointCorrupt(f"storage {key} in the 'storages' member claims {numel} elements")
        nbytes = numel * DTYPE_ITEMSIZE.get(storage_type.dtype, 1)
        storages[key] = StorageInfo(storage_type.dtype, numel, nbytes, location, path,
                                    offset=member.offset_data + reader.tell())
        reader.skip(nbytes)
    # the first layout ends here; later ones add (view key, root key, offset, numel) rows
    rows = load_data_pickle(reader, log) if reader.remaining() else []
    views = {str(target): (str(root), offset) for target, root, offset, _numel in rows}
    if not all(type(offset) is int and offset >= 0 for _root, offset in views.values()):
        raise CheckpointCorrupt("a storage view in the 'storages' member has no non-negative element offset")
    return storages, views


def _storage_entry(entry: Any) -> tuple[str, str, StorageClass]:
    """``(key, location, type)`` from 0.1.6 on; ``(key, type)`` before, which records no location: a
    ``torch.cuda.*Storage`` type meant the GPU (device 0 unless the tensor was moved; the file does not say)."""
    if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[1], str):
        key, location, storage_type = entry
    elif isinstance(entry, tuple) and len(entry) == 2:
        key, storage_type = entry
        location = "cuda:0" if getattr(storage_type, "name", "").startswith("torch.cuda.") else "cpu"
    else:
        raise CheckpointCorrupt("a storage in the 'storages' member is not (key, location, type) or (key, type)")
    if not isinstance(storage_type, StorageClass):
        raise CheckpointCorrupt("a storage in the 'storages' member names no storage type")
    return str(key), location, storage_type


def _tensors(tar: tarfile.TarFile, member: tarfile.TarInfo, storages: dict[str, StorageInfo],
             views: dict[str, tuple[str, int]], log: GlobalLog) -> dict[str, TensorRecord]:
    reader = _member_reader(tar, member)
    tensors = {}
    for _ in range(_count(load_data_pickle(reader, log))):
        key, storage_id = _tensor_entry(load_data_pickle(reader, log))
        ndim = struct.unpack("<i", reader.read(4))[0]
        reader.read(4)  # ndim was written as a C long: 8 bytes
        if not 0 <= ndim <= MAX_NDIM:
            raise CheckpointCorrupt(f"a tensor in the 'tensors' member claims {ndim} dimensions")
        shape = _dims(struct.unpack(f"<{ndim}q", reader.read(8 * ndim)))
        stride = _dims(struct.unpack(f"<{ndim}q", reader.read(8 * ndim)))
        offset = struct.unpack("<q", reader.read(8))[0]
        if offset < 0:
            raise CheckpointCorrupt(f"tensor {key} in the 'tensors' member has a negative storage offset")
        if storage_id is None:  # a tensor that never had a storage: empty, no bytes
            tensors[key] = TensorRecord(None, "float32", shape, stride, offset)
            continue
        root, view_offset = views.get(storage_id, (storage_id, 0))
        if root not in storages:
            raise CheckpointCorrupt(f"tensor {key} names storage {root}, which the 'storages' member lacks")
        info = storages[root]
        tensors[key] = TensorRecord(root, info.dtype, shape, stride, offset + view_offset, info.device)
    return tensors


def _tensor_entry(entry: Any) -> tuple[str, str | None]:
    """``(key, storage_key, type)`` from 0.1.6 on, ``(key, type, storage_key)`` before."""
    if not isinstance(entry, tuple) or len(entry) != 3:
        raise CheckpointCorrupt("a tensor in the 'tensors' member is not a (key, storage, type) triple")
    key, second, third = entry
    storage_id = third if isinstance(second, TorchClass) else second
    return str(key), None if storage_id is None else str(storage_id)


def _main_pickle(tar: tarfile.TarFile, member: tarfile.TarInfo, tensors: dict[str, TensorRecord],
                 storages: dict[str, StorageInfo], log: GlobalLog) -> Any:
    def persistent(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and isinstance(pid[0], type) and issubclass(pid[0], PickledObject):
            if pid[0].use is not None:
                pid[0].use.module_like = True  # (module class, source file, source) of a pickled nn.Module
            return pid[0]
        if str(pid) in tensors:
            return tensors[str(pid)]
        if str(pid) not in storages:
            raise CheckpointCorrupt(f"the pickle names tensor or storage {str(pid)[:40]}, which the tar lacks")
        info = storages[str(pid)]
        return StorageRef(str(pid), info.dtype, info.numel, info.device)
    return OldTorchUnpickler(_member_reader(tar, member), log, persistent=persistent).load()


class OldTorchUnpickler(SafeUnpickler):
    """The safe unpickler plus the few callables of torch 0.1–0.3 a module pickle names, as stand-ins."""

    dispatch = dict(SafeUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in VARIABLE_CLASSES:
            self.log.note(full, True)
            return _parameter if name == "Parameter" else _variable
        if full == THNN_BACKEND:
            self.log.note(full, True)
            return _thnn_backend
        found = super().find_class(module, name)
        if module == "torch.cuda" and isinstance(found, StorageClass):  # the first layout's only device hint
            return StorageClass(full, found.dtype)
        return found

    def _load_build(self) -> None:
        state = self.stack[-1]
        if len(self.stack) > 1 and isinstance(self.stack[-2], TensorRecord):
            # Variable/Parameter state (requires_grad, volatile, hooks), or its 5-tuple predecessor
            if not isinstance(state, tuple) or len(state) not in (3, 5):
                raise pickle.UnpicklingError("BUILD on a tensor with a state that is no Variable state")
            self.stack.pop()
            return
        SafeUnpickler.dispatch[pickle.BUILD[0]](self)  # the budgeted BUILD

    dispatch[pickle.BUILD[0]] = _load_build


def _parameter(data: Any = None, requires_grad: Any = True) -> TensorRecord:
    return replace(_tensor(data), requires_grad=requires_grad is not False, is_parameter=True)


def _variable(data: Any = None, *rest: Any) -> TensorRecord:
    return _tensor(data)


def _tensor(data: Any) -> TensorRecord:
    if not isinstance(data, TensorRecord):
        raise pickle.UnpicklingError("a Variable or Parameter around something that is not a tensor")
    return data


def _thnn_backend() -> None:
    """Returned the THNN backend singleton; today's torch returns None here too."""
    return None


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointCorrupt("a count in the tar members is not a non-negative integer")
    return value


def _dims(values: Any) -> tuple[int, ...]:
    if not all(type(v) is int and v >= 0 for v in values) or len(values) > MAX_NDIM:
        raise CheckpointCorrupt("a tensor's size or stride is not a short list of non-negative integers")
    return tuple(values)

