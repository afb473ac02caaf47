"""How far each optimizer step moved the weights (‖Δw‖/‖w‖), kept on the device and read only after a NaN.

A learning rate far too large (nanoGPT at 1e9) throws the weights orders of magnitude away in its first
update; the next forward or backward overflows, so only one finite loss comes before the NaN and no
divergence series ever forms (checks.py). What shows the cause is the update itself. A healthy step pays
one fused copy of ``SAMPLE`` elements of each parameter before ``step()`` and one fused subtraction after
it; nothing is read back to the host (no sync) until a non-finite value has been found. The sample
estimates the whole, as watch's slices do for its update ratios (learning/stats.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

KEPT = 2  # the updates worth judging: the one right before the first NaN, and the one before it
# Elements of each parameter compared, spread evenly over it: the ratio judged is >= 1 when it matters and
# ~1e-3 when healthy, so a sample estimates it well enough, while the whole of nanoGPT's embedding would be
# a copy of 2.5M floats per step. Spread, not the first ones: an embedding's first rows are a few tokens
# that may not be in the batch at all.
SAMPLE = 4096


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
    before: list[Any]  # the samples as they were: one flat tensor (see ``_copy``) or one per parameter
    views: list[Any]  # the samples of the parameters themselves (copies when a parameter is not contiguous)
    sizes: list[int]  # elements in each sample: where the flat tensor splits
    delta: list[Any] = field(default_factory=list)  # packed as ``before``


class UpdateLog:
    """Snapshots around ``optimizer.step()``; the last ``KEPT`` updates stay as device tensors."""

    def __init__(self) -> None:
        self.on = True
        self._open: dict[int, _Update] = {}  # id(optimizer) -> its step in flight
        self.recent: deque[_Update] = deque(maxlen=KEPT)
        # id(optimizer) -> (what the samples were taken of, the samples, their sizes): a view of a contiguous
        # parameter follows its in-place updates, so taking the samples again each step (three ops per
        # parameter, most of this log's cost) is needed only when the parameters or their storage change
        self._views: dict[int, tuple[tuple[tuple[int, int], ...], list[Any], list[int]]] = {}

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
        views, sizes = self._slices(optimizer, params)
        self._open[id(optimizer)] = _Update(step, type(optimizer).__name__, params, places, lrs, _copy(views),
                                            views, sizes)

    def _slices(self, optimizer: Any, params: list[Any]) -> tuple[list[Any], list[int]]:
        """``sample`` of each parameter and its size, reused while the parameters and their storage stay."""
        key = tuple((id(p), p.data_ptr()) for p in params)
        cached = self._views.get(id(optimizer))
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        views = [sample(p) for p in params]
        sizes = [v.numel() for v in views]
        if all(p.is_contiguous() for p in params):  # else ``sample`` copied: take the samples again next step
            self._views[id(optimizer)] = (key, views, sizes)
        return views, sizes

    def after_step(self, optimizer: Any) -> None:
        update = self._open.pop(id(optimizer), None)
        if update is None or not self.on:
            return
        import torch

        live = update.views is self._views.get(id(optimizer), (None, None))[1]  # views, not copies
        now = update.views if live else [sample(p) for p in update.params]
        try:
            update.delta = _copy(now)
            torch._foreach_sub_(update.delta, update.before)
        except RuntimeError:  # a parameter replaced by one of another size inside step(): nothing to compare
            return
        update.views = []
        self.recent.append(update)

    def stop(self) -> None:
        """After the first non-finite value: keep what came before it, measure nothing more."""
        self.on = False
        self._open.clear()
        self._views.clear()

    def jumps(self, before_step: int, names: dict[int, str]) -> list[UpdateJump]:
        """The kept updates of steps before ``before_step``, read back (called once, after training)."""
        return [_read(update, names) for update in self.recent if update.step < before_step]


def sample(tensor: Any) -> Any:
    """At most ``SAMPLE`` elements spread over the flattened tensor (a view when it is contiguous; detached)."""
    flat = tensor.detach().reshape(-1)
    return flat[:: -(-flat.numel() // SAMPLE) or 1]


def _copy(views: list[Any]) -> list[Any]:
    """The samples copied into one flat tensor (one op, one kernel on CUDA, whatever the number of
    parameters), or one copy each when they differ in device or dtype."""
    import torch

    kinds = {(v.device, v.dtype) for v in views}
    return [torch.cat(views)] if len(kinds) == 1 else [v.clone() for v in views]


def _unpacked(packed: list[Any], sizes: list[int]) -> list[Any]:
    """One tensor per parameter again."""
    return list(packed[0].split(sizes)) if len(packed) == 1 and len(sizes) > 1 else packed


def _read(update: _Update, names: dict[int, str]) -> UpdateJump:
    moved, weights = (_norms(_unpacked(t, update.sizes)) for t in (update.delta, update.before))
    ratios = [m / w if w > 0 else math.nan for m, w in zip(moved, weights, strict=True)]
    overall = _ratio(math.hypot(*moved), math.hypot(*weights))
    # a zero-initialised bias moves infinitely far relative to itself at any lr: name a parameter that had a size
    judged = [i for i, r in enumerate(ratios) if not math.isnan(r)]
    if not judged:
        return UpdateJump(update.step, update.optimizer, overall)
    top = max(judged, key=lambda i: ratios[i])
    group, index = update.places[top]
    param = update.params[top]
    name = names.get(id(param), f"param_groups[{group}].params[{index}]")
    return UpdateJump(update.step, update.optimizer, overall, name, ratios[top], group, _number(update.lrs[group]))


def _number(lr: Any) -> float | None:
    """The lr as a float; None when a custom optimizer keeps something else under "lr"."""
    try:
        return float(lr)
    except (TypeError, ValueError, RuntimeError):
        return None


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
