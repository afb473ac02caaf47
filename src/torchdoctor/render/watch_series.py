"""Pure helpers shared by the watch pictures: numbers out of the JSON dict, a log colour scale, buckets, anchors."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ``render_json`` writes non-finite floats as "NaN"/"Infinity", the contract's ``json_float`` as "nan"/"inf": a
# dict read back from ``--json`` or built for it may carry either
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
               "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# viridis at nine stops: perceptually even and readable for colour-blind people, so order shows without a key
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")


def number(value: Any) -> float | None:
    """A float from a series entry (float, int, or a ``render_json`` non-finite string); None for a gap."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _NON_FINITE.get(value)
    return None


def numbers(values: Any) -> list[float | None]:
    return [number(value) for value in values] if isinstance(values, (list, tuple)) else []


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one: a hand-edited report must not crash the pictures."""
    return value if isinstance(value, Mapping) else {}


def names(value: Any) -> list[str]:
    """Layer or module names: the strings of a list, or the keys of an object."""
    if isinstance(value, Mapping):
        value = list(value)
    return [str(name) for name in value] if isinstance(value, (list, tuple)) else []


def steps_of(series: Any) -> list[int]:
    """The sampled step numbers; an entry that is not a finite number keeps its position (a report edited by hand
    or cut short must still draw)."""
    values = mapping(series).get("step")
    steps = []
    for index, raw in enumerate(values if isinstance(values, (list, tuple)) else ()):
        value = number(raw)
        steps.append(int(value) if value is not None and math.isfinite(value) else index)
    return steps


def matrix(rows: Any, layers: int) -> list[list[float | None]]:
    """One row of numbers per layer; missing rows are empty (a short or absent series draws as gaps)."""
    rows = rows if isinstance(rows, (list, tuple)) else []
    return [numbers(rows[index]) if index < len(rows) else [] for index in range(layers)]


def usable(value: float | None) -> bool:
    """Positive and finite: the only values a log scale can place."""
    return value is not None and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class LogScale:
    """log10 from the smallest to the largest positive finite value seen."""

    low: float
    high: float
    smallest: float
    largest: float

    @classmethod
    def of(cls, values: Iterable[float | None]) -> LogScale | None:
        kept = [value for value in values if usable(value)]
        if not kept:
            return None
        smallest, largest = min(kept), max(kept)
        return cls(math.log10(smallest), math.log10(largest), smallest, largest)

    def position(self, value: float | None) -> float | None:
        """0 at the low end, 1 at the high end; None for values the scale cannot place."""
        if not usable(value):
            return None
        if self.high == self.low:
            return 0.5
        return min(1.0, max(0.0, (math.log10(value) - self.low) / (self.high - self.low)))


def colour(position: float) -> str:
    """The viridis colour at ``position`` in [0, 1], linearly between the stops."""
    scaled = min(1.0, max(0.0, position)) * (len(VIRIDIS) - 1)
    index = min(int(scaled), len(VIRIDIS) - 2)
    low, high, share = VIRIDIS[index], VIRIDIS[index + 1], scaled - index
    channels = (round(int(low[i:i + 2], 16) * (1 - share) + int(high[i:i + 2], 16) * share) for i in (1, 3, 5))
    return "#" + "".join(f"{channel:02x}" for channel in channels)


def buckets(length: int, count: int) -> list[range]:
    """``length`` items in at most ``count`` even, contiguous, non-empty buckets (to fit a terminal width)."""
    count = max(0, min(count, length))
    return [range(length * i // count, length * (i + 1) // count) for i in range(count)]


def bucket_mean(values: Sequence[float | None], bucket: range) -> float | None:
    """The mean of the finite values in ``bucket``; a non-finite value wins (it must stay visible)."""
    chosen = [values[i] for i in bucket if i < len(values) and values[i] is not None]
    if any(not math.isfinite(value) for value in chosen):
        return next(value for value in chosen if not math.isfinite(value))
    return sum(value / len(chosen) for value in chosen) if chosen else None  # divided first: no overflow to inf


def format_value(value: float | None) -> str:
    if value is None:
        return "no value"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}"


def layer_for(location: str | None, names: Sequence[str]) -> int | None:
    """Index of the row a finding's ``location`` names: the module itself, the module of a parameter
    (``fc.weight``), or the first layer inside a named parent module (``encoder`` → ``encoder.layers.0.linear1``)."""
    if location is None:
        return None
    exact = {name: index for index, name in enumerate(names)}
    candidate = location
    while True:
        if candidate in exact:
            return exact[candidate]
        if "." not in candidate:
            break
        candidate = candidate.rsplit(".", 1)[0]
    if location in ("weight", "bias") and "" in exact:  # a parameter of the root module itself
        return exact[""]
    return next((index for index, name in enumerate(names) if name.startswith(location + ".")), None)


def display_name(name: str) -> str:
    """The root module is named ``""`` by ``named_modules``; people need something to read."""
    return name or "(model)"
