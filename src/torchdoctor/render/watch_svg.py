"""Inline SVG for the watch page: a line chart over steps and a layer × step heatmap on a log colour scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from torchdoctor.render.watch_series import LogScale, colour, display_name, format_value, usable

PLOT_WIDTH = 760
LABEL_WIDTH = 210
ROW_HEIGHT = 14  # the least a row gets; small models get taller rows so the picture keeps its presence
GAP_FILL, ZERO_FILL, NON_FINITE_FILL = "#eef0f3", "#ffffff", "#c0392b"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _step_ticks(steps: Sequence[int]) -> list[int]:
    if not steps:
        return []
    return sorted({int(round(tick)) for tick in _nice_ticks(steps[0], steps[-1], 6) if steps[0] <= tick <= steps[-1]})


class _Axis:
    """Maps a value range onto pixels, linearly or on log10."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False) -> None:
        self.log = log
        self.low, self.high = (math.log10(low), math.log10(high)) if log else (low, high)
        if self.high == self.low:
            self.low, self.high = self.low - 1, self.high + 1
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        value = math.log10(value) if self.log else value
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0 ** power for power in range(math.ceil(self.low), math.floor(self.high) + 1)]
        return _nice_ticks(self.low, self.high)


def line_chart(steps: Sequence[int], values: Sequence[float | None], *, label: str, css_class: str,
               height: int = 220, marker_step: int | None = None) -> str:
    """A line over steps (gaps where a value is missing or non-finite); log y when the values span >= 50×."""
    points = [(s, v) for s, v in zip(steps, values, strict=False) if v is not None and math.isfinite(v)]
    if not points:
        return f'<p class="empty">No {escape(label)} was recorded.</p>'
    left, right, top, bottom = 64, 16, 12, height - 28
    width = left + PLOT_WIDTH + right
    low, high = min(v for _, v in points), max(v for _, v in points)
    log = low > 0 and high / low >= 50
    x = _Axis(steps[0], steps[-1], left, left + PLOT_WIDTH)
    y = _Axis(low, high, bottom, top, log=log)
    parts = [f'<svg class="chart {css_class}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)} over steps">']
    parts += _y_grid(y, left, left + PLOT_WIDTH) + _x_axis(x, steps, bottom)
    if marker_step is not None and steps[0] <= marker_step <= steps[-1]:
        parts.append(f'<line class="marker" x1="{x(marker_step):.1f}" x2="{x(marker_step):.1f}" y1="{top}" '
                     f'y2="{bottom}"><title>first non-finite value at step {marker_step}</title></line>')
    for segment in _segments(steps, values):
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in segment)
        parts.append(f'<polyline class="line" points="{coords}"/>')
    parts += [f'<circle class="dot" cx="{x(s):.1f}" cy="{y(v):.1f}" r="3"><title>step {s}: {escape(label)} '
              f'{format_value(v)}</title></circle>' for s, v in points]
    parts.append("</svg>")
    return "".join(parts)


