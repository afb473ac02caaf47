"""The Memory section of a count report: what goes where, the modules that save the most, the fit, the fixes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.count.memory_judge import top_modules
from torchdoctor.report import Finding, Section
from torchdoctor.units import format_bytes

MEMORY_IDS = ("memory-exceeds-device", "activations-dominate")
TOP_MODULES = 5


def memory_section(memory: Mapping[str, Any], findings: Sequence[Finding],
                   compare: Sequence[Mapping[str, Any]] = ()) -> Section:
    mine = tuple(finding for finding in findings if finding.id in MEMORY_IDS)
    return Section("memory", "Memory", _headline(memory), mine, lines=_lines(memory, compare))


def _headline(memory: Mapping[str, Any]) -> str:
    batch = "" if memory["batch_size"] is None else f" at batch {memory['batch_size']}"
    amp = f", {memory['amp']} autocast" if memory["amp"] else ""
    return (f"peak {format_bytes(memory['peak_bytes'])} ({memory['peak_phase']}) for a training step{batch} "
            f"with {memory['optimizer']}{amp}")


def _lines(memory: Mapping[str, Any], compare: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    parts = [("parameters", memory["params_bytes"]), ("gradients", memory["grads_bytes"]),
             ("optimizer state", memory["optimizer_bytes"]), ("saved activations", memory["activations_bytes"])]
    if memory["buffers_bytes"]:
        parts.append(("buffers", memory["buffers_bytes"]))
    lines = ["where: " + ", ".join(f"{name} {format_bytes(size)}" for name, size in parts),
             "peak by phase: " + ", ".join(f"{phase} {format_bytes(size)}"
                                           for phase, size in memory["phase_peaks"].items())]
    if memory["amp_weight_copies_bytes"]:
        lines.append(f"autocast: float32 master weights ({format_bytes(memory['params_bytes'])}) plus "
                     f"{memory['amp']} copies saved for backward ({format_bytes(memory['amp_weight_copies_bytes'])}, "
                     "part of the saved activations)")
    top = top_modules(memory["by_module"], TOP_MODULES)
    if top:
        lines.append("most saved activations: " + ", ".join(
            f"{row['name']} {format_bytes(row['activations_bytes'])} ({row['share']:.0%})" for row in top))
    fit = memory.get("fit")
    if fit is not None:
        largest = {None: "", 0: "; no batch size fits"}.get(fit["max_batch_size"],
                                                           f"; largest batch that fits: {fit['max_batch_size']}")
        lines.append(f"fit {format_bytes(fit['device_bytes'])}: {'yes' if fit['fits'] else 'no'}{largest}")
    for fix in memory.get("fixes", []):
        lines.append(f"fix: {fix['action']}: saves {format_bytes(fix['bytes_saved'])}, peak "
                     f"{format_bytes(fix['peak_bytes'])}{' (fits)' if fix['fits'] else ''}")
    for row in compare:
        if row.get("memory_bytes") is not None:
            lines.append(f"{row['tool']}: Estimated Total Size {format_bytes(row['memory_bytes'])} (input, layer "
                         f"outputs x2, parameters; no gradients or optimizer state) vs our peak "
                         f"{format_bytes(memory['peak_bytes'])}")
    return tuple(lines)
