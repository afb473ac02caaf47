"""``inspect_checkpoint``: the Python twin of ``torchdoctor ckpt inspect`` — judge a checkpoint without running it.

Nothing in the file is executed: the safe reader reconstructs its structure as plain data, tensor
values are streamed in bounded chunks (NaN/inf scan), and only with a model are weights materialised.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchdoctor.ckpt.formats import Format, checkpoint_path, detect_format
from torchdoctor.ckpt.judge import (
    check_detection,
    check_devices,
    check_format,
    check_globals,
    check_nonfinite,
    corrupt_finding,
)
from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, read_checkpoint
from torchdoctor.ckpt.sharded import check_shards
from torchdoctor.report import Finding, Report
from torchdoctor.units import format_bytes

COMMAND = "ckpt inspect"
Progress = Callable[[int, int], None]
# Above this much tensor data the default reads headers only: a full scan reads every byte (about 10 s for
# 10 GiB from the page cache, minutes from a cold disk), the headers answer in well under a second.
SCAN_LIMIT_BYTES = 4 << 30
# buffers torch.nn registers (BatchNorm, InstanceNorm with track_running_stats): a plain state dict marks none
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def inspect_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    scan_values: bool | None = None,
    on_progress: Progress | None = None,
    all_keys: bool = False,
) -> Report:
    """Judge the checkpoint at ``path``; with ``model`` (an ``nn.Module``), also whether it loads and trains.

    ``scan_values``: True scans every floating value for NaN/inf, False reads headers only, None (the
    default) scans checkpoints of up to ``SCAN_LIMIT_BYTES`` of tensor data and reads only the headers of
    larger ones (``result["values_scan"]`` says which and why). ``all_keys``: the human report lists every
    key, not a few per top-level group (the JSON has them all).
    """
    path = checkpoint_path(path)  # a save_pretrained folder is its weights file
    shown = str(path)
    detection = detect_format(path)
    result: dict[str, Any] = {"path": shown, "format": detection.format.value, "detected": detection.reason,
                              "size_bytes": _size(path)}
    early = check_detection(detection, shown)
    if early or not detection.format.is_checkpoint:
        return _report(early, result)
    if detection.details.get("layout") == "flatbuffer":  # no pickle, no records to read: say what it is
        return _report(check_format(detection.format, "flatbuffer"), result)
    try:
        reading = read_checkpoint(path, detection)
    except CheckpointCorrupt as exc:
        return _report([corrupt_finding(shown, exc.message, detection.format.value)], result)
    scan = values_scan(reading, scan_values)
    findings, facts = judge_reading(reading, scan_values=scan["mode"] == "full", on_progress=on_progress)
    facts["values_scan"] = scan
    findings = check_shards(detection, shown, reading.metadata.get("total_size")) + findings
    result.update(facts)
    if model is not None:
        from torchdoctor.ckpt.against_model import check_against_model

        model_findings, result["model"] = check_against_model(reading, model, input_shapes)
        findings += model_findings
    return _report(findings, result, all_keys)


def _report(findings: list[Finding], result: dict[str, Any], all_keys: bool = False) -> Report:
    from torchdoctor.ckpt.sections import inspect_sections

    findings = [with_path(finding, result["path"]) for finding in findings]
    return Report(COMMAND, tuple(findings), result, inspect_sections(result, findings, all_keys=all_keys))


def with_path(finding: Finding, path: str) -> Finding:
    """The registry's fix says PATH: put the real (shell-quoted) path there, ready to paste."""
    import dataclasses
    import shlex

    if not finding.fix or "PATH" not in finding.fix:
        return finding
    return dataclasses.replace(finding, fix=finding.fix.replace("PATH", shlex.quote(path)))


def judge_reading(reading: CheckpointReading, *, scan_values: bool = True,
                  on_progress: Progress | None = None) -> tuple[list[Finding], dict[str, Any]]:
    """Findings and facts of a read checkpoint (no model): safety, format, wrappers, prefixes, devices, values."""
    from torchdoctor.ckpt.keys import check_prefixes, detect_prefixes, find_infixes
    from torchdoctor.ckpt.structure import (
        check_structure,
        locate_weights,
        metadata_of,
        state_file_summary,
        training_state_keys,
    )

    weights = _module_weights(reading) or locate_weights(reading.tree)
    weight_keys = list(weights.state_dict) if weights else []
    layout = reading.detection.details.get("layout")
    findings = check_globals(reading.globals, reading.format.value) + check_format(reading.format, layout)
    findings += check_structure(reading.tree) + check_prefixes(weight_keys)
    devices = Counter(record.device for record in reading.tensors.values())
    findings += check_devices(devices)
    try:
        counts = scan_nonfinite(reading, on_progress) if scan_values else {}
    except CheckpointCorrupt as exc:  # the structure read fine but a tensor's bytes are cut short
        counts = {}
        findings.append(corrupt_finding(str(reading.path), exc.message, reading.format.value))
    findings += check_nonfinite(counts)
    facts = {
        "weights_path": _path_text(weights.path) if weights else None,
        "framework": weights.framework if weights else None,
        "prefixes": detect_prefixes(weight_keys),
        "compiled_submodules": [owner for owner in find_infixes(weight_keys) if owner],
        "tensors": summarize_tensors(reading, weights.state_dict if weights else {}),
        "devices": dict(devices),
        "shared_storages": shared_storages(reading),
        "training_state": training_state_keys(reading.tree),
        "state_file": state_file_summary(reading.tree),
        "metadata": _json_safe_metadata({**metadata_of(reading.tree), **reading.metadata}),
        "globals": list(reading.globals),
        "byteorder": reading.byteorder,
        "saved_by": reading.torch_version_hint,
        "nonfinite": {key: {"nan": nan, "inf": inf} for key, (nan, inf) in counts.items() if nan or inf},
        # a dcp directory (or meta tensors) holds no tensor bytes this reader streams: nothing was scanned
        "values_scanned": scan_values and any(r.storage_key in reading.storages for r in reading.tensors.values()),
    }
    return findings, facts


