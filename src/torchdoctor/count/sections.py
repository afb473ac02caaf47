"""Group a count report into check groups for the human renderer: Parameters, Compute, Layers, Uncounted ops,
Compare; the convention is stated under Compute."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.codes import section_of
from torchdoctor.count.ops import CONVENTION_SHORT
from torchdoctor.report import Finding, Section
from torchdoctor.units import format_bytes

MAX_OPS_SHOWN = 5
MAX_NAME = 40


def count_sections(result: Mapping[str, Any], findings: Sequence[Finding]) -> tuple[Section, ...]:
    """The sections that apply: Layers only when something was counted, Compare only when asked for."""
    uncounted = tuple(f for f in findings if section_of(f.id, "count") == "uncounted")
    other = tuple(f for f in findings if section_of(f.id, "count") == "compute")
    sections = [
        Section("params", "Parameters", _params_headline(result["params"]), lines=_params_lines(result["params"])),
        Section("compute", "Compute", _compute_headline(result), other, lines=_compute_lines(result)),
    ]
    if result.get("layers"):
        sections.append(Section("layers", "Layers", _layers_headline(result), lines=layer_table(result["layers"])))
    if result.get("macs") is not None:
        sections.append(Section("uncounted", "Uncounted ops", _uncounted_headline(result), uncounted))
    if result.get("compare"):
        sections.append(Section("compare", "Compare", _compare_headline(result["compare"]),
                                lines=tuple(f"{row['tool']}: {row['note']}" for row in result["compare"])))
    return tuple(sections)


def si(number: int | float, unit: str = "") -> str:
    """``4_089_184_256`` -> ``"4.089 G"`` (three decimals, K/M/G/T); below 1000 the plain number."""
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.3f} {suffix}{unit}"
    return f"{number:g} {unit}".rstrip()


def _params_headline(params: Mapping[str, Any]) -> str:
    short = f" ({si(params['total'])})" if params["total"] >= 1000 else ""
    return (f"{params['total']:,}{short}: {params['trainable']:,} trainable, "
            f"{params['frozen']:,} frozen; {format_bytes(params['bytes'])} with buffers")


def _params_lines(params: Mapping[str, Any]) -> tuple[str, ...]:
    lines = [f"{dtype}: {format_bytes(size)}" for dtype, size in params["bytes_by_dtype"].items()]
    lines.append(f"buffers: {params['buffers']:,} values, {format_bytes(params['buffer_bytes'])}")
    lines += [f"shared: {' = '.join(group['names'])} ({group['numel']:,} values, counted once)"
              for group in params["shared"]]
    return tuple(lines)


def _compute_headline(result: Mapping[str, Any]) -> str:
    shapes = ", ".join(f"{row['shape']} {row['dtype']}" for row in result["inputs"]) or "no tensor inputs"
    what = "a training step (forward, backward, optimizer)" if result["mode"] == "train-step" else "forward (eval)"
    where = " on the meta device" if result["device"] == "meta" else ""
    if result.get("macs") is None:
        return f"not counted: {what} of {shapes}{where} failed"
    return f"{si(result['macs'], 'MACs')} = {si(result['flops'], 'FLOPs')}, {what} of {shapes}{where}"


def _compute_lines(result: Mapping[str, Any]) -> tuple[str, ...]:
    lines = [f"convention: {CONVENTION_SHORT} (--json: result.convention)"]
    if result["mode"] == "train-step" and result.get("macs") is not None:
        lines.append("measured: " + ", ".join(f"{phase} {si(counts['macs'], 'MACs')}"
                                              for phase, counts in result["phases"].items()))
    counted = [row for row in result.get("by_op", []) if row["flops"]]
    total = result.get("flops") or 0
    for row in counted[:MAX_OPS_SHOWN]:
        lines.append(f"{row['op']} x{row['calls']}: {si(row['flops'], 'FLOPs')} ({row['flops'] / total:.1%})")
    return tuple(lines)


def _layers_headline(result: Mapping[str, Any]) -> str:
    layers = result["layers"]
    heaviest = max(layers, key=lambda row: row["macs"])
    return (f"{len(layers)} module(s) to depth {result['depth']}; most MACs in '{heaviest['name']}' "
            f"({heaviest['share']:.1%})")


def layer_table(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """A compact fixed-width table: name (indented by depth), type, output shape, params, MACs, share."""
    cells = [("name", "type", "output", "params", "MACs", "share")]
    for row in rows:
        name = "  " * (row["depth"] - 1) + row["name"]
        name = name if len(name) <= MAX_NAME else "…" + name[-(MAX_NAME - 1):]
        output = "-" if row["output_shape"] is None else str(row["output_shape"])
        cells.append((name, row["type"], output, f"{row['params']:,}", si(row["macs"]), f"{row['share']:.1%}"))
    widths = [max(len(cell[i]) for cell in cells) for i in range(6)]
    return tuple(
        "  ".join(cell[i].ljust(widths[i]) if i < 3 else cell[i].rjust(widths[i]) for i in range(6)).rstrip()
        for cell in cells
    )


def _uncounted_headline(result: Mapping[str, Any]) -> str:
    rows = result["uncounted_ops"]
    unknown = [row for row in rows if row["kind"] == "unknown"]
    elementwise = sum(row["calls"] for row in rows if row["kind"] == "elementwise")
    if not rows:
        return "none: every op that ran has a formula or is free (views, copies, allocation)"
    parts = [f"{len(unknown)} op(s) of unknown cost"] if unknown else ["no op of unknown cost"]
    parts.append(f"{elementwise} elementwise call(s) outside the MAC convention")
    return "; ".join(parts)


def _compare_headline(rows: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for row in rows:
        if row["macs"] is None:
            parts.append(f"{row['tool']} {'not installed' if not row['available'] else 'no number'}")
        else:
            difference = f" ({row['macs_difference']:+.1%})" if row["macs_difference"] is not None else ""
            parts.append(f"{row['tool']} {si(row['macs'], 'MACs')}{difference}")
    return ", ".join(parts)
