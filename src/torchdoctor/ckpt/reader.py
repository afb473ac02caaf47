"""``read_checkpoint``: any checkpoint format as one plain description (tree, tensors, storages, globals), no data."""

from __future__ import annotations

import functools
import io
import os
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchdoctor.ckpt import layouts
from torchdoctor.ckpt.allowlist import allow_torchscript
from torchdoctor.ckpt.formats import LEGACY_MAGIC, LEGACY_PROTOCOL, Detection, Format, detect_format
from torchdoctor.ckpt.parts import CheckpointCorrupt, FormatParts, StorageInfo, corruption_as, merge_globals
from torchdoctor.ckpt.pickle_safe import BoundedReader, GlobalLog, SafeUnpickler, load_data_pickle, storage_from_pid
from torchdoctor.ckpt.records import DTYPE_ITEMSIZE, PickledObject, StorageRef, TensorRecord
from torchdoctor.errors import InputError

MAX_PICKLE_BYTES = 2 << 30  # a data.pkl this large is not a checkpoint we can describe in memory
MAX_TREE_DEPTH = 100
MAX_SCALAR_CHARS = 256

# CheckpointCorrupt, StorageInfo, corruption_as, merge_globals live in parts.py (layouts.py shares them) and
# stay importable from here, where every caller of read_checkpoint finds them.
__all__ = ["CheckpointCorrupt", "CheckpointReading", "FormatParts", "StorageInfo", "TensorRecord", "corruption_as",
           "merge_globals", "read_checkpoint"]


@dataclass(frozen=True)
class CheckpointReading:
    """Everything ``read_checkpoint`` learned, as plain data; tensor data is read later, streamed."""

    path: Path
    format: Format
    tree: Any
    """The unpickled object: containers, scalars, ``TensorRecord`` leaves and ``PickledObject`` stubs."""
    tensors: Mapping[str, TensorRecord]
    """Every tensor by dotted path from the top (``state_dict.fc.weight``); shared tensors under each path."""
    storages: Mapping[str, StorageInfo]
    globals: list[dict[str, Any]]
    """``[{"name": "torch._utils._rebuild_tensor_v2", "kind": "safe"|"module"|"unsafe", "count": 2}]``."""
    metadata: Mapping[str, Any]
    byteorder: str | None
    torch_version_hint: str | None
    detection: Detection
    shards: Mapping[str, str] = field(default_factory=dict)
    """Tensor key → shard file name, for hf-sharded checkpoints."""

    def global_names(self, kind: str) -> list[str]:
        return [row["name"] for row in self.globals if row["kind"] == kind]


def read_checkpoint(path: str | os.PathLike[str], detection: Detection | None = None) -> CheckpointReading:
    """Describe the checkpoint at ``path`` without running its pickles or reading tensor data.

    Raises ``InputError`` when the path is missing or is not a checkpoint at all, and
    ``CheckpointCorrupt`` when it is one but cannot be parsed.
    """
    target = Path(path)
    detection = detection or detect_format(target)
    if not detection.format.is_checkpoint:
        raise InputError(f"{target} is not a checkpoint: {detection.reason}")
    if detection.corrupt:
        raise CheckpointCorrupt(detection.corrupt)
    with corruption_as(f"{target.name} ({detection.format.value}) cannot be read"):
        parts = _READERS[detection.format](target, detection)
        tensors = parts.tensors if parts.tensors is not None else _all_tensors(parts)
    metadata = {**_top_level_scalars(parts.tree), **parts.metadata}
    hint = parts.version_hint
    if isinstance(metadata.get("pytorch-lightning_version"), str):
        lightning = f"pytorch-lightning {metadata['pytorch-lightning_version']}"
        hint = f"{hint}; {lightning}" if hint else lightning
    return CheckpointReading(target, detection.format, parts.tree, tensors, parts.storages, parts.globals, metadata,
                             parts.byteorder, hint, detection, parts.shards)


# --- the tree → tensors walk -----------------------------------------------------------------------------------


def _all_tensors(parts: FormatParts) -> dict[str, TensorRecord]:
    found = collect_tensors(parts.tree)
    for name, root in parts.extra_roots.items():
        for key, record in collect_tensors(root, (name,)).items():
            found[_unique(key, found)] = record
    return found


def collect_tensors(root: Any, prefix: tuple[str, ...] = ()) -> dict[str, TensorRecord]:
    """Every ``TensorRecord`` under ``root`` by dotted path; each container is entered once (trees may share)."""
    found: dict[str, TensorRecord] = {}
    seen: set[int] = set()
    todo: list[tuple[Any, tuple[str, ...]]] = [(root, prefix)]
    while todo:
        node, path = todo.pop()
        if isinstance(node, TensorRecord):
            found[_unique(".".join(path), found)] = node
            continue
        if id(node) in seen or len(path) > MAX_TREE_DEPTH:
            continue
        children = _children(node)
        if children:
            seen.add(id(node))
            todo.extend((child, (*path, name)) for name, child in reversed(children))
    return found


