"""``diff_checkpoints``: the Python twin of ``torchdoctor ckpt diff`` — what changed between two checkpoints.

Both files are read with the safe reader; keys are compared after removing wrapper prefixes
(``module.``, ``_orig_mod.``) so a DDP save and a plain save of the same weights compare equal;
values are compared streamed, one bounded chunk at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from torchdoctor.ckpt.formats import checkpoint_path, detect_format
from torchdoctor.ckpt.judge import check_detection, check_globals, corrupt_finding
from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, read_checkpoint
from torchdoctor.report import Finding, Report, Section

COMMAND = "ckpt diff"


def diff_checkpoints(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], *,
                     on_progress: Callable[[int, int], None] | None = None) -> Report:
    """Keys only in A / only in B, shape and dtype changes, max |a - b| per common tensor, and a verdict."""
    findings: list[Finding] = []
    readings = [_read(path, findings) for path in (path_a, path_b)]
    result: dict[str, Any] = {"a": str(path_a), "b": str(path_b)}
    if None not in readings:
        result.update(compare(readings[0], readings[1], on_progress))
    else:
        result["identical"] = None
    section = Section("diff", "Comparison", headline(result), tuple(findings), difference_lines(result))
    return Report(COMMAND, tuple(findings), result, (section,))


def difference_lines(result: Mapping[str, Any], limit: int = 10) -> tuple[str, ...]:
    """The first few differences, for people; the JSON has all of them."""
    lines = [f"only in A: {key}" for key in result.get("only_in_a", [])[:limit]]
    lines += [f"only in B: {key}" for key in result.get("only_in_b", [])[:limit]]
    lines += [f"{c['key']}: {c['shape'][0]} {c['dtype'][0]} -> {c['shape'][1]} {c['dtype'][1]}"
              for c in result.get("changed_layout", [])[:limit]]
    differences = result.get("max_abs_diff", {})
    lines += [f"{key}: max |a - b| = {_short(diff)}" for key, diff in list(differences.items())[:limit]]
    hidden = sum(max(0, len(result.get(name, ())) - limit) for name in ("only_in_a", "only_in_b", "changed_layout",
                                                                        "max_abs_diff"))
    if hidden:
        lines.append(f"... and {hidden} more (all of them are in --json)")
    return tuple(lines)


def _short(value: Any) -> str:
    """Six significant digits for people (the JSON keeps the exact value)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _read(path: str | os.PathLike[str], findings: list[Finding]) -> CheckpointReading | None:
    path = checkpoint_path(path)
    detection = detect_format(path)
    problems = check_detection(detection, str(path))
    if problems or not detection.format.is_checkpoint:
        findings.extend(problems)
        return None
    try:
        reading = read_checkpoint(path, detection)
    except CheckpointCorrupt as exc:
        findings.append(corrupt_finding(str(path), exc.message, detection.format.value))
        return None
    findings.extend(check_globals(reading.globals, reading.format.value))
    return reading


