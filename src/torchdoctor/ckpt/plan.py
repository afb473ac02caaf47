"""The ``ckpt fix`` plan: steps that turn a checkpoint tree into the fixed one, each labelled safe or unsafe."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.ckpt.formats import Format
from torchdoctor.ckpt.judge import check_devices, check_format
from torchdoctor.ckpt.keys import (
    COMPILE_PREFIX,
    WRAPPER_ORIGINS,
    KeyMatch,
    apply_renames,
    check_match,
    check_prefixes,
    detect_prefixes,
    find_infixes,
    match_to_model,
    strip_prefixes,
)
from torchdoctor.ckpt.reader import CheckpointReading
from torchdoctor.ckpt.records import STORAGE_DTYPES, TensorRecord
from torchdoctor.ckpt.structure import (
    KeyPath,
    WeightsKind,
    check_structure,
    format_path,
    locate_weights,
    training_state_kinds,
)
from torchdoctor.codes import make_finding
from torchdoctor.errors import UsageError
from torchdoctor.report import Finding, Severity
from torchdoctor.units import format_bytes

# Steps are planned on the safe reader's records, never on loaded tensors; a step that renames or drops
# keys carries an ``edit`` that works the same on records and on real tensors, so one plan drives every
# writer and the verification.
Edit = Callable[[Mapping[str, Any]], Mapping[str, Any]]
SHOWN = 5
TARGETS = {"zip": Format.ZIP, "legacy": Format.LEGACY, "safetensors": Format.SAFETENSORS}


@dataclass(frozen=True)
class FixOptions:
    """What the user asked for, validated."""

    to: Format | None = None
    strip_prefixes: tuple[str, ...] = ()
    drop_mismatched: bool = False
    keep_wrapper: bool = False


@dataclass(frozen=True)
class Step:
    """One planned change; ``edit`` renames or drops state-dict keys, None for format-level steps."""

    action: str
    safe: bool
    detail: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    edit: Edit | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "safe": self.safe, "detail": self.detail, **self.facts}


@dataclass(frozen=True)
class Plan:
    """Every step, in order, and where the weights are before and after."""

    format_in: Format
    format_out: Format
    weights_path: KeyPath | None
    """Where the weights are in the input tree; None when no state dict was found."""
    unwrap: bool
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    match: KeyMatch | None = None
    """The fixed weights against the model's ``state_dict()``; None without a model."""
    dropped: tuple[str, ...] = ()
    """State-dict keys left out on purpose (``drop_mismatched``); the model must re-initialise them."""

    @property
    def output_weights_path(self) -> KeyPath | None:
        return () if self.unwrap else self.weights_path

    def apply(self, tree: Any) -> Any:
        """The fixed tree: works on the reader's records and on ``torch.load``'s tensors alike."""
        if self.weights_path is None:
            return tree
        weights = _get(tree, self.weights_path)
        for step in self.steps:
            if step.edit is not None:
                weights = step.edit(weights)
        return weights if self.unwrap else _replace_at(tree, self.weights_path, weights)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [step.to_dict() for step in self.steps]


def parse_options(to: str | Format | None, prefixes: Sequence[str], drop_mismatched: bool,
                  keep_wrapper: bool) -> FixOptions:
    """Validate the user's choices; ``UsageError`` for an unknown target or an empty prefix."""
    target = to if isinstance(to, Format) or to is None else TARGETS.get(str(to).lower())
    if to is not None and target not in TARGETS.values():
        raise UsageError(f"cannot convert to {to!r}", hint=f"choose one of: {', '.join(TARGETS)}")
    if any(not prefix for prefix in prefixes):
        raise UsageError("--strip-prefix needs a non-empty prefix, e.g. --strip-prefix model.")
    return FixOptions(target, tuple(prefixes), drop_mismatched, keep_wrapper)