def _segments(steps: Sequence[int], values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    segments: list[list[tuple[int, float]]] = [[]]
    for step, value in zip(steps, values, strict=False):
        if value is None or not math.isfinite(value):
            segments.append([])
        else:
            segments[-1].append((step, value))
    return [segment for segment in segments if segment]


def _y_grid(y: _Axis, left: float, right: float) -> list[str]:
    parts = []
    for tick in y.ticks():
        position = y(tick)
        parts.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{position:.1f}" y2="{position:.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{position + 4:.1f}" text-anchor="end">'
                     f"{format_value(tick)}</text>")
    return parts


def _x_axis(x: _Axis, steps: Sequence[int], baseline: float) -> list[str]:
    parts = [f'<line class="axis" x1="{x.start}" x2="{x.end}" y1="{baseline}" y2="{baseline}"/>']
    for tick in _step_ticks(steps):
        parts.append(f'<text class="tick" x="{x(tick):.1f}" y="{baseline + 16}" text-anchor="middle">{tick}</text>')
    return parts


def heatmap(layers: Sequence[str], steps: Sequence[int], rows: Sequence[Sequence[float | None]], *, label: str,
            css_class: str, anchors: Sequence[str], band: float | None = None) -> str:
    """One cell per layer × step, coloured on a log scale, each with a hover title; labels link to layer rows."""
    if not layers or not steps:
        return f'<p class="empty">No {escape(label)} was recorded.</p>'
    scale = LogScale.of(value for row in rows for value in row)
    cell = PLOT_WIDTH / len(steps)
    row_height = max(ROW_HEIGHT, min(24, 280 // len(layers)))
    top = 4
    grid_bottom = top + row_height * len(layers)
    height = grid_bottom + 58
    parts = [f'<svg class="heatmap {css_class}" viewBox="0 0 {LABEL_WIDTH + PLOT_WIDTH + 16} {height}" '
             f'shape-rendering="crispEdges" role="img" aria-label="{escape(label)} per layer over steps">']
    for index, (name, row) in enumerate(zip(layers, rows, strict=False)):
        y = top + index * row_height
        shown = display_name(name)
        short = shown if len(shown) <= 30 else "…" + shown[-29:]
        parts.append(f'<a href="#{anchors[index]}"><text class="row-label" x="{LABEL_WIDTH - 8}" '
                     f'y="{y + row_height / 2 + 4:.1f}" text-anchor="end">{escape(short)}<title>{escape(shown)}</title>'
                     "</text></a>")
        for column, step in enumerate(steps):
            value = row[column] if column < len(row) else None
            parts.append(f'<rect class="cell" x="{LABEL_WIDTH + column * cell:.2f}" y="{y}" '
                         f'width="{cell + 0.05:.2f}" height="{row_height - 1}" fill="{_fill(scale, value)}">'
                         f"<title>{escape(shown)} · step {step} · {escape(label)} {format_value(value)}</title></rect>")
    x = _Axis(steps[0], steps[-1] if len(steps) > 1 else steps[0] + 1, LABEL_WIDTH + cell / 2,
              LABEL_WIDTH + PLOT_WIDTH - cell / 2)
    parts += _x_axis(x, steps, grid_bottom + 2)
    parts += _legend(scale, grid_bottom + 30, css_class, band)
    parts.append("</svg>")
    return "".join(parts)


def _fill(scale: LogScale | None, value: float | None) -> str:
    if value is None:
        return GAP_FILL
    if not math.isfinite(value):
        return NON_FINITE_FILL
    if not usable(value) or scale is None:
        return ZERO_FILL
    return colour(scale.position(value))


def _legend(scale: LogScale | None, y: float, css_class: str, band: float | None) -> list[str]:
    if scale is None:
        return [f'<text class="tick" x="{LABEL_WIDTH}" y="{y + 10}">no positive values to colour</text>']
    gradient = f"legend-{css_class}"
    stops = "".join(f'<stop offset="{i / 8:.3f}" stop-color="{colour(i / 8)}"/>' for i in range(9))
    width = 240
    parts = [f'<defs><linearGradient id="{gradient}">{stops}</linearGradient></defs>',
             f'<rect class="legend" x="{LABEL_WIDTH}" y="{y}" width="{width}" height="10" fill="url(#{gradient})"/>',
             f'<text class="tick" x="{LABEL_WIDTH - 6}" y="{y + 9}" text-anchor="end">'
             f"{format_value(10 ** scale.low)}</text>",
             f'<text class="tick" x="{LABEL_WIDTH + width + 6}" y="{y + 9}">{format_value(10 ** scale.high)} '
             "(log scale) · white: 0 · grey: no value · red: NaN/inf</text>"]
    position = scale.position(band) if band is not None else None
    if position is not None and 0 < position < 1:
        mark = LABEL_WIDTH + position * width
        parts.append(f'<line class="band" x1="{mark:.1f}" x2="{mark:.1f}" y1="{y - 3}" y2="{y + 13}"/>'
                     f'<text class="tick" x="{mark:.1f}" y="{y + 24}" text-anchor="middle">'
                     f"usual {format_value(band)}</text>")
    return parts