def values_scan(reading: CheckpointReading, asked: bool | None) -> dict[str, Any]:
    """Whether values are scanned (``mode``: full, headers-only, off) and why, in one sentence."""
    data = sum(info.nbytes for info in reading.storages.values())
    if asked is False:
        return {"mode": "off", "data_bytes": data, "reason": "values not scanned (--no-values)"}
    if asked is None and data > SCAN_LIMIT_BYTES:
        return {"mode": "headers-only", "data_bytes": data,
                "reason": f"headers only: {format_bytes(data)} of tensor data is above the "
                          f"{format_bytes(SCAN_LIMIT_BYTES)} scanned by default; --scan-values scans every value"}
    return {"mode": "full", "data_bytes": data, "reason": f"every value scanned ({format_bytes(data)})"}


def _module_weights(reading: CheckpointReading) -> Any:
    """A pickled nn.Module's (or TorchScript module's) weights: its parameters and buffers, named as its
    state_dict() would name them."""
    from torchdoctor.ckpt.records import PickledObject
    from torchdoctor.ckpt.structure import WeightsKind, WeightsLocation

    root = reading.tree
    if not (isinstance(root, PickledObject) and root.use is not None):
        return None
    if root.use.kind == "module":
        framework, weights = "pickled nn.Module", dict(reading.tensors)
    elif reading.format is Format.TORCHSCRIPT:  # a scripted module; its constants are not weights
        framework = "TorchScript module"
        weights = {key: record for key, record in reading.tensors.items() if not key.startswith("constants.")}
    else:
        return None
    return WeightsLocation(path=(), state_dict=weights, kind=WeightsKind.PLAIN, framework=framework,
                           num_tensors=len(weights))


def scan_nonfinite(reading: CheckpointReading, on_progress: Progress | None = None) -> dict[str, tuple[int, int]]:
    """NaN/inf counts per floating tensor, streamed; tensors without data in this file are skipped."""
    from torchdoctor.ckpt.scan import scan_nonfinite as scan

    return scan(reading, on_progress)


def summarize_tensors(reading: CheckpointReading, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Counts, values and bytes of the weights (shared storages counted once), and one row per key.

    ``parameters`` (kept for the JSON contract) counts every value, buffers included; ``elements`` is the
    same figure under its right name, split into ``parameter_elements`` (what ``count`` counts) and
    ``buffer_elements``.
    """
    records = [record for record in state_dict.values() if hasattr(record, "numel")]
    storages = {r.storage_key for r in records if r.storage_key in reading.storages}
    by_dtype = Counter()
    for record in records:
        by_dtype[record.dtype] += record.numel
    marked = any(getattr(record, "is_parameter", False) for record in records)
    buffers = sum(record.numel for key, record in state_dict.items()
                  if hasattr(record, "numel") and _is_buffer(str(key), record, marked))
    elements = sum(record.numel for record in records)
    return {
        "count": len(records),
        "total_in_file": len(reading.tensors),
        "parameters": elements,
        "elements": elements,
        "parameter_elements": elements - buffers,
        "buffer_elements": buffers,
        "bytes": sum(reading.storages[key].nbytes for key in storages),
        "elements_by_dtype": dict(by_dtype),
        "keys": [{"key": key, "shape": list(record.shape), "dtype": record.dtype, "device": record.device}
                 for key, record in state_dict.items() if hasattr(record, "numel")],
    }


def _is_buffer(key: str, record: Any, marked: bool) -> bool:
    """A buffer by the file's own marks (pickled modules, TorchScript) or by the names nn modules give them."""
    if marked and not record.is_parameter:
        return True
    return key.rsplit(".", 1)[-1] in BUFFER_NAMES


def shared_storages(reading: CheckpointReading) -> list[list[str]]:
    """Groups of tensor keys that share one storage (tied weights): loading keeps them tied."""
    groups: dict[str, list[str]] = {}
    for key, record in reading.tensors.items():
        if record.storage_key is not None:
            groups.setdefault(record.storage_key, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


def _size(path: str | os.PathLike[str]) -> int | None:
    try:
        return os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        return None


def _path_text(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


def _json_safe_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    safe = {}
    for key, value in metadata.items():
        safe[str(key)] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)[:200]
    return safe