def build_plan(reading: CheckpointReading, options: FixOptions, model_state: Mapping[str, Any] | None) -> Plan:
    """All steps for ``reading``: unwrap, wrapper prefixes, asked-for prefixes, model renames and drops, format."""
    rewritten = (Format.LEGACY_TAR, Format.TORCHSCRIPT)  # formats written back as zip: no writer keeps them
    format_out = options.to or (Format.ZIP if reading.format in rewritten else reading.format)
    location = locate_weights(reading.tree)
    if location is None:
        if format_out is Format.SAFETENSORS:
            raise UsageError(f"{reading.path.name} holds no state dict to write as safetensors")
        steps = _format_steps(reading, {}, True, format_out) if format_out is not reading.format else []
        return Plan(reading.format, format_out, None, False, tuple(steps))
    unwrap = location.kind is WeightsKind.WRAPPED and not options.keep_wrapper
    steps = _unwrap_steps(reading.tree, location.path) if unwrap else []
    notes: list[str] = []
    weights = _planned(steps, _prefix_steps(location.state_dict, notes), location.state_dict)
    for prefix in options.strip_prefixes:
        weights = _planned(steps, _asked_prefix_step(weights, prefix, notes), weights)
    match, dropped = None, ()
    if model_state is not None:
        model_steps = _model_steps(weights, model_state, options.drop_mismatched)
        weights = _planned(steps, model_steps, weights)
        dropped = tuple(key for step in model_steps if step.action.startswith("drop-") for key in step.facts["keys"])
        match = match_to_model(weights, model_state)
    if format_out is not reading.format:
        steps += _format_steps(reading, weights, unwrap or not location.path, format_out)
    return Plan(reading.format, format_out, location.path, unwrap, tuple(steps), tuple(notes), match, dropped)


def _planned(steps: list[Step], new: Sequence[Step], weights: Mapping[str, Any]) -> Mapping[str, Any]:
    """Append ``new`` and apply their edits: later steps are planned on the keys earlier ones produce."""
    for step in new:
        steps.append(step)
        if step.edit is not None:
            weights = step.edit(weights)
    return weights


def _unwrap_steps(tree: Any, path: KeyPath) -> list[Step]:
    where = format_path(path)
    steps = [Step("unwrap", True, f"Write {where} as the whole file: a plain state dict", {"path": list(path)})]
    others = [str(key) for key in tree if key != path[0]] if isinstance(tree, Mapping) else []
    if others:
        kinds = training_state_kinds(tree)
        named = [f"{key} ({kinds[key].label} state)" if key in kinds else key for key in others]
        steps.append(Step("drop-top-level", False,
                          f"Not carried into a plain state dict (the input keeps them): {', '.join(named)}",
                          {"keys": others, "training_state": {key: kind.value for key, kind in kinds.items()}}))
    return steps


def _prefix_steps(weights: Mapping[str, Any], notes: list[str]) -> list[Step]:
    """Wrapper prefixes every key shares (outermost first), then ``_orig_mod.`` inside names."""
    keys = list(weights)
    prefixes = detect_prefixes(keys)
    steps = []
    if prefixes:
        origins = "; ".join(WRAPPER_ORIGINS[prefix] for prefix in prefixes)
        shown = " then ".join(repr(prefix) for prefix in prefixes)
        steps.append(Step("strip-prefix", True, f"Remove {shown} from all {len(keys)} keys ({origins})",
                          {"prefixes": prefixes, "keys": len(keys)}, _stripper(prefixes, ())))
    stripped = strip_prefixes(keys, prefixes, infixes=())
    owners = find_infixes(stripped)
    if not owners:
        return steps
    try:
        strip_prefixes(stripped, (), infixes=(COMPILE_PREFIX,))
    except ValueError as e:  # "a._orig_mod.w" beside "a.w": merging them would lose a tensor
        notes.append(f"kept '{COMPILE_PREFIX}' inside keys: {e}")
        return steps
    count = sum(1 for key in stripped if find_infixes([key]))
    shown = ", ".join(owner or "the top level" for owner in owners)
    steps.append(Step("strip-infix", True, f"Remove '{COMPILE_PREFIX}' from inside {count} keys (submodules compiled "
                      f"on their own: {shown})", {"infix": COMPILE_PREFIX, "keys": count, "modules": owners},
                      _stripper((), (COMPILE_PREFIX,))))
    return steps


def _stripper(prefixes: Sequence[str], infixes: Sequence[str]) -> Edit:
    def edit(weights: Mapping[str, Any]) -> Mapping[str, Any]:
        return strip_prefixes(weights, list(prefixes), infixes=tuple(infixes))
    return edit


