"""Judgements of the targets against the loss and the model (pure: facts in, findings out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.report import Finding, Severity

Facts = Mapping[str, Any]
MAX_LISTED = 8
MIN_PER_CLASS = 5  # samples per class, on average, before a missing class 0 counts as a pattern


def check_label_range(facts: Facts) -> list[Finding]:
    """label-out-of-range: class indices below 0 or not below the number of classes (before any step runs)."""
    task, target = facts["task"], facts["reading"]["target"]
    if task["name"] not in ("ce", None) or target is None or not target.get("integral"):
        return []
    histogram, source = _label_counts(facts)
    classes, ignore = task["num_classes"], task["ignore_index"]
    bad = {value: count for value, count in histogram.items()
           if value != ignore and (value < 0 or (classes is not None and value >= classes))}
    if not bad:
        return _class_zero_missing(histogram, source, ignore) if classes is None else []
    valid = sorted(v for v in histogram if v != ignore)
    off_by_one = classes is not None and valid and valid[0] == 1 and valid[-1] == classes
    listed = ", ".join(f"{value} ({count:,}×)" for value, count in sorted(bad.items())[:MAX_LISTED])
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    allowed = f"0..{classes - 1} for {classes} classes ({task['num_classes_source']})" if classes else "0 or more"
    message = f"Labels out of range in {source}: {listed}{more}; valid labels are {allowed}."
    fix = ""
    if off_by_one:
        message += f" The labels run 1..{classes}: they are off by one."
        fix = f"Subtract 1 in the Dataset (label - 1) so they run 0..{classes - 1}."
    return [make_finding("label-out-of-range", message, fix=fix, details={
        "bad_values": {str(v): c for v, c in sorted(bad.items())}, "num_classes": classes,
        "num_classes_source": task["num_classes_source"], "source": source, "off_by_one": bool(off_by_one),
        "ignore_index": ignore})]


def _class_zero_missing(histogram: Mapping[int, int], source: str, ignore: int | None) -> list[Finding]:
    """Labels 1..K, every one of them seen often, never 0, and no class count given: likely off by one.

    Only a warning: without --num-classes nothing is out of range yet, but with K classes cross-entropy
    wants 0..K-1 and label K fails. Every class must appear ``MIN_PER_CLASS`` times on average, so
    class 0 missing by chance from a few batches of many classes is not taken for a pattern.
    """
    counts = {value: count for value, count in histogram.items() if value != ignore}
    top = max(counts, default=0)
    if top < 2 or sorted(counts) != list(range(1, top + 1)) or sum(counts.values()) < MIN_PER_CLASS * top:
        return []
    message = (f"Class 0 never appears in {source}: the labels run 1..{top}. With {top} classes cross-entropy wants "
               f"0..{top - 1}, so label {top} is out of range (likely off by one); give --num-classes to check.")
    return [make_finding("label-out-of-range", message, severity=Severity.WARNING,
                         fix=f"Subtract 1 in the Dataset (label - 1) so they run 0..{top - 1}, or pass "
                             "--num-classes if class 0 exists but is rare.",
                         details={"bad_values": {}, "num_classes": None, "num_classes_source": None, "source": source,
                                  "off_by_one": True, "likely": True, "labels": [1, top], "ignore_index": ignore})]


def check_label_dtype(facts: Facts) -> list[Finding]:
    """label-dtype: float class indices for cross-entropy, other integer widths than int64, integer BCE targets."""
    task, target = facts["task"], facts["reading"]["target"]
    if target is None or task["name"] not in ("ce", "bce"):
        return []
    dtype, name = target["dtype"], facts["reading"]["target_field"]
    output = _output_shape(facts)
    indices_shape = len(target["shape"]) == 1 if output is None else len(target["shape"]) < len(output)
    if task["name"] == "ce" and dtype.startswith("float") and indices_shape:
        return [_dtype_finding(f"The labels ({name}) are {dtype} class indices; cross-entropy needs int64.", dtype,
                               "labels.long()  (torch.tensor(label, dtype=torch.long) in the Dataset)")]
    if task["name"] == "ce" and dtype in ("int32", "int16", "int8"):
        return [_dtype_finding(f"The labels ({name}) are {dtype}; cross-entropy takes int64 (or uint8) class indices.",
                               dtype, "labels.long()")]
    if task["name"] == "bce" and not dtype.startswith("float"):
        return [_dtype_finding(f"The targets ({name}) are {dtype} but BCE needs float targets shaped like the output.",
                               dtype, "targets.float()")]
    return []


def check_target_shape(facts: Facts) -> list[Finding]:
    """target-shape: [B, 1] or one-hot class indices for cross-entropy, indices where BCE wants one-hot, etc."""
    task, target = facts["task"], facts["reading"]["target"]
    if target is None or task["name"] not in ("ce", "bce", "mse"):
        return []
    shape, output = list(target["shape"]), _output_shape(facts)
    labels = f"The labels ({facts['reading']['target_field']})"
    if task["name"] == "ce":
        # float targets are indices (a dtype problem, judged there) or class probabilities: shape is fine
        return _class_index_shape(labels, shape, output, target) if not target["dtype"].startswith("float") else []
    if output is None or shape[1:] == output[1:]:
        return []
    if task["name"] == "bce" and len(shape) == len(output) - 1 and (output[1] or 0) > 1:
        return [_shape_finding(f"{labels} are class indices {shape} but BCE wants one-hot/multi-hot targets shaped "
                               f"like the output {_shape_text(output)}.", shape, output,
                               f"F.one_hot(targets, {output[1]}).float(), or cross-entropy for one class each")]
    return [_shape_finding(f"{labels} {shape} do not match the output {_shape_text(output)}; {task['name']} "
                           "broadcasts or fails.", shape, output,
                           "targets.unsqueeze(1) or output.squeeze(1) so both have the same shape")]


def _class_index_shape(labels: str, shape: list[int], output: list[int | None] | None,
                       target: Mapping[str, Any]) -> list[Finding]:
    wanted = f"cross-entropy wants class indices of shape [{shape[0]}]"
    if len(shape) == 2 and shape[1] == 1 and (output is None or len(output) == 2):
        return [_shape_finding(f"{labels} have shape {shape}; {wanted} (multi-target not supported).", shape, output,
                               "labels.squeeze(1)  (return a scalar label per sample from __getitem__)")]
    if output is not None and len(shape) == len(output) and shape[1:] == output[1:] and target.get("one_hot_rows"):
        return [_shape_finding(f"{labels} are one-hot {shape}; {wanted}.", shape, output,
                               "labels.argmax(1)  (or store the class index)")]
    return []


def _label_counts(facts: Facts) -> tuple[dict[int, int], str]:
    scan = facts.get("dataset_labels")
    if scan and scan.get("integral") and scan.get("histogram") is not None:
        return {int(k): v for k, v in scan["histogram"].items()}, f"the whole data set ({scan['source']})"
    target = facts["reading"]["target"]
    read = facts["reading"]["read"]
    source = f"the first {read} batch{'es' if read != 1 else ''}"
    if target.get("histogram") is not None:
        return {int(k): v for k, v in target["histogram"].items()}, source
    return {int(target["min"]): 1, int(target["max"]): 1} if target.get("min") is not None else {}, source


def _output_shape(facts: Facts) -> list[int | None] | None:
    model = facts.get("model") or {}
    return list((model.get("output") or {}).get("shape") or []) or None


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("B" if d is None else str(d) for d in shape) + "]"


def _dtype_finding(message: str, dtype: str, fix: str) -> Finding:
    return make_finding("label-dtype", message, fix=fix, details={"dtype": dtype})


def _shape_finding(message: str, shape: list[int], output: list[int | None] | None, fix: str) -> Finding:
    return make_finding("target-shape", message, fix=fix, details={"target_shape": shape, "output_shape": output})
