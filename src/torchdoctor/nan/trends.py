"""A loss that explodes without going non-finite: pure functions over a loss series (shared with ``watch``).

Geometric growth up to the first NaN is ``divergence`` (nan/checks.py). A run with a far too large
learning rate can instead jump to hundreds of times its starting loss and stay there, every value
finite (nanoGPT at lr 10: ~400x, gradient norm 4e15): nothing non-finite ever happens, so only the
loss series shows it. Thresholds are far from any healthy run: healthy losses fall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Point = tuple[int, float]

# The loss stays at least this many times its start. A loss starts near chance level (ln C for C classes);
# staying 20x above it is far past anything a healthy run does, while nanoGPT at lr 10 on a small config
# sits 25-150x above its start with a pre-clip gradient norm of 20-60 (and ~400x on the full model).
EXPLOSION_FACTOR = 20.0
START_STEPS = 3  # the start is the lowest of the first this many losses (a loss can explode at step 1 already)
STAYED_STEPS = 3  # ... and the last this many recorded losses all stay that high


@dataclass(frozen=True)
class Explosion:
    """Facts of an exploded loss: where it started, when it crossed the line for good, where it stayed."""

    start: float
    start_step: int
    crossed_step: int
    last: Point
    lowest_since: float  # the lowest loss since it crossed: the factor is a floor, not one spike

    @property
    def factor(self) -> float:
        return self.lowest_since / self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "start_step": self.start_step, "crossed_step": self.crossed_step,
                "last_step": self.last[0], "last_loss": self.last[1], "factor": self.factor,
                "threshold_factor": EXPLOSION_FACTOR}


def loss_explosion(head: Sequence[Point], tail: Sequence[Point], factor: float = EXPLOSION_FACTOR,
                   stayed: int = STAYED_STEPS) -> Explosion | None:
    """The loss rose to ``factor`` x its start and its last ``stayed`` values all stayed there, else None.

    ``head``: the run's first (step, loss) points; ``tail``: its latest ones (they may overlap). The start
    is the lowest of the first ``START_STEPS`` losses; one that is not positive (a loss that can be 0 or
    negative) is never judged.
    """
    first = [(step, value) for step, value in head if math.isfinite(value)][:START_STEPS]
    if len(first) < START_STEPS:
        return None
    start_step, start = min(first, key=lambda point: point[1])
    merged = dict(first)
    merged.update((step, value) for step, value in tail if math.isfinite(value))
    after = sorted((step, value) for step, value in merged.items() if step > start_step)
    if not start > 0:
        return None
    run = _trailing_run(after, factor * start)
    if len(run) < stayed:
        return None
    return Explosion(start, start_step, run[0][0], run[-1], min(value for _, value in run))


def _trailing_run(points: Sequence[Point], line: float) -> list[Point]:
    """The last points that all stay at or above ``line``."""
    run: list[Point] = []
    for point in reversed(points):
        if point[1] < line:
            break
        run.insert(0, point)
    return run


def describe_explosion(explosion: Explosion, grad_norm: float | None = None) -> str:
    """One sentence for the finding."""
    norm = f", gradient norm {grad_norm:.3g}" if grad_norm is not None and math.isfinite(grad_norm) else ""
    return (f"The loss jumped from {explosion.start:.4g} (step {explosion.start_step}) to at least "
            f"{explosion.factor:.3g}x that from step {explosion.crossed_step} and stayed there through step "
            f"{explosion.last[0]} "
            f"(last loss {explosion.last[1]:.4g}{norm}), without any value going non-finite: "
            "the step size is far too large for this model.")