def _unique(key: str, found: Mapping[str, Any]) -> str:
    if key not in found:
        return key
    n = 2
    while f"{key}#{n}" in found:
        n += 1
    return f"{key}#{n}"


def _children(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [(str(key), value) for key, value in node.items()]
    if isinstance(node, list | tuple):
        return [(str(i), value) for i, value in enumerate(node)]
    if isinstance(node, PickledObject):
        return _object_children(node)
    return []


def _object_children(obj: PickledObject) -> list[tuple[str, Any]]:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, dict | None) for s in state):
        state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, slots) from BUILD
    if isinstance(state, dict) and any(k in state for k in ("_parameters", "_buffers", "_modules")):
        # a pickled nn.Module: name tensors the way its state_dict() would
        groups = [state.get(k) for k in ("_parameters", "_buffers", "_modules")]
        return [(str(k), v) for group in groups if isinstance(group, dict) for k, v in group.items()]
    children = [(str(k), v) for k, v in state.items()] if isinstance(state, dict) else []
    children += [(str(k), v) for k, v in obj.entries.items()]
    children += [(str(i), v) for i, v in enumerate(obj.items)]
    return children + [(f"args.{i}", v) for i, v in enumerate(obj.args)]


def _top_level_scalars(tree: Any) -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {}
    return {str(k): v for k, v in tree.items() if v is None or type(v) in (bool, int, float)
            or (type(v) is str and len(v) <= MAX_SCALAR_CHARS)}


# --- zip and TorchScript -----------------------------------------------------------------------------------------


def _read_zip(path: Path, detection: Detection) -> FormatParts:
    torchscript = detection.format is Format.TORCHSCRIPT
    log = GlobalLog()
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive)
        tree, storages = _zip_pickle(archive, path, prefix, "data", log, torchscript)
        parts = FormatParts(tree, storages, [], _small_record(archive, prefix + "byteorder") or "little",
                       _zip_version_hint(archive, prefix, torchscript))
        if torchscript and f"{prefix}constants.pkl" in archive.NameToInfo:
            constants, constant_storages = _zip_pickle(archive, path, prefix, "constants", log, True)
            parts.extra_roots["constants"] = constants
            parts.storages.update(constant_storages)
    parts.globals = log.report()
    return parts


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    if prefix + "data.pkl" not in archive.NameToInfo:
        raise CheckpointCorrupt(f"zip archive has no {prefix}data.pkl record")
    return prefix


def _zip_pickle(archive: zipfile.ZipFile, path: Path, prefix: str, name: str, log: GlobalLog,
                torchscript: bool) -> tuple[Any, dict[str, StorageInfo]]:
    """Unpickle ``{name}.pkl``; its storages live in records ``{name}/KEY`` (TorchScript constants: constants/)."""
    refs: dict[str, StorageRef] = {}
    info = archive.getinfo(f"{prefix}{name}.pkl")
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointCorrupt(f"{info.filename} claims {info.file_size} bytes: too large to be a pickle")
    # TorchScript constants number their storages from 0 too: prefix their keys to keep them apart
    key_prefix = "" if name == "data" else f"{name}/"
    with corruption_as(f"{info.filename} cannot be unpickled"):
        data = archive.read(info)  # zipfile checks the record's CRC-32 here
        tree = SafeUnpickler(BoundedReader(io.BytesIO(data), len(data)), log,
                             persistent=collecting_storages(refs, key_prefix),
                             allow_extra=allow_torchscript if torchscript else None).load()
    storages = {key: _zip_storage(archive, path, f"{prefix}{name}/{key.removeprefix(key_prefix)}", ref)
                for key, ref in refs.items()}
    return tree, storages


def collecting_storages(refs: dict[str, StorageRef], key_prefix: str = "") -> Callable[[Any], Any]:
    """A ``persistent_load`` for torch.save's storage ids that also notes each storage in ``refs``."""
    def persistent(pid: Any) -> Any:
        ref = storage_from_pid(pid)
        if isinstance(ref, StorageRef):
            ref = replace(ref, key=key_prefix + ref.key)
            refs.setdefault(ref.key, ref)
        return ref
    return persistent


