"""grad-not-zeroed, measured: is the gradient at a step the previous step's plus what backward added since?

A per-parameter tensor hook sums every gradient backward adds after a sampled step; at the next step
the gradient must equal that sum (it was reset) or that sum plus the previous gradient (carried over).
Numbers, not bookkeeping of zero_grad calls: ``p.grad = None``, ``zero_()`` and ``.data.zero_()`` all count,
and a GAN's discriminator gradients left by the generator's backward, cleared before its own, do not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from torchdoctor.learning import stats


@dataclass
class CarryCheck:
    """Armed after a sampled step: the grads it used and what backward adds to them until the next step."""

    step: int
    params: list[Any]
    previous: list[Any]
    added: list[Any]
    handles: list[Any]

    @classmethod
    def arm(cls, params: list[Any], step: int) -> CarryCheck | None:
        import torch

        params = [p for p in params if p.grad is not None and not p.grad.is_sparse]
        if not params:
            return None
        added = [torch.zeros_like(stats.head(p.grad)) for p in params]
        handles = [p.register_hook(functools.partial(_accumulate, total))
                   for p, total in zip(params, added, strict=True)]
        previous = [stats.head(p.grad).clone() for p in params]
        return cls(step, params, previous, added, handles)

    def finish(self) -> tuple[list[Any], Any] | None:
        """The parameters still holding a gradient and, per parameter, a bool tensor: carried over."""
        self.remove()
        kept = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not kept:
            return None
        flags = stats.carried_over([self.params[i].grad for i in kept], [self.previous[i] for i in kept],
                                   [self.added[i] for i in kept])
        return [self.params[i] for i in kept], flags

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _accumulate(total: Any, grad: Any) -> None:
    total.add_(stats.head(grad))
