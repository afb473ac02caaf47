"""How far each optimizer step moved the weights (‖Δw‖/‖w‖), kept on the device and read only after a NaN.

A learning rate far too large (nanoGPT at 1e9) throws the weights orders of magnitude away in its first
update; the next forward or backward overflows, so only one finite loss comes before the NaN and no
divergence series ever forms (checks.py). What shows the cause is the update itself. A healthy step pays
one fused copy of each parameter's first ``SNAPSHOT_ELEMENTS`` before ``step()`` and one fused subtraction
after it; nothing is read back to the host (no sync) until a non-finite value has been found. The slice
estimates the whole, as watch's update ratios do (learning/stats.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.learning.stats import head

KEPT = 2  # the updates worth judging: the one right before the first NaN, and the one before it


@dataclass(frozen=True)
class UpdateJump:
    """One optimizer step's update, read back: overall ‖Δw‖/‖w‖ and the parameter that moved most."""

    step: int
    optimizer: str
    ratio: float  # over every parameter the step held: the hypotenuse of the Δw norms over that of the w norms
    param: str | None = None
    param_ratio: float | None = None
    param_group: int | None = None
    lr: float | None = None  # the learning rate of that parameter's group when it stepped

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer, "ratio": self.ratio, "param": self.param,
                "param_ratio": self.param_ratio, "param_group": self.param_group, "lr": self.lr}


@dataclass
class _Update:
    """One step in flight, then done: the parameters, where they sit, the weights before and the change."""

    step: int
    optimizer: str
    params: list[Any]
    places: list[tuple[int, int]]  # (param group, index in it): a name when no model holds the parameter
    lrs: list[Any]  # per param group, as it was at step() (a scheduler changes it right after)
    before: list[Any]
    delta: list[Any] = field(default_factory=list)


class UpdateLog:
    """Snapshots around ``optimizer.step()``; the last ``KEPT`` updates stay as device tensors."""

    def __init__(self) -> None:
        self.on = True
        self._open: dict[int, _Update] = {}  # id(optimizer) -> its step in flight
        self.recent: deque[_Update] = deque(maxlen=KEPT)

    def before_step(self, optimizer: Any, step: int) -> None:
        if not self.on:
            return
        import torch

        params, places = [], []
        for g, group in enumerate(optimizer.param_groups):
            for i, param in enumerate(group["params"]):
                if param.requires_grad and param.layout is torch.strided:
                    params.append(param)
                    places.append((g, i))
        if not params:
            return
        lrs = [_frozen(group.get("lr")) for group in optimizer.param_groups]
        # one fused copy (one kernel on CUDA) of every slice: the weights as they were before this step
        before = torch._foreach_mul([head(p) for p in params], 1)
        self._open[id(optimizer)] = _Update(step, type(optimizer).__name__, params, places, lrs, before)

    def after_step(self, optimizer: Any) -> None:
        update = self._open.pop(id(optimizer), None)
        if update is None or not self.on:
            return
        import torch

        try:
            update.delta = torch._foreach_sub([head(p) for p in update.params], update.before)
        except RuntimeError:  # a parameter replaced by one of another size inside step(): nothing to compare
            return
        self.recent.append(update)

    def stop(self) -> None:
        """After the first non-finite value: keep what came before it, measure nothing more."""
        self.on = False
        self._open.clear()

    def jumps(self, before_step: int, names: dict[int, str]) -> list[UpdateJump]:
        """The kept updates of steps before ``before_step``, read back (called once, after training)."""
        return [_read(update, names) for update in self.recent if update.step < before_step]


def _read(update: _Update, names: dict[int, str]) -> UpdateJump:
    moved, weights = _norms(update.delta), _norms(update.before)
    ratios = [m / w if w > 0 else math.nan for m, w in zip(moved, weights, strict=True)]
    overall = _ratio(math.hypot(*moved), math.hypot(*weights))
    # a zero-initialised bias moves infinitely far relative to itself at any lr: name a parameter that had a size
    judged = [i for i, r in enumerate(ratios) if not math.isnan(r)]
    if not judged:
        return UpdateJump(update.step, update.optimizer, overall)
    top = max(judged, key=lambda i: ratios[i])
    group, index = update.places[top]
    param = update.params[top]
    lr = update.lrs[group]
    return UpdateJump(update.step, update.optimizer, overall, names.get(id(param), f"param_groups[{group}]."
                      f"params[{index}]"), ratios[top], group, float(lr) if lr is not None else None)


def _norms(tensors: list[Any]) -> list[float]:
    """L2 norms in float64 (float32 on MPS, which has none): a blown-up update's squares overflow float32."""
    import torch

    return [float(torch.linalg.vector_norm(t.detach(), dtype=torch.float32 if t.device.type == "mps"
                                           else torch.float64)) for t in tensors]


def _ratio(moved: float, weights: float) -> float:
    if weights > 0:
        return moved / weights
    return math.inf if moved > 0 else 0.0


def _frozen(lr: Any) -> Any:
    """The lr as it is now: a tensor lr (capturable Adam) may be changed in place by a scheduler later."""
    return lr.detach().clone() if hasattr(lr, "detach") else lr