def _zip_storage(archive: zipfile.ZipFile, path: Path, record: str, ref: StorageRef) -> StorageInfo:
    info = archive.NameToInfo.get(record)
    if info is None:
        raise CheckpointCorrupt(f"storage record {record} is missing from the zip archive")
    nbytes = ref.numel * DTYPE_ITEMSIZE.get(ref.dtype, 1)
    if info.file_size < nbytes:
        raise CheckpointCorrupt(f"storage record {record} holds {info.file_size} bytes, its storage needs {nbytes}")
    return StorageInfo(ref.dtype, ref.numel, nbytes, ref.device, path, record=record)


def _small_record(archive: zipfile.ZipFile, name: str) -> str | None:
    info = archive.NameToInfo.get(name)
    if info is None or info.file_size > 64:
        return None
    return archive.read(info).decode("ascii", "replace").strip()


def _zip_version_hint(archive: zipfile.ZipFile, prefix: str, torchscript: bool) -> str:
    version = _small_record(archive, prefix + "version") or "?"
    kind = "TorchScript archive" if torchscript else "zip"
    if torchscript:
        return f"{kind} format version {version}"
    if prefix + ".storage_alignment" in archive.NameToInfo:
        return f"{kind} format version {version}, torch >= 2.7 (has a .storage_alignment record)"
    if prefix + "byteorder" in archive.NameToInfo:
        return f"{kind} format version {version}, torch >= 2.1 (has a byteorder record)"
    return f"{kind} format version {version}, torch 1.6 to 2.0 (no byteorder record)"


# --- legacy (pre-1.6) and plain pickles ------------------------------------------------------------------------


def _read_legacy(path: Path, detection: Detection) -> FormatParts:
    size, log, refs = path.stat().st_size, GlobalLog(), {}
    with path.open("rb") as f:
        reader = BoundedReader(f, size)
        with corruption_as("legacy header pickles cannot be read"):
            header = [load_data_pickle(reader, log) for _ in range(3)]
        if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL or not isinstance(header[2], dict):
            raise CheckpointCorrupt(f"legacy header is wrong: magic/protocol {header[0]!r}/{header[1]!r}")
        with corruption_as("legacy main pickle cannot be unpickled"):
            tree = SafeUnpickler(reader, log, persistent=collecting_storages(refs)).load()
        with corruption_as("legacy storage key list cannot be read"):
            keys = load_data_pickle(reader, log)
        storages = _legacy_storages(f, reader.tell(), size, keys, refs, path)
    byteorder = "little" if header[2].get("little_endian", True) else "big"
    return FormatParts(tree, storages, log.report(), byteorder,
                  "legacy format: torch < 1.6, or _use_new_zipfile_serialization=False")


def _legacy_storages(f: Any, offset: int, size: int, keys: Any, refs: Mapping[str, StorageRef],
                     path: Path) -> dict[str, StorageInfo]:
    """Each storage is an 8-byte little-endian element count, then its bytes; note offsets, skip the bytes."""
    if not isinstance(keys, list) or set(map(str, keys)) != set(refs):
        raise CheckpointCorrupt("legacy storage key list does not match the storages the pickle names")
    storages = {}
    for key in map(str, keys):
        ref = refs[key]
        f.seek(offset)
        head = f.read(8)
        numel = struct.unpack("<q", head)[0] if len(head) == 8 else -1
        nbytes = numel * DTYPE_ITEMSIZE.get(ref.dtype, 1)
        if numel < ref.numel or offset + 8 + nbytes > size:
            raise CheckpointCorrupt(f"legacy storage section ends early: storage {key} needs {max(nbytes, 0)} "
                                    f"bytes at offset {offset + 8}, the file has {size} bytes")
        storages[key] = StorageInfo(ref.dtype, numel, nbytes, ref.device, path, offset=offset + 8)
        offset += 8 + nbytes
    return storages


def _read_pickle(path: Path, detection: Detection) -> FormatParts:
    log = GlobalLog()
    with path.open("rb") as f:
        tree = SafeUnpickler(BoundedReader(f, path.stat().st_size), log).load()
    return FormatParts(tree, {}, log.report(), None, None)


# Formats whose layout is not a pickle are read in layouts.py.
_READERS: dict[Format, Callable[[Path, Detection], FormatParts]] = {
    Format.ZIP: _read_zip,
    Format.TORCHSCRIPT: _read_zip,
    Format.LEGACY: _read_legacy,
    Format.PICKLE: _read_pickle,
    Format.SAFETENSORS: layouts.read_safetensors,
    Format.LEGACY_TAR: layouts.read_legacy_tar,
    Format.HF_SHARDED: functools.partial(layouts.read_hf_sharded, read_shard=read_checkpoint),
    Format.DCP: layouts.read_dcp,
}
