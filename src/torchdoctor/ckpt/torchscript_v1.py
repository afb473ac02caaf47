"""TorchScript archives of PyTorch 1.0–1.2: a zip whose ``model.json`` (protobuf ``torch.ModelDef`` as JSON,
caffe2/proto/torch.proto) lists every tensor, and ``tensors/N`` records that hold their bytes. There is no
``data.pkl``; 1.1 and 1.2 add ``attributes.pkl`` for module attributes that are not parameters.

Read without TorchScript: the module tree in ``mainModule`` names each parameter (``submodules`` nest,
``parameters`` point into the ``tensors`` table by ``tensorId``), so the tensors get the names
``state_dict()`` would give them.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.formats import MAX_JSON_BYTES, Detection
from torchdoctor.ckpt.parts import CheckpointCorrupt, FormatParts, StorageInfo, corruption_as
from torchdoctor.ckpt.pickle_safe import BoundedReader, GlobalLog, SafeUnpickler
from torchdoctor.ckpt.records import DTYPE_ITEMSIZE, TensorRecord

# caffe2.TensorProto.DataType names (caffe2/proto/caffe2.proto) → torch dtype names
CAFFE2_DTYPES = {"FLOAT": "float32", "INT32": "int32", "BYTE": "uint8", "BOOL": "bool", "UINT8": "uint8",
                 "INT8": "int8", "UINT16": "uint16", "INT16": "int16", "INT64": "int64", "FLOAT16": "float16",
                 "DOUBLE": "float64"}
MAX_DEPTH = 100
# The 1.1 pickler marked tensors and int lists with these two classes; 1.2 used torch.jit._pickle functions.
OLD_PICKLER_CLASSES = frozenset({"__main__.TensorID", "__main__.IntList"})


def read_model_json(path: Path, detection: Detection) -> FormatParts:
    """Every tensor of ``model.json``, named by the module tree; storages are the ``tensors/N`` records."""
    with zipfile.ZipFile(path) as archive:
        prefix = _prefix(archive)
        model = _model_json(archive, prefix + "model.json")
        storages, table = _tensor_table(archive, path, prefix, model.get("tensors"))
        names = _parameter_names(model.get("mainModule"), (), 0)
        log = GlobalLog()
        attributes = _attributes(archive, prefix + "attributes.pkl", log)
    tree: OrderedDict[str, Any] = OrderedDict()
    for name, (tensor_id, is_buffer) in names.items():
        if not 0 <= tensor_id < len(table):
            raise CheckpointCorrupt(f"model.json: parameter {name} points at tensor {tensor_id}, the table has "
                                    f"{len(table)}")
        tree[name] = replace(table[tensor_id], is_parameter=not is_buffer)
    named = set(dict(names.values()))
    tensors = dict(tree)
    tensors.update({f"tensors.{i}": record for i, record in enumerate(table) if i not in named})
    version = model.get("producerVersion") or "?"
    metadata = {"producer": f"{model.get('producerName', '?')} {version}", "proto_version": model.get("protoVersion")}
    if attributes is not None:
        metadata["attributes"] = len(attributes) if isinstance(attributes, list) else 1
    return FormatParts(tree, storages, log.report(), "little",
                       f"TorchScript model.json archive (PyTorch 1.0-1.2, producer version {version})",
                       metadata, tensors=tensors)


def _prefix(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    if prefix + "model.json" not in archive.NameToInfo:
        raise CheckpointCorrupt(f"zip archive has no {prefix}model.json record")
    return prefix


def _model_json(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    info = archive.getinfo(name)
    if info.file_size > MAX_JSON_BYTES:
        raise CheckpointCorrupt(f"{name} claims {info.file_size} bytes: too large to be a model description")
    with corruption_as(f"{name} is not valid JSON"):
        model = json.loads(archive.read(info))
    if not isinstance(model, dict):
        raise CheckpointCorrupt(f"{name} is not a JSON object")
    return model


def _tensor_table(archive: zipfile.ZipFile, path: Path, prefix: str,
                  entries: Any) -> tuple[dict[str, StorageInfo], list[TensorRecord]]:
    """``tensors``: dims, strides, offset (elements) and dataType of each, over a ``data.key`` record."""
    if not isinstance(entries, list):
        raise CheckpointCorrupt("model.json has no tensors table")
    storages: dict[str, StorageInfo] = {}
    table = []
    for i, entry in enumerate(entries):
        key = entry.get("data", {}).get("key") if isinstance(entry, dict) else None
        dtype = CAFFE2_DTYPES.get(entry.get("dataType", "FLOAT")) if isinstance(entry, dict) else None
        if not isinstance(key, str) or dtype is None:
            raise CheckpointCorrupt(f"model.json: tensor {i} has no data record or an unknown dataType")
        record_name = prefix + key
        info = archive.NameToInfo.get(record_name)
        if info is None:
            raise CheckpointCorrupt(f"model.json: tensor {i}'s record {key} is missing from the archive")
        itemsize = DTYPE_ITEMSIZE[dtype]
        storages.setdefault(key, StorageInfo(dtype, info.file_size // itemsize, info.file_size, "cpu", path,
                                             record=record_name))
        shape, stride = _ints(entry.get("dims", []), i), _ints(entry.get("strides", []), i)
        device = entry.get("device") if isinstance(entry.get("device"), str) else "cpu"
        table.append(TensorRecord(key, dtype, shape, stride, _ints([entry.get("offset", 0)], i)[0], device,
                                  entry.get("requiresGrad") is True))
    return storages, table


def _ints(values: Any, i: int) -> tuple[int, ...]:
    """int64 fields are strings in protobuf's JSON ("3"), plain numbers in some writers."""
    try:
        ints = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise CheckpointCorrupt(f"model.json: tensor {i} has sizes or strides that are not integers") from None
    if any(v < 0 for v in ints) or len(ints) > 64:
        raise CheckpointCorrupt(f"model.json: tensor {i} has negative or too many sizes or strides")
    return ints


def _parameter_names(module: Any, path: tuple[str, ...], depth: int) -> dict[str, tuple[int, bool]]:
    """``name → (tensorId, isBuffer)`` for every parameter in the module tree, submodules as dotted paths."""
    if not isinstance(module, dict) or depth > MAX_DEPTH:
        return {}
    found = {}
    for parameter in module.get("parameters", []):
        if isinstance(parameter, dict) and "name" in parameter:
            tensor_id = _ints([parameter.get("tensorId", -1)], 0)[0] if str(parameter.get("tensorId", "")).lstrip(
                "-").isdigit() else -1
            found[".".join((*path, str(parameter["name"])))] = (tensor_id, parameter.get("isBuffer") is True)
    for sub in module.get("submodules", []):
        if isinstance(sub, dict):
            found.update(_parameter_names(sub, (*path, str(sub.get("name", "?"))), depth + 1))
    return found


def _attributes(archive: zipfile.ZipFile, name: str, log: GlobalLog) -> Any:
    """The attribute values (1.1+), unpickled into stand-ins only to account for every global they name."""
    info = archive.NameToInfo.get(name)
    if info is None:
        return None
    with corruption_as(f"{name} cannot be unpickled"):
        data = archive.read(info)
        allowed = lambda full: full.startswith("torch.jit._pickle.") or full in OLD_PICKLER_CLASSES  # noqa: E731
        return SafeUnpickler(BoundedReader(io.BytesIO(data), len(data)), log, allow_extra=allowed).load()
