"""``result.series``: the facts as the JSON contract shows them, downsampled to at most ``MAX_POINTS`` steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torchdoctor.learning.facts import WatchFacts

MAX_POINTS = 500


def result_series(facts: WatchFacts) -> dict[str, Any]:
    keep = evenly(len(facts.sample_steps), MAX_POINTS)
    losses = dict(facts.losses)
    steps = [facts.sample_steps[i] for i in keep]
    return {
        "step": steps,
        "loss": [_float(losses.get(step)) for step in steps],
        "lr": [_float(facts.lrs[i]) for i in keep],
        "layers": list(facts.layers),
        "grad_norm": [[_float(row[i]) for i in keep] for row in facts.grad_norm],
        "update_ratio": [[_float(row[i]) for i in keep] for row in facts.update_ratio],
        "dead_fraction": {k: _float(v) for k, v in facts.dead_fraction.items()},
        "saturated_fraction": {k: _float(v) for k, v in facts.saturated_fraction.items()},
    }


def evenly(count: int, limit: int) -> list[int]:
    """At most ``limit`` indices spread evenly over ``range(count)``, first and last included."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def _float(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def row_values(row: Sequence[float | None]) -> list[float]:
    return [v for v in row if v is not None and math.isfinite(v)]
