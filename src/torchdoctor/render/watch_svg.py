"""Inline SVG for the watch page: a line chart over steps and a layer × step heatmap on a log colour scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from torchdoctor.render.watch_series import (
    LogScale,
    bucket_mean,
    buckets,
    colour,
    display_name,
    format_value,
    usable,
)

PLOT_WIDTH = 760
PLOT_LIMIT = 1e300
LABEL_WIDTH = 210
ROW_HEIGHT = 14  # the least a row gets; small models get taller rows so the picture keeps its presence
# ~150 bytes a cell: past this many per heatmap (100 layers × 100 columns), neighbouring steps share a cell, which
# keeps a 500-step, 300-layer page a few MB; a cell narrower than a few pixels could not be pointed at anyway
MAX_CELLS = 10_000
MIN_COLUMNS = 40
# one colour per line of a chart with a legend: the page's accent first, then hues apart from it and each other
LINE_COLOURS = ("var(--accent)", "#d0730b", "#7a5af8", "#12b76a", "#e04f9b", "#667085", "#b42318", "#0e9384")
GAP_FILL, ZERO_FILL, NON_FINITE_FILL = "#cfd4db", "#f3e3cf", "#c0392b"  # grey, sand, red: off the scale


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low or not math.isfinite(high - low):
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
        if self.high == self.low:  # a constant (an lr without schedule): centre it, a decade or ±10% around
            # a tenth of a subnormal (5e-324) is 0: then a unit pad, or the scale divides by zero
            pad = 1.0 if log or self.low == 0 else abs(self.low) / 10 or 1.0
            self.low, self.high = self.low - pad, self.high + pad
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        value = math.log10(value) if self.log else value
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0 ** power for power in range(math.ceil(self.low), math.floor(self.high) + 1)]
        return _nice_ticks(self.low, self.high)


@dataclass(frozen=True)
class Line:
    """One named series of a line chart (a rank's loss); ``name`` shows in the legend when there are several."""

    name: str
    steps: Sequence[int]
    values: Sequence[float | None]


def line_chart(steps: Sequence[int], values: Sequence[float | None], *, label: str, css_class: str,
               height: int = 220, marker_step: int | None = None) -> str:
    """A line over steps (gaps where a value is missing or non-finite); log y when the values span >= 50×."""
    return lines_chart([Line("", steps, values)], label=label, css_class=css_class, height=height,
                       marker_step=marker_step)


def lines_chart(lines: Sequence[Line], *, label: str, css_class: str, height: int = 220,
                marker_step: int | None = None) -> str:
    """Several lines on shared axes, the first in the page's accent colour; a legend names them when there are
    two or more, in the order given."""
    # drawn within ±1e300 so the axis span stays a finite float (the titles keep the true values)
    lines = [Line(line.name, line.steps, [_clamped(v) for v in line.values]) for line in lines]
    points = [(s, v) for line in lines for s, v in zip(line.steps, line.values, strict=False)
              if v is not None and math.isfinite(v)]
    if not points:
        return f'<p class="empty">No {escape(label)} was recorded.</p>'
    legend = len(lines) > 1
    left, right, top, bottom = 64, 16, 12 + 18 * legend, height - 28 + 18 * legend
    width, height = left + PLOT_WIDTH + right, height + 18 * legend
    low, high = min(v for _, v in points), max(v for _, v in points)
    steps = sorted({s for line in lines for s in line.steps})
    x = _Axis(steps[0], steps[-1], left, left + PLOT_WIDTH)
    y = _Axis(low, high, bottom, top, log=low > 0 and high / low >= 50)
    parts = [f'<svg class="chart {css_class}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)} over steps">']
    parts += _y_grid(y, left, left + PLOT_WIDTH) + _x_axis(x, steps, bottom)
    if marker_step is not None and steps[0] <= marker_step <= steps[-1]:
        parts.append(f'<line class="marker" x1="{x(marker_step):.1f}" x2="{x(marker_step):.1f}" y1="{top}" '
                     f'y2="{bottom}"><title>first non-finite value at step {marker_step}</title></line>')
    for index in reversed(range(len(lines))):  # the first line drawn last: on top where lines cross
        parts += _line(lines[index], index, x, y, label)
    if legend:
        parts += _line_legend(lines, left)
    parts.append("</svg>")
    return "".join(parts)


def _clamped(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return max(-PLOT_LIMIT, min(PLOT_LIMIT, value))


def _line(line: Line, index: int, x: _Axis, y: _Axis, label: str) -> list[str]:
    colour_style = f' style="stroke:{LINE_COLOURS[index % len(LINE_COLOURS)]}"' if index else ""
    named = f"{escape(line.name)} · " if line.name else ""
    parts = []
    for segment in _segments(line.steps, line.values):
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in segment)
        parts.append(f'<polyline class="line"{colour_style} points="{coords}"/>')
    parts += [f'<circle class="dot" cx="{x(s):.1f}" cy="{y(v):.1f}" r="3"><title>{named}step {s}: {escape(label)} '
              f'{format_value(v)}</title></circle>'
              for s, v in zip(line.steps, line.values, strict=False) if v is not None and math.isfinite(v)]
    return parts


def _line_legend(lines: Sequence[Line], left: float) -> list[str]:
    parts, position = ['<g class="legend">'], left
    for index, line in enumerate(lines):
        stroke = LINE_COLOURS[index % len(LINE_COLOURS)]
        parts.append(f'<line class="line" style="stroke:{stroke}" x1="{position}" x2="{position + 18}" y1="10" '
                     f'y2="10"/><text class="tick" x="{position + 22}" y="14">{escape(line.name)}</text>')
        position += 30 + 7 * len(line.name)
    parts.append("</g>")
    return parts


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


@dataclass(frozen=True)
class Mark:
    """A finding drawn on a heatmap: an outline over its layer's row for its step range, linking to it."""

    row: int
    first: int
    last: int
    title: str
    href: str


def heatmap(layers: Sequence[str], steps: Sequence[int], rows: Sequence[Sequence[float | None]], *, label: str,
            css_class: str, anchors: Sequence[str], band: float | None = None, marks: Sequence[Mark] = ()) -> str:
    """One cell per layer × step (neighbouring steps merged when that would pass ``MAX_CELLS``), coloured on a log
    scale, each with a hover title; the row labels link to the layer rows of the page, the marks to findings."""
    if not layers or not steps:
        return f'<p class="empty">No {escape(label)} was recorded.</p>'
    scale = LogScale.of(value for row in rows for value in row)
    columns = buckets(len(steps), max(MIN_COLUMNS, MAX_CELLS // len(layers)))
    row_height = max(ROW_HEIGHT, min(24, 280 // len(layers)))
    grid_bottom = 4 + row_height * len(layers)
    parts = [f'<svg class="heatmap {css_class}" viewBox="0 0 {LABEL_WIDTH + PLOT_WIDTH + 16} {grid_bottom + 58}" '
             f'role="img" aria-label="{escape(label)} per layer over steps">']
    for index, (name, row) in enumerate(zip(layers, rows, strict=False)):
        parts.append(_heat_row(display_name(name), anchors[index], 4 + index * row_height, row_height,
                               [(column, bucket_mean(row, column)) for column in columns], steps, label, scale))
    parts += [_mark(mark, columns, steps, 4 + mark.row * row_height, row_height) for mark in marks
              if 0 <= mark.row < len(layers)]
    cell = PLOT_WIDTH / len(columns)
    x = _Axis(steps[0], steps[-1] if len(steps) > 1 else steps[0] + 1, LABEL_WIDTH + cell / 2,
              LABEL_WIDTH + PLOT_WIDTH - cell / 2)
    parts += _x_axis(x, steps, grid_bottom + 2)
    parts += _legend(scale, grid_bottom + 30, css_class, band)
    parts.append("</svg>")
    return "".join(parts)


def _heat_row(name: str, anchor: str, y: float, height: int, cells: Sequence[tuple[range, float | None]],
              steps: Sequence[int], label: str, scale: LogScale | None) -> str:
    short = escape(name if len(name) <= 30 else "…" + name[-29:])
    width = PLOT_WIDTH / len(cells)
    parts = [f'<g class="row" transform="translate(0,{y})" data-layer="{escape(name)}"><a href="#{anchor}">'
             f'<text class="row-label" x="{LABEL_WIDTH - 8}" y="{height / 2 + 4:.1f}" text-anchor="end">{short}'
             f"<title>{escape(name)}</title></text></a>"]
    for index, (column, value) in enumerate(cells):
        first, last = steps[column[0]], steps[column[-1]]
        where = f"step {first}" if first == last else f"steps {first}–{last}"
        # each cell overlaps the next by half a unit: abutting edges anti-alias into visible seams
        parts.append(f'<rect x="{LABEL_WIDTH + index * width:.1f}" width="{width + 0.5:.1f}" height="{height - 1}" '
                     f'fill="{_fill(scale, value)}"><title>{short} · {where} · {label} {format_value(value)}</title>'
                     "</rect>")
    parts.append("</g>")
    return "".join(parts)


def _mark(mark: Mark, columns: Sequence[range], steps: Sequence[int], y: float, height: int) -> str:
    covered = [index for index, column in enumerate(columns)
               if steps[column[0]] <= mark.last and steps[column[-1]] >= mark.first]
    if not covered:
        return ""
    width = PLOT_WIDTH / len(columns)
    left, right = LABEL_WIDTH + covered[0] * width, LABEL_WIDTH + (covered[-1] + 1) * width
    return (f'<a href="{escape(mark.href)}"><rect class="mark" x="{left + 1:.1f}" y="{y + 1:.1f}" '
            f'width="{right - left - 2:.1f}" height="{height - 3}"><title>{escape(mark.title)}</title></rect></a>')


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
             f"{format_value(scale.smallest)}</text>",
             f'<text class="tick" x="{LABEL_WIDTH + width + 6}" y="{y + 9}">{format_value(scale.largest)} '
             "(log scale) · sand: 0 · grey: no value · red: NaN/inf</text>"]
    position = scale.position(band) if band is not None else None
    if position is not None and 0 < position < 1:
        mark = LABEL_WIDTH + position * width
        parts.append(f'<line class="band" x1="{mark:.1f}" x2="{mark:.1f}" y1="{y - 3}" y2="{y + 13}"/>'
                     f'<text class="tick" x="{mark:.1f}" y="{y + 24}" text-anchor="middle">'
                     f"usual {format_value(band)}</text>")
    return parts
