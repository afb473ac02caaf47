"""What a "step" is: an optimizer step, or, in loops that update weights by hand, one backward call.

Tutorials and pytorch/examples' word_language_model update weights with ``p.data.add_(p.grad,
alpha=-lr)`` and never create a ``torch.optim`` optimizer, so no optimizer hook ever fires: the step
counter would stay at 0, gradients would never be checked and divergence could not be seen. Until an
optimizer is constructed or steps, every completed backward call ends a step here instead, and the
parameters are checked before the next model call (after the hand-written update).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from torchdoctor.nan.tensors import total_norm, worst_kind

OPTIMIZER = "optimizer"
BACKWARD = "backward"
HAND_UPDATE = "the hand-written update"  # the ``op`` of a parameter that turned non-finite outside torch.optim


class StepCounting:
    """Counts backward calls as steps for one ``Watcher`` while no optimizer is known."""

    def __init__(self, watcher: Any) -> None:
        self.watcher = watcher
        self.optimizer_seen = False
        self._params_pending = False  # a backward step ended: check the weights before the next model call

    @property
    def counting(self) -> str:
        """``result.step_counting``: "optimizer" or "backward" (shared with ``torchdoctor watch``)."""
        return OPTIMIZER if self.optimizer_seen else BACKWARD

    def wrap_optimizer_use(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``Optimizer.__init__`` / ``zero_grad``, ``GradScaler.scale``: an optimizer is in use, so its step()
        calls are the steps (a GradScaler's skipped steps and scaled grads are no hand-written update)."""

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.optimizer_seen = True
            return original(*args, **kwargs)

        return wrapper

    def optimizer_stepping(self) -> None:
        """An optimizer made before the run steps for the first time: from now on its steps count.

        The backward calls counted so far were micro-steps of the first optimizer step (gradient
        accumulation), so the counter and the per-step trajectories start again at 0.
        """
        if self.optimizer_seen:
            return
        self.optimizer_seen = True
        watcher = self.watcher
        if watcher.steps:
            watcher.steps = 0
            watcher.grad_norms.clear()  # step_pre records this step's norm next
            for losses in (watcher.losses, watcher.first_losses):  # keep the step's last loss, as accumulation does
                last = [(0, losses[-1][1])] if losses else []
                losses.clear()
                losses.extend(last)
        self._params_pending = False

    def after_backward(self) -> None:
        """One step ended: record the gradient norm (float64 when float32 overflows), check the grads."""
        watcher = self.watcher
        if self.optimizer_seen or watcher.stopped:
            return
        params = [p for p in self._params() if p.grad is not None]
        norm = total_norm([p.grad for p in params])
        watcher.grad_norms.append((watcher.steps, norm))
        if not math.isfinite(norm):
            bad = [p for p in params if worst_kind([p.grad], watcher.kinds)]
            if bad and not watcher._seen_already(watcher.steps):
                watcher.grads_nonfinite(None, bad)
        watcher.steps += 1
        watcher.end_step()
        self._params_pending = True
        if watcher.max_steps is not None and watcher.steps >= watcher.max_steps:
            watcher.stop("max-steps")

    def before_model_call(self) -> None:
        """The first model call after a backward step: did the hand-written update make a weight non-finite?"""
        if not self._params_pending or self.optimizer_seen:
            return
        self._params_pending = False
        watcher = self.watcher
        params = self._params()
        if math.isfinite(total_norm(params)):
            return
        step = watcher.steps - 1
        bad = [p for p in params if worst_kind([p], watcher.kinds)]
        if bad and not watcher._seen_already(step):
            watcher.params_nonfinite(None, bad, step)

    def _params(self) -> list[Any]:
        """The parameters of every model the run called, each once."""
        seen: dict[int, Any] = {}
        roots = ([self.watcher.model] if self.watcher.model is not None else []) + list(self.watcher.roots.values())
        for root in roots:
            for param in root.parameters():
                seen.setdefault(id(param), param)
        return list(seen.values())
