"""Group a ckpt report's findings into check groups for the human renderer, each with a one-line headline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.ckpt.judge import is_numpy_data
from torchdoctor.codes import section_ids
from torchdoctor.report import Finding, Section
from torchdoctor.units import format_bytes

# The ids under each group come from the registry (codes.py: each spec's section for "ckpt inspect").
TITLES = (("file", "File"), ("safety", "Pickle safety"), ("structure", "Structure"), ("keys", "Keys"),
          ("values", "Values"), ("model", "Against the model"))
GROUPS = tuple((name, title, section_ids("ckpt inspect", name)) for name, title in TITLES)
MAX_LISTED_KEYS = 12
MAX_GROUPS = 10
KEYS_PER_GROUP = 3


def inspect_sections(result: Mapping[str, Any], findings: Sequence[Finding], *,
                     all_keys: bool = False) -> tuple[Section, ...]:
    """The groups that apply to this result: only File when the file is no readable checkpoint."""
    headlines = {"file": _file(result)}
    lines = {"structure": key_table(result["tensors"]["keys"], all_keys)} if "tensors" in result else {}
    if "tensors" in result:
        headlines.update(safety=_safety(result), structure=_structure(result), keys=_keys(result),
                         values=_values(result))
    if "model" in result:
        headlines["model"] = _model(result["model"])
    sections = []
    for name, title, ids in GROUPS:
        if name in headlines:
            members = tuple(f for f in findings if f.id in ids)
            sections.append(Section(name, title, headlines[name], members, lines.get(name, ())))
    return tuple(sections)


def _file(result: Mapping[str, Any]) -> str:
    size = f", {format_bytes(result['size_bytes'])}" if result.get("size_bytes") is not None else ""
    saved = f", saved by {result['saved_by']}" if result.get("saved_by") else ""
    return f"{result['path']}: {result['format']}{size}{saved}"


def _safety(result: Mapping[str, Any]) -> str:
    rows = result.get("globals", [])
    numpy = sum(row["kind"] == "unsafe" and is_numpy_data(row["name"]) for row in rows)
    kinds = [row["kind"] for row in rows]
    if "unsafe" in kinds or "module" in kinds:
        arrays = f" (numpy data: {numpy})" if numpy else ""
        return (f"{kinds.count('unsafe')} unsafe{arrays} and {kinds.count('module')} class global(s); nothing was "
                "executed")
    return "only tensors and plain containers (read without executing anything)"


def _structure(result: Mapping[str, Any]) -> str:
    tensors = result["tensors"]
    if result.get("state_file") and not tensors["count"]:  # not model weights at all: say what it is
        return f"no model weights: the file is {result['state_file']}"
    where = f"checkpoint[{result['weights_path']!r}]" if result.get("weights_path") else "top level"
    framework = f" ({result['framework']})" if result.get("framework") else ""
    shared = f", {len(result['shared_storages'])} shared storage group(s)" if result.get("shared_storages") else ""
    return (f"weights at {where}{framework}: {tensors['count']} tensors holding {_values_split(tensors)}, "
            f"{format_bytes(tensors['bytes'])}{shared}")


def _values_split(tensors: Mapping[str, Any]) -> str:
    """Name what each figure counts: ``count MODEL`` counts parameters, a checkpoint holds buffers too."""
    total, buffers = tensors["elements"], tensors["buffer_elements"]
    if not buffers:
        return f"{total:,} values (parameters only, no buffers)"
    return f"{total:,} values ({tensors['parameter_elements']:,} in parameters, {buffers:,} in buffers)"


def key_table(rows: Sequence[Mapping[str, Any]], all_keys: bool = False) -> tuple[str, ...]:
    """Keys, shapes and dtypes for people: every key with ``all_keys`` or when there are few, else grouped by
    the first part of the key with a count, the values and the first few keys of each group."""
    if all_keys or len(rows) <= MAX_LISTED_KEYS:
        width = max((len(row["key"]) for row in rows), default=0)
        return tuple(f"{row['key']:<{width}}  {_layout(row)}" for row in rows)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["key"].split(".", 1)[0], []).append(row)
    width = max(len(name) for name in list(groups)[:MAX_GROUPS])
    lines = []
    for name, members in list(groups.items())[:MAX_GROUPS]:
        values = sum(_numel(row["shape"]) for row in members)
        shown = ", ".join(f"{row['key']} {_layout(row)}" for row in members[:KEYS_PER_GROUP])
        more = f", +{len(members) - KEYS_PER_GROUP} more" if len(members) > KEYS_PER_GROUP else ""
        lines.append(f"{name:<{width}}  {len(members)} tensors, {values:,} values: {shown}{more}")
    hidden = len(groups) - MAX_GROUPS
    tail = f"{hidden} more group(s); " if hidden > 0 else ""
    return (*lines, f"{tail}--all lists all {len(rows)} keys")


def _layout(row: Mapping[str, Any]) -> str:
    return f"{list(row['shape'])} {row['dtype']}"


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _keys(result: Mapping[str, Any]) -> str:
    prefixes, compiled = result.get("prefixes") or [], result.get("compiled_submodules") or []
    text = f"prefixes {', '.join(prefixes)}" if prefixes else "no wrapper prefixes"
    # a submodule compiled on its own wraps only its keys: not a prefix, but not clean either
    return text + (f"; '_orig_mod.' inside the keys of {', '.join(compiled)}" if compiled else "")


def _values(result: Mapping[str, Any]) -> str:
    if not result.get("values_scanned"):
        scan = result.get("values_scan") or {}
        return scan["reason"] if scan.get("mode") in ("headers-only", "off") else "not scanned"
    bad = result.get("nonfinite") or {}
    return f"NaN/inf in {len(bad)} tensor(s)" if bad else "no NaN or inf"


def _model(model: Mapping[str, Any]) -> str:
    match = model["match"]
    step = model.get("training_step") or {}
    if "skipped" in step:
        outcome = f"training step skipped: {step['skipped']}"
    elif step.get("ok"):
        outcome = f"a training step ran ({step['timings_ms'].get('total', 0):.1f} ms)"
    else:
        outcome = "the training step failed"
    return f"{model['class']}: {len(match['matched'])} keys matched; {outcome}"


def fix_sections(result: Mapping[str, Any], findings: Sequence[Finding]) -> tuple[Section, ...]:
    """Plan (each step, safe or unsafe), then what was written and verified; remaining problems under them."""
    steps = tuple(f"[{'safe' if step.get('safe') else 'UNSAFE'}] {step['action']}: {step.get('detail', '')}"
                  for step in result.get("plan", []))
    plan = Section("plan", "Plan", _plan_headline(result), (), steps)
    checks = verified_sentences(result.get("verified") or {}) + tuple(result.get("notes") or ())
    written = Section("output", "Output", _output_headline(result), tuple(findings), checks)
    return (plan, written)


def _plan_headline(result: Mapping[str, Any]) -> str:
    if result.get("nothing_to_fix"):
        return "nothing to fix"
    count = len(result.get("plan", []))
    return f"{count} step(s), {result.get('format_in')} -> {result.get('format_out') or result.get('format_in')}"


def _output_headline(result: Mapping[str, Any]) -> str:
    if result.get("dry_run"):
        return f"dry run: would write {result.get('output')}"
    if not result.get("written"):
        return "nothing written; the input is untouched"
    size = f" ({format_bytes(result['bytes_out'])})" if result.get("bytes_out") is not None else ""
    return f"wrote {result['output']}{size}, verified; the input is untouched"


def verified_sentences(verified: Mapping[str, Any]) -> tuple[str, ...]:
    """What the written file was checked for, as sentences (the JSON keeps the facts)."""
    said = []
    if "reread" in verified:
        said.append(f"Read back as {verified['reread']}: {verified.get('tensors', '?')} tensors, keys, shapes and "
                    f"dtypes {verified.get('keys_shapes_dtypes', 'checked')}.")
    if "bytes_compared" in verified:
        while_copying = verified.get("storages_compared_while_copying")
        extra = f" ({while_copying} storage(s) compared while copying)" if while_copying else ""
        same = "bit-identical to the input" if verified.get("bit_identical") else "compared with the input"
        said.append(f"{format_bytes(verified['bytes_compared'])} of tensor data compared: {same}{extra}.")
    if "torch_load" in verified:
        said.append(f"{verified['torch_load']}.")
    if "shared_storages" in verified:
        said.append(_shared_sentence(verified["shared_storages"]))
    if isinstance(verified.get("model"), Mapping):
        said.append(_model_sentence(verified["model"]))
    if isinstance(verified.get("consolidation"), Mapping):
        facts = verified["consolidation"]
        said.append(f"Consolidated {facts.get('tensors')} tensors from {len(facts.get('shards') or [])} shard "
                    f"file(s), checked against {facts.get('against', 'the input')}.")
    return tuple(said)


def _shared_sentence(shared: Any) -> str:
    groups = shared.get("groups") if isinstance(shared, Mapping) else None
    if not groups:
        return "No tensors share a storage, in the input or the output."
    return f"{len(groups)} group(s) of tied tensors still share one storage after torch.load."


def _model_sentence(model: Mapping[str, Any]) -> str:
    if "skipped" in model:
        return f"Not loaded into {model.get('class')}: {model['skipped']}."
    step = model.get("training_step") or {}
    trained = (f"a training step ran (loss {step['loss']:.4g})" if step.get("ok") and "loss" in step
               else f"training step skipped: {step.get('skipped', 'not run')}")
    return f"Loaded into {model.get('class')} with load_state_dict({model.get('load_state_dict')}); {trained}."