def _asked_prefix_step(weights: Mapping[str, Any], prefix: str, notes: list[str]) -> list[Step]:
    """``--strip-prefix P``: strip P from every key that has it; a merge of two keys is a usage error."""
    count = sum(1 for key in weights if key.startswith(prefix))
    if not count:
        notes.append(f"no key starts with {prefix!r} (after the steps before it): nothing to strip")
        return []
    edit = _stripper([prefix], ())
    try:
        edit(weights)
    except ValueError as e:
        raise UsageError(f"--strip-prefix {prefix!r}: {e}") from None
    return [Step("strip-prefix", True, f"Remove {prefix!r} from {count} of {len(weights)} keys (asked for)",
                 {"prefixes": [prefix], "keys": count, "requested": True}, edit)]


def _model_steps(weights: Mapping[str, Any], model_state: Mapping[str, Any], drop_mismatched: bool) -> list[Step]:
    match = match_to_model(weights, model_state)
    steps = []
    if match.renames:
        renames = dict(match.renames)
        rule = " and ".join(part for part in (f"strip {match.strip_prefix!r}" if match.strip_prefix else "",
                                              f"add {match.add_prefix!r}" if match.add_prefix else "") if part)
        examples = [f"{old} -> {new}" for old, new in list(renames.items())[:3]]
        steps.append(Step("rename", True, f"Rename {len(renames)} keys to the model's names"
                          f"{f' ({rule})' if rule else ''}: {', '.join(examples)}",
                          {"renamed": len(renames), "strip": match.strip_prefix, "add": match.add_prefix},
                          lambda sd: apply_renames(sd, renames)))
    if drop_mismatched:
        steps += _drop_steps(match)
    return steps


def _drop_steps(match: KeyMatch) -> list[Step]:
    steps = []
    mismatched = [m["key"] for m in match.shape_mismatches]
    if mismatched:
        shown = "; ".join(f"{m['key']} {m['checkpoint_shape']} vs model {m['model_shape']}"
                          for m in match.shape_mismatches[:SHOWN])
        steps.append(Step("drop-mismatched", False, f"Drop {len(mismatched)} keys whose shapes do not fit the model "
                          f"({shown}); the model must re-initialise them", {"keys": mismatched},
                          _dropper(mismatched)))
    if match.unexpected:
        steps.append(Step("drop-unexpected", False, f"Drop {len(match.unexpected)} keys the model does not have: "
                          f"{_first(match.unexpected)}", {"keys": list(match.unexpected)},
                          _dropper(match.unexpected)))
    return steps


def _dropper(keys: Sequence[str]) -> Edit:
    drop = tuple(keys)
    return lambda weights: apply_renames(weights, {}, drop=drop)


def _format_steps(reading: CheckpointReading, weights: Mapping[str, Any], weights_at_top: bool,
                  format_out: Format) -> list[Step]:
    detail = {Format.ZIP: "the zip format: mmap-able, loads faster; storages copied byte for byte",
              Format.LEGACY: "the legacy pickle format (for readers older than torch 1.6)",
              Format.SAFETENSORS: "safetensors: a flat dict of tensors, no pickle; module versions "
                                  "(state_dict._metadata) are not kept"}[format_out]
    steps = [Step("convert", True, f"Convert {reading.format.value} to {detail}",
                  {"from": reading.format.value, "to": format_out.value})]
    if format_out is Format.LEGACY:
        _check_legacy_dtypes(weights.values() if weights_at_top and weights else reading.tensors.values())
    if format_out is Format.SAFETENSORS:
        if not weights_at_top:
            raise UsageError("safetensors holds one flat dict of tensors: the weights cannot stay inside a wrapper",
                             hint="drop --keep-wrapper to write the weights alone")
        steps += _safetensors_steps(reading, weights)
    return steps


def _check_legacy_dtypes(values: Any) -> None:
    # torch's legacy writer needs a typed storage per tensor; uint16, float8 & co. have none
    odd = sorted({v.dtype for v in values if isinstance(v, TensorRecord)} - set(STORAGE_DTYPES.values()))
    if odd:
        raise UsageError(f"the legacy format cannot hold {', '.join(odd)} tensors", hint="convert to zip instead")


