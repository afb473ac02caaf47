"""Per-step statistics as tensor ops: nothing here reads a value back to the host (no ``.item()``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# An activation unit is "pinned" when within this much of a bound of tanh (-1, 1) / sigmoid (0, 1).
SATURATION_MARGIN = 0.01
# Snapshots (weights before a step, gradients for grad-not-zeroed) keep at most this many elements of each
# tensor: the ratios of a slice estimate the whole, and memory stays bounded on large models.
SNAPSHOT_ELEMENTS = 1 << 16
# Loss-input shape checks (rows summing to 1, logsumexp of log-probabilities being 0).
PROB_TOLERANCE = 1e-3
LOGPROB_TOLERANCE = 1e-2
# grad-not-zeroed through clipping: fewer elements than this are a multiple of nearly anything (a scalar bias)
MIN_SCALED_ELEMENTS = 8


def head(tensor: Any) -> Any:
    """The first ``SNAPSHOT_ELEMENTS`` elements, flattened (a view of a contiguous tensor; detached)."""
    return tensor.detach().reshape(-1)[:SNAPSHOT_ELEMENTS]


def updates(before: Sequence[Any], after: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """What a step changed, and the new weights: ``before`` holds ``head`` snapshots, so both are measured on
    the same slice of each parameter (their norms' ratio is |Δw| / |w|)."""
    import torch

    now = [head(a) for a in after]
    return torch._foreach_sub(now, list(before)), now


def carried_over(grads: Sequence[Any], previous: Sequence[Any], added: Sequence[Any]) -> Any:
    """Per parameter: True when grad is the previous step's grad + what backward added since (never reset).

    Gradient clipping (``clip_grad_norm_``) or an AMP unscale rescales that sum in place, so a multiple of
    it counts too, unless the grad is just as well a multiple of what backward added alone (it was reset).
    """
    import torch

    # in float64: a diverging run's gradients (1e20 and more) overflow float32 norms to inf, and inf <= inf
    now, previous, added = ([_wide(t) for t in ts] for ts in ([head(g) for g in grads], previous, added))
    residual = torch._foreach_sub(torch._foreach_sub(now, added), previous)
    rest = torch.stack(torch._foreach_norm(residual))
    base = torch.stack(torch._foreach_norm(previous))
    # clipping and unscaling only shrink (0 < c <= 1); a tensor of a few elements is a multiple of anything
    scaled = (_multiple_of(now, torch._foreach_add(previous, added), at_most=1 + 1e-3)
              & ~_multiple_of(now, added) & torch.tensor([t.numel() >= MIN_SCALED_ELEMENTS for t in now]))
    return (base > 0) & base.isfinite() & rest.isfinite() & ((rest <= 1e-3 * base) | scaled)


def _wide(tensor: Any) -> Any:
    import torch

    return tensor.to(torch.float32 if tensor.device.type == "mps" else torch.float64)  # MPS has no float64


def _multiple_of(tensors: Sequence[Any], references: Sequence[Any], at_most: float = math.inf) -> Any:
    """Per pair: True when the tensor is c times its reference, 0 < c <= at_most (to 1e-3 of its norm)."""
    import torch

    fits = []
    for t, r in zip(tensors, references, strict=True):
        scale = (t * r).sum() / (r * r).sum().clamp_min(torch.finfo(r.dtype).tiny)
        close = torch.linalg.vector_norm(t - scale * r) <= 1e-3 * torch.linalg.vector_norm(t)
        fits.append((scale > 0) & (scale <= at_most) & close)
    return torch.stack(fits)


def unit_dims(output: Any) -> tuple[int, ...]:
    """The dims reduced over to get one value per unit: channels of a conv map (N, C, ...), else features."""
    if output.dim() >= 4:
        return (0, *range(2, output.dim()))
    return tuple(range(output.dim() - 1))


def active_units(output: Any) -> Any:
    """Per unit: True when any sample of this batch made it positive (a ReLU unit that is alive)."""
    alive = output.detach() > 0
    dims = unit_dims(output)
    return alive.any(dim=dims) if dims else alive


def free_units(output: Any, kind: str) -> Any:
    """Per unit: True when some sample kept it away from its bounds (not saturated)."""
    out = output.detach()
    if kind == "tanh":
        free = out.abs() < 1 - SATURATION_MARGIN
    else:
        free = (out > SATURATION_MARGIN) & (out < 1 - SATURATION_MARGIN)
    dims = unit_dims(output)
    return free.any(dim=dims) if dims else free


def class_dim(scores: Any) -> int:
    return 1 if scores.dim() >= 2 else 0


def is_probabilities(scores: Any) -> Any:
    """A 0-d bool tensor: every row non-negative and summing to 1 (a softmax output)."""
    x = scores.detach().float()
    return (x.min() >= 0) & ((x.sum(class_dim(x)) - 1).abs().max() <= PROB_TOLERANCE)


def is_log_probabilities(scores: Any) -> Any:
    """A 0-d bool tensor: every value <= 0 and every row's logsumexp 0 (a log_softmax output)."""
    x = scores.detach().float()
    return (x.max() <= LOGPROB_TOLERANCE) & (x.logsumexp(class_dim(x)).abs().max() <= LOGPROB_TOLERANCE)


def is_in_unit_interval(scores: Any) -> Any:
    """A 0-d bool tensor: every value strictly inside (0, 1) (a sigmoid output)."""
    x = scores.detach()
    return (x.min() > 0) & (x.max() < 1)


# grad_fn nodes that only reshape or copy: looked through when asking "what computed this tensor?"
_RESHAPES = ("View", "Reshape", "Squeeze", "Unsqueeze", "Permute", "Transpose", "Clone", "Flatten", "Unsafe")


def computed_by(tensor: Any, op: str, depth: int = 6) -> bool:
    """True when ``tensor`` came out of ``op`` (a grad_fn name such as "SigmoidBackward0"), reshapes aside."""
    node = getattr(tensor, "grad_fn", None)
    for _ in range(depth):
        if node is None:
            return False
        name = type(node).__name__
        if name == op:
            return True
        if not name.startswith(_RESHAPES):
            return False
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    return False


def label_counts(target: Any, classes: int) -> Any | None:
    """Counts of the integer class labels in ``target`` (ignored labels < 0 left out); None for soft labels."""
    import torch

    if target.dtype.is_floating_point or target.dtype == torch.bool:
        return None
    flat = target.detach().flatten().long()
    valid = ((flat >= 0) & (flat < classes)).float()
    # scatter_add, not bincount or a boolean mask: both need the host to learn a size (a GPU sync)
    counts = torch.zeros(classes, device=flat.device)
    return counts.scatter_add_(0, flat.clamp(0, classes - 1), valid)
