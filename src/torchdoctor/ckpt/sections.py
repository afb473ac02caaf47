"""Group a ckpt report's findings into check groups for the human renderer, each with a one-line headline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.codes import section_ids
from torchdoctor.report import Finding, Section
from torchdoctor.units import format_bytes

# The ids under each group come from the registry (codes.py: each spec's section for "ckpt inspect").
TITLES = (("file", "File"), ("safety", "Pickle safety"), ("structure", "Structure"), ("keys", "Keys"),
          ("values", "Values"), ("model", "Against the model"))
GROUPS = tuple((name, title, section_ids("ckpt inspect", name)) for name, title in TITLES)


def inspect_sections(result: Mapping[str, Any], findings: Sequence[Finding]) -> tuple[Section, ...]:
    """The groups that apply to this result: only File when the file is no readable checkpoint."""
    headlines = {"file": _file(result)}
    if "tensors" in result:
        headlines.update(safety=_safety(result), structure=_structure(result), keys=_keys(result),
                         values=_values(result))
    if "model" in result:
        headlines["model"] = _model(result["model"])
    sections = []
    for name, title, ids in GROUPS:
        if name in headlines:
            members = tuple(f for f in findings if f.id in ids)
            sections.append(Section(name, title, headlines[name], members))
    return tuple(sections)


def _file(result: Mapping[str, Any]) -> str:
    size = f", {format_bytes(result['size_bytes'])}" if result.get("size_bytes") is not None else ""
    saved = f", saved by {result['saved_by']}" if result.get("saved_by") else ""
    return f"{result['path']}: {result['format']}{size}{saved}"


def _safety(result: Mapping[str, Any]) -> str:
    kinds = [row["kind"] for row in result.get("globals", [])]
    if "unsafe" in kinds or "module" in kinds:
        return f"{kinds.count('unsafe')} unsafe and {kinds.count('module')} class global(s); nothing was executed"
    return "only tensors and plain containers (read without executing anything)"


def _structure(result: Mapping[str, Any]) -> str:
    tensors = result["tensors"]
    where = f"checkpoint[{result['weights_path']!r}]" if result.get("weights_path") else "top level"
    framework = f" ({result['framework']})" if result.get("framework") else ""
    shared = f", {len(result['shared_storages'])} shared storage group(s)" if result.get("shared_storages") else ""
    return (f"weights at {where}{framework}: {tensors['count']} tensors, {tensors['parameters']:,} values, "
            f"{format_bytes(tensors['bytes'])}{shared}")


def _keys(result: Mapping[str, Any]) -> str:
    prefixes = result.get("prefixes") or []
    return f"prefixes {', '.join(prefixes)}" if prefixes else "no wrapper prefixes"


def _values(result: Mapping[str, Any]) -> str:
    if not result.get("values_scanned"):
        return "not scanned"
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
    checks = tuple(f"{name}: {value}" for name, value in (result.get("verified") or {}).items())
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