def compare(reading_a: CheckpointReading, reading_b: CheckpointReading,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    (keys_a, prefixes_a), (keys_b, prefixes_b) = _normalised_weights(reading_a), _normalised_weights(reading_b)
    keys_a, keys_b, extra_a, extra_b = align_prefix(keys_a, keys_b)
    prefixes = {"a": prefixes_a + extra_a, "b": prefixes_b + extra_b}
    common = [key for key in keys_a if key in keys_b]
    changes, values = [], {}
    for done, key in enumerate(common, 1):
        record_a, record_b = reading_a.tensors[keys_a[key]], reading_b.tensors[keys_b[key]]
        change = _layout_change(key, record_a, record_b)
        if change:
            changes.append(change)
        else:
            values[key] = _max_abs_diff(reading_a, keys_a[key], reading_b, keys_b[key])
        if on_progress is not None:
            on_progress(done, len(common))
    differing = {key: diff for key, diff in values.items() if diff is not None and diff != 0.0}
    unreadable = [key for key, diff in values.items() if diff is None]
    # a tied tensor (lm_head.weight = wte.weight) that one side names twice and the other once (safetensors,
    # save_pretrained) is the same weights, not a difference
    tied = {"a": _tied_aliases(reading_a, keys_a, [k for k in keys_a if k not in keys_b], common),
            "b": _tied_aliases(reading_b, keys_b, [k for k in keys_b if k not in keys_a], common)}
    only_a = [key for key in keys_a if key not in keys_b and key not in tied["a"]]
    only_b = [key for key in keys_b if key not in keys_a and key not in tied["b"]]
    return {
        "formats": [reading_a.format.value, reading_b.format.value],
        "only_in_a": only_a, "only_in_b": only_b, "changed_layout": changes,
        "common": len(common), "equal": len(values) - len(differing) - len(unreadable),
        "max_abs_diff": {key: _json_float(diff) for key, diff in differing.items()},
        "unreadable": unreadable, "tied_only_in": tied,
        # keys are compared without these prefixes; A and B differing in them is worth saying even when
        # every tensor is equal (load_state_dict would not match the keys)
        "key_prefixes": prefixes, "keys_differ_by_prefix": prefixes["a"] != prefixes["b"],
        # None: no difference seen, but some tensors have no data here to compare (e.g. a dcp directory)
        "identical": False if (only_a or only_b or changes or differing) else (None if unreadable else True),
    }


def _tied_aliases(reading: CheckpointReading, keys: Mapping[str, str], only: list[str],
                  common: list[str]) -> dict[str, str]:
    """Each key of ``only`` that is the very tensor (storage, offset, shape, stride) of a common key, mapped to it."""
    def place(key: str) -> tuple[Any, ...] | None:
        record = reading.tensors[keys[key]]
        if record.storage_key is None:
            return None
        return record.storage_key, record.storage_offset, tuple(record.shape), tuple(record.stride)

    by_place = {place(key): key for key in common if place(key) is not None}
    return {key: by_place[place(key)] for key in only if place(key) in by_place}


def _normalised_weights(reading: CheckpointReading) -> tuple[dict[str, str], list[str]]:
    """Weight key without wrapper prefixes -> the reader's full tensor key, and the prefixes removed."""
    from torchdoctor.ckpt.keys import detect_prefixes, strip_prefixes
    from torchdoctor.ckpt.structure import locate_weights

    weights = locate_weights(reading.tree)
    if weights is None:
        return {key: key for key in reading.tensors}, []
    full_keys = {id(record): key for key, record in reading.tensors.items()}
    by_key = {key: full_keys[id(record)] for key, record in weights.state_dict.items() if id(record) in full_keys}
    prefixes = detect_prefixes(list(by_key))
    try:
        return dict(strip_prefixes(by_key, prefixes)), prefixes
    except ValueError:  # stripping would merge keys: compare them as saved
        return by_key, []


def align_prefix(keys_a: dict[str, str], keys_b: dict[str, str]) -> tuple[dict[str, str], dict[str, str],
                                                                           list[str], list[str]]:
    """When every key of one side is the other side's key behind one more prefix (``model.``), drop it.

    Returns both key maps and the prefix taken off each side ([] or [prefix]); unchanged otherwise.
    """
    for long, short, flip in ((keys_a, keys_b, False), (keys_b, keys_a, True)):
        if not long or len(long) != len(short) or set(long) == set(short):
            continue
        first = next(iter(long))
        for key in short:
            prefix = first[:len(first) - len(key)]
            if first.endswith(key) and prefix.endswith(".") and all(k.startswith(prefix) for k in long) \
                    and {k[len(prefix):] for k in long} == set(short):
                stripped = {k[len(prefix):]: full for k, full in long.items()}
                return (keys_a, stripped, [], [prefix]) if flip else (stripped, keys_b, [prefix], [])
    return keys_a, keys_b, [], []


def _layout_change(key: str, a: Any, b: Any) -> dict[str, Any] | None:
    if tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype:
        return None
    return {"key": key, "shape": [list(a.shape), list(b.shape)], "dtype": [a.dtype, b.dtype]}


def _max_abs_diff(reading_a: CheckpointReading, key_a: str, reading_b: CheckpointReading, key_b: str) -> float | None:
    from torchdoctor.ckpt.tensor_data import tensor_max_abs_diff
    from torchdoctor.errors import InputError

    try:
        return tensor_max_abs_diff(reading_a, key_a, reading_b, key_b)
    except (InputError, ValueError, CheckpointCorrupt):  # no data in this file, or an unknown dtype layout
        return None


def _json_float(value: float | None) -> float | str | None:
    if value is None or not math.isnan(value):
        return value
    return "NaN"


def headline(result: Mapping[str, Any]) -> str:
    if result.get("identical") is None:
        return "could not compare"
    if result["identical"] and result.get("keys_differ_by_prefix"):
        a, b = (" + ".join(repr(p) for p in result["key_prefixes"][side]) or "no prefix" for side in "ab")
        return (f"identical tensors: {result['common']} tensors, every value equal; but the keys differ by a prefix "
                f"(A: {a}, B: {b}): one model's load_state_dict accepts only one of them as saved")
    if result["identical"]:
        return f"identical: {result['common']} tensors, every value equal{_tied_note(result)}"
    return (f"different: {len(result['only_in_a'])} only in A, {len(result['only_in_b'])} only in B, "
            f"{len(result['changed_layout'])} shape/dtype changes, {len(result['max_abs_diff'])} with different values")


def _tied_note(result: Mapping[str, Any]) -> str:
    notes = [f"{side.upper()} also names {alias} = {key} (tied: one tensor)"
             for side, aliases in result.get("tied_only_in", {}).items() for alias, key in aliases.items()]
    return f"; {', '.join(notes)}" if notes else ""
