"""Readers for layouts beyond one torch pickle: safetensors, the pre-0.4 tar, Hugging Face shards, DCP."""

from __future__ import annotations

import struct
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.allowlist import allow_dcp
from torchdoctor.ckpt.formats import Detection, Format, SafetensorsError, read_hf_index, read_safetensors_header
from torchdoctor.ckpt.parts import CheckpointCorrupt, FormatParts, StorageInfo, corruption_as, merge_globals
from torchdoctor.ckpt.pickle_safe import BoundedReader, GlobalLog, SafeUnpickler, load_data_pickle
from torchdoctor.ckpt.records import (
    DTYPE_ITEMSIZE,
    PickledObject,
    StorageClass,
    StorageRef,
    TensorRecord,
    contiguous_strides,
)

# safetensors dtype codes → torch dtype names (https://github.com/huggingface/safetensors, Dtype)
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu", "C64": "complex64",
}
SHARD_FORMATS = (Format.SAFETENSORS, Format.ZIP, Format.LEGACY)
MAX_NDIM = 64


def read_safetensors(path: Path, detection: Detection) -> FormatParts:
    """The JSON header as records; each tensor is its own storage at ``8 + header length + begin``."""
    try:
        header_len, header = read_safetensors_header(path, path.stat().st_size)
    except SafetensorsError as e:
        raise CheckpointCorrupt(str(e)) from None
    tree: OrderedDict[str, TensorRecord] = OrderedDict()
    storages = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"].lower())
        begin, end = entry["data_offsets"]
        record = TensorRecord(name, dtype, tuple(entry["shape"]), contiguous_strides(tuple(entry["shape"])))
        if record.nbytes is not None and record.nbytes != end - begin:
            raise CheckpointCorrupt(f"safetensors tensor {name!r} ({dtype} {list(record.shape)}) needs "
                                    f"{record.nbytes} bytes, its data_offsets give {end - begin}")
        tree[name] = record
        storages[name] = StorageInfo(dtype, record.numel, end - begin, "cpu", path, offset=8 + header_len + begin)
    metadata = header.get("__metadata__")
    return FormatParts(tree, storages, [], "little", None, dict(metadata) if isinstance(metadata, dict) else {},
                  tensors=dict(tree))


def read_hf_sharded(path: Path, detection: Detection, *, read_shard: Callable[[Path], Any]) -> FormatParts:
    """Every shard read on its own (``read_shard``: reader.read_checkpoint) and merged; storage keys become
    ``SHARD:KEY``."""
    index_path = path / detection.details["index"] if path.is_dir() else path
    index = read_hf_index(index_path)
    weight_map: dict[str, str] = index["weight_map"]
    tensors: dict[str, TensorRecord] = {}
    storages: dict[str, StorageInfo] = {}
    shards: dict[str, str] = {}
    reports = []
    for shard in sorted(set(weight_map.values())):
        reading = read_shard(index_path.parent / shard)
        if reading.format not in SHARD_FORMATS:
            raise CheckpointCorrupt(f"shard {shard} is {reading.format.value}, not safetensors or torch.save")
        reports.append(reading.globals)
        for key, record in reading.tensors.items():
            tensors[key] = replace(record, storage_key=f"{shard}:{record.storage_key}") if record.storage_key \
                else record
            shards[key] = shard
        storages.update({f"{shard}:{key}": info for key, info in reading.storages.items()})
    missing = [key for key, shard in weight_map.items() if shards.get(key) != shard]
    if missing:
        raise CheckpointCorrupt(f"{len(missing)} tensors of {index_path.name}'s weight_map are not in the shard it "
                                f"names: {', '.join(missing[:3])}")
    metadata = index.get("metadata")
    return FormatParts(OrderedDict(tensors), storages, merge_globals(reports), "little", None,
                  dict(metadata) if isinstance(metadata, dict) else {}, shards=shards, tensors=tensors)


def read_dcp(path: Path, detection: Detection) -> FormatParts:
    """``.metadata`` (a pickled ``Metadata`` dataclass) → records; the .distcp data files are not opened."""
    metadata_path = path / ".metadata"
    log = GlobalLog()
    with metadata_path.open("rb") as f, corruption_as(".metadata cannot be unpickled"):
        root = SafeUnpickler(BoundedReader(f, metadata_path.stat().st_size), log, allow_extra=allow_dcp).load()
    items = _state(root).get("state_dict_metadata")
    if not isinstance(items, dict):
        raise CheckpointCorrupt(".metadata holds no state_dict_metadata")
    tree: OrderedDict[str, Any] = OrderedDict()
    for fqn, item in items.items():
        is_tensor = isinstance(item, PickledObject) and item.qualname == "TensorStorageMetadata"
        tree[str(fqn)] = _dcp_tensor(item) if is_tensor else item
    version = _state(root).get("version")
    hint = f"torch.distributed.checkpoint metadata version {version}" if isinstance(version, str) else None
    return FormatParts(tree, {}, log.report(), None, hint,
                  tensors={key: value for key, value in tree.items() if isinstance(value, TensorRecord)})


def _state(obj: Any) -> dict[str, Any]:
    state = obj.state if isinstance(obj, PickledObject) else None
    return state if isinstance(state, dict) else {}


