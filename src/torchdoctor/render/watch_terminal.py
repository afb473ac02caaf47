"""The watch pictures for a terminal: a loss sparkline and a per-layer gradient-norm heat strip (Rich)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.style import Style
from rich.text import Text

from torchdoctor.render.watch_series import (
    LogScale,
    bucket_mean,
    buckets,
    colour,
    display_name,
    format_value,
    mapping,
    matrix,
    names,
    numbers,
    steps_of,
)

SPARKS = "▁▂▃▄▅▆▇█"
SHADES = "░▒▓█"  # without colour, the strip's level shows in the glyph
MAX_ROWS = 24  # more layers than this: an even pick that keeps the first and the last (vanishing shows at the ends)
LABEL_MAX = 28
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def render_watch_pictures(result: Mapping[str, Any], console: Console) -> None:
    """Print the pictures for a watch report's ``result`` dict, fitted to ``console.width``; the loss and the
    gradient strip share their columns, so a step sits at the same place in both."""
    series = mapping(result.get("series"))
    layers = names(series.get("layers"))
    loss_label, whose = _whose(result)
    label_width = min(LABEL_MAX, max([len(loss_label)] + [len(display_name(name)) for name in layers]))
    steps = steps_of(series)
    if not steps:
        console.print(Text("watch: no steps were recorded, so there is nothing to draw", style="dim"))
        return
    columns = _columns(len(steps), max(8, console.width - label_width - 2))
    loss = numbers(series.get("loss"))
    _print(console, _sparkline(loss, columns, label_width, loss_label))
    _print(console, _note(label_width, _loss_summary(loss, steps) + whose))
    _heat_strip(layers, matrix(series.get("grad_norm"), len(layers)), steps, columns, label_width, console,
                loss_label.removesuffix("loss"))
    console.print()  # the report follows: a blank line keeps the pictures apart


def _whose(result: Mapping[str, Any]) -> tuple[str, str]:
    """The sparkline's label and a note: a report merged under torchrun keeps the lowest rank's series alone."""
    listed = result.get("ranks")
    ranks = [mapping(rank) for rank in (listed if isinstance(listed, list) else ())]
    reported = [rank.get("rank") for rank in ranks if rank.get("reported")]
    if len(reported) < 2:
        return "loss", ""
    shown = _CONTROL.sub("?", str(reported[0]))  # the merge lists rank 0 first; its series are the report's
    return f"rank {shown} loss", f" · rank {shown} of {len(ranks)} (each rank's: result.ranks[].loss)"


def _columns(length: int, width: int) -> list[range]:
    """The steps behind each character column: buckets when there are more steps than columns, else each step
    repeated so a short run still spans the width."""
    if length >= width:
        return buckets(length, width)
    return [range(step, step + 1) for step in range(length) for _ in range(width // length)]


def _print(console: Console, line: Text) -> None:
    console.print(line, no_wrap=True, overflow="ellipsis")


def _note(label_width: int, text: str) -> Text:
    return Text(" " * (label_width + 2) + text, style="dim")


def _label(name: str, label_width: int, *, bold: bool = False) -> Text:
    name = _CONTROL.sub("?", name)  # a ModuleDict key may hold any text: never let it drive the terminal
    shown = name if len(name) <= label_width else "…" + name[-(label_width - 1):]
    return Text(f"{shown:>{label_width}}  ", style="bold" if bold else "")


def _sparkline(loss: Sequence[float | None], columns: Sequence[range], label_width: int, label: str) -> Text:
    """Linear in the loss (a sparkline is read for its trend); gaps blank, non-finite values a red ✗."""
    values = [bucket_mean(loss, column) for column in columns]
    finite = [value for value in values if value is not None and math.isfinite(value)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    line = _label(label, label_width, bold=True)
    for value in values:
        if value is None:
            line.append(" ")
        elif not math.isfinite(value):
            line.append("✗", style="bold red")
        else:
            share = 0.5 if high == low else (value - low) / (high - low)
            line.append(SPARKS[min(len(SPARKS) - 1, int(share * len(SPARKS)))], style="cyan")
    return line


def _loss_summary(loss: Sequence[float | None], steps: Sequence[int]) -> str:
    known = [(step, value) for step, value in zip(steps, loss, strict=False) if value is not None]
    if not known:
        return "no loss recorded"
    (first_step, first), (last_step, last) = known[0], known[-1]
    return f"loss {format_value(first)} at step {first_step} → {format_value(last)} at step {last_step}"


def _heat_strip(layers: Sequence[str], rows: Sequence[Sequence[float | None]], steps: Sequence[int],
                columns: Sequence[range], label_width: int, console: Console, rank: str = "") -> None:
    if not layers:
        return
    scale = LogScale.of(value for row in rows for value in row)
    picked = _pick_rows(len(layers))
    coloured = console.color_system is not None
    _print(console, _note(label_width, f"{rank}gradient norm per layer, input (top) → output, log colour"))
    for index in picked:
        line = _label(display_name(layers[index]), label_width)
        for column in columns:
            _append_cell(line, bucket_mean(rows[index], column), scale, coloured)
        _print(console, line)
    legend = _note(label_width, f"{len(picked)} of {len(layers)} layers · " if len(picked) < len(layers) else "")
    if scale is not None:
        legend.append(f"{format_value(scale.smallest)} ")
        for position in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            _append_level(legend, position, coloured)
        legend.append(f" {format_value(scale.largest)} · blank: 0 or no value · ✗: NaN/inf")
    _print(console, legend)


def _pick_rows(count: int) -> list[int]:
    if count <= MAX_ROWS:
        return list(range(count))
    return sorted({round(i * (count - 1) / (MAX_ROWS - 1)) for i in range(MAX_ROWS)})


def _append_cell(line: Text, value: float | None, scale: LogScale | None, coloured: bool) -> None:
    if value is not None and not math.isfinite(value):
        line.append("✗", style="bold red")
        return
    position = scale.position(value) if scale is not None else None
    if position is None:
        line.append(" ")
    else:
        _append_level(line, position, coloured)


def _append_level(line: Text, position: float, coloured: bool) -> None:
    if coloured:
        line.append("█", style=Style(color=colour(position)))
    else:
        line.append(SHADES[min(len(SHADES) - 1, int(position * len(SHADES)))])