def _safetensors_steps(reading: CheckpointReading, weights: Mapping[str, Any]) -> list[Step]:
    """What safetensors cannot hold: shared storage, strides, non-tensor values, tensors without data."""
    tensors = {key: value for key, value in weights.items()
               if isinstance(value, TensorRecord) and value.storage_key in reading.storages}
    left_out = [key for key in weights if key not in tensors]
    steps = []
    extra, groups = _tied_bytes(tensors)
    if extra:
        tied = _first([" = ".join(group) for group in groups])
        steps.append(Step("untie", True, f"safetensors cannot share storage: {len(groups)} group(s) of tied tensors "
                          f"are written once per key (+{format_bytes(extra)}): {tied}",
                          {"groups": groups, "extra_bytes": extra}))
    views = [key for key, record in tensors.items() if not record.is_contiguous]
    if views:
        steps.append(Step("contiguous", True, f"{len(views)} non-contiguous views are written as contiguous tensors "
                          f"(same values, new strides): {_first(views)}", {"keys": views}))
    if left_out:
        keep = set(tensors)
        steps.append(Step("drop-non-tensor", False, f"safetensors holds tensors with data only; left out: "
                          f"{_first(left_out)}", {"keys": left_out},
                          lambda sd: type(sd)((k, v) for k, v in sd.items() if k in keep)))
    return steps


def _tied_bytes(tensors: Mapping[str, TensorRecord]) -> tuple[int, list[list[str]]]:
    """Bytes written twice because tensors overlap in one storage, and the groups of overlapping keys."""
    by_storage: dict[str, list[str]] = {}
    for key, record in tensors.items():
        by_storage.setdefault(record.storage_key or "", []).append(key)
    extra, groups = 0, []
    for keys in by_storage.values():
        spans = sorted((tensors[k].storage_offset * (tensors[k].itemsize or 1),
                        (tensors[k].storage_offset + tensors[k].span) * (tensors[k].itemsize or 1)) for k in keys)
        written = sum(tensors[k].nbytes or 0 for k in keys)
        union, end = 0, -1
        for start, stop in spans:
            union += max(0, stop - max(start, end))
            end = max(end, stop)
        if written > union:
            extra += written - union
            groups.append(keys)
    return extra, groups


def remaining_findings(plan: Plan, fixed_tree: Any, devices: Mapping[str, int]) -> list[Finding]:
    """The problems the fixed file still has (judged from the plan's result, before or after writing)."""
    location = locate_weights(fixed_tree)
    keys = list(location.state_dict) if location else []
    findings = check_format(plan.format_out) + check_structure(fixed_tree) + check_prefixes(keys)
    findings += check_devices(devices)
    if plan.match is not None:
        findings += [_dropped_on_purpose(f, plan.dropped) for f in check_match(plan.match)]
    return findings


def _dropped_on_purpose(finding: Finding, dropped: Sequence[str]) -> Finding:
    # Keys dropped with drop_mismatched are missing by the user's choice: say so, as a warning.
    if finding.id != "missing-keys" or not dropped or not set(finding.details["keys"]) <= set(dropped):
        return finding
    return make_finding("missing-keys", f"{finding.message}; dropped on purpose, re-initialise them before training",
                        severity=Severity.WARNING, details=finding.details)


def planned_devices(fixed_tree: Any, keeps_locations: bool) -> dict[str, int]:
    """Devices the fixed file's tensors will name: the source's when storages are copied, else cpu."""
    from torchdoctor.ckpt.reader import collect_tensors

    if not keeps_locations:
        return {}
    return dict(Counter(record.device for record in collect_tensors(fixed_tree).values()))


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", … ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def _get(tree: Any, path: KeyPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _replace_at(tree: Any, path: KeyPath, value: Any) -> Any:
    """A copy of ``tree`` with ``value`` at ``path``; only the containers along the path are copied."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, tuple):
        return tuple(_replace_at(item, rest, value) if i == head else item for i, item in enumerate(tree))
    new = copy.copy(tree)  # keeps the container's type and attributes (an OrderedDict's _metadata)
    new[head] = _replace_at(tree[head], rest, value)
    return new