def _dcp_tensor(item: PickledObject) -> TensorRecord:
    state = _state(item)
    properties = state.get("properties")
    # TensorProperties pickles as a tuple (dtype, layout, requires_grad, memory_format, pin_memory) in torch 2.x
    fields = properties.state if isinstance(properties, PickledObject) else None
    if isinstance(fields, dict):
        fields = (fields.get("dtype"), None, fields.get("requires_grad"))
    size = state.get("size")
    if not isinstance(fields, tuple) or len(fields) < 3 or not isinstance(size, tuple):
        raise CheckpointCorrupt("a TensorStorageMetadata in .metadata lacks its size or properties")
    shape = _dims(size)
    return TensorRecord(None, str(fields[0]), shape, contiguous_strides(shape), 0, "cpu", fields[2] is True)


# --- the tar format of torch < 0.4: members storages, tensors, pickle --------------------------------------------


def read_legacy_tar(path: Path, detection: Detection) -> FormatParts:
    """Mirror of torch.serialization's ``legacy_load``: storages, then tensors over them, then the pickle."""
    log = GlobalLog()
    with tarfile.open(path, "r:") as tar:
        members = {member.name: member for member in tar.getmembers()}
        with corruption_as("tar member 'storages' cannot be read"):
            storages, views = _tar_storages(tar, members["storages"], path, log)
        with corruption_as("tar member 'tensors' cannot be read"):
            tensors = _tar_tensors(tar, members["tensors"], storages, views, log)
        with corruption_as("tar member 'pickle' cannot be unpickled"):
            tree = _tar_pickle(tar, members["pickle"], tensors, storages, log)
    return FormatParts(tree, storages, log.report(), "little", "legacy tar format: torch < 0.4")


def _member_reader(tar: tarfile.TarFile, member: tarfile.TarInfo) -> BoundedReader:
    f = tar.extractfile(member)
    if f is None:
        raise CheckpointCorrupt(f"tar member {member.name!r} is not a regular file")
    return BoundedReader(f, member.size, start=0)


def _tar_storages(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path,
                  log: GlobalLog) -> tuple[dict[str, StorageInfo], dict[str, tuple[str, int]]]:
    reader = _member_reader(tar, member)
    count = load_data_pickle(reader, log)
    storages = {}
    for _ in range(_count(count)):  # every round reads at least 8 bytes or fails: bounded by the member's size
        key, location, storage_type = load_data_pickle(reader, log)
        if not isinstance(storage_type, StorageClass) or not isinstance(location, str):
            raise CheckpointCorrupt("a storage in the 'storages' member has no storage type or location")
        numel = struct.unpack("<q", reader.read(8))[0]
        nbytes = numel * DTYPE_ITEMSIZE.get(storage_type.dtype, 1)
        storages[str(key)] = StorageInfo(storage_type.dtype, numel, nbytes, location, path,
                                         offset=member.offset_data + reader.tell())
        reader.skip(nbytes)
    views = {str(target): (str(root), offset) for target, root, offset, _numel in load_data_pickle(reader, log)}
    return storages, views


def _tar_tensors(tar: tarfile.TarFile, member: tarfile.TarInfo, storages: dict[str, StorageInfo],
                 views: dict[str, tuple[str, int]], log: GlobalLog) -> dict[str, TensorRecord]:
    reader = _member_reader(tar, member)
    tensors = {}
    for _ in range(_count(load_data_pickle(reader, log))):
        key, storage_id, _tensor_type = load_data_pickle(reader, log)
        ndim = struct.unpack("<i", reader.read(4))[0]
        reader.read(4)  # legacy encoding treated ndim as 8 bytes
        if not 0 <= ndim <= MAX_NDIM:
            raise CheckpointCorrupt(f"a tensor in the 'tensors' member claims {ndim} dimensions")
        shape = _dims(struct.unpack(f"<{ndim}q", reader.read(8 * ndim)))
        stride = _dims(struct.unpack(f"<{ndim}q", reader.read(8 * ndim)))
        offset = struct.unpack("<q", reader.read(8))[0]
        root, view_offset = views.get(str(storage_id), (str(storage_id), 0))
        info = storages[root]
        tensors[str(key)] = TensorRecord(root, info.dtype, shape, stride, offset + view_offset, info.device)
    return tensors


def _tar_pickle(tar: tarfile.TarFile, member: tarfile.TarInfo, tensors: dict[str, TensorRecord],
                storages: dict[str, StorageInfo], log: GlobalLog) -> Any:
    def persistent(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and isinstance(pid[0], type) and issubclass(pid[0], PickledObject):
            if pid[0].use is not None:
                pid[0].use.module_like = True  # (container class, source file, source) of a pickled module
            return pid[0]
        if str(pid) in tensors:
            return tensors[str(pid)]
        info = storages[str(pid)]
        return StorageRef(str(pid), info.dtype, info.numel, info.device)
    return SafeUnpickler(_member_reader(tar, member), log, persistent=persistent).load()


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointCorrupt("a count in the tar members is not a non-negative integer")
    return value


def _dims(values: Any) -> tuple[int, ...]:
    if not all(type(v) is int and v >= 0 for v in values) or len(values) > MAX_NDIM:
        raise CheckpointCorrupt("a tensor's size or stride is not a short list of non-negative integers")
    return tuple(values)
