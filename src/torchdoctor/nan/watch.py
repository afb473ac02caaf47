"""The cheap per-step watcher: callbacks of the global hooks, checking outputs, loss, grads and params."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from torchdoctor.nan.batches import BatchLog
from torchdoctor.nan.containers import find_container, unwrap
from torchdoctor.nan.counting import StepCounting
from torchdoctor.nan.frames import user_site
from torchdoctor.nan.locate import ModuleTracker, storage_of
from torchdoctor.nan.locator import Locator
from torchdoctor.nan.records import HuntStopped, NonFinite, RootCall
from torchdoctor.nan.replay import rng_state
from torchdoctor.nan.tensors import INF, NAN, checkable, leaves, output_sum, total_norm, worst_kind
from torchdoctor.nan.updates import UpdateLog
from torchdoctor.nan.window import LossWindow

TRAJECTORY = 64  # steps of loss / grad norm kept for the divergence judgement and the report
HEAD = 8  # the run's first losses, kept apart: a loss explosion is judged against where the run started
_KEPT_CALLS = 8  # training forwards since the last optimizer step kept for a backward replay


class Watcher:
    """Per-run state and hook callbacks; a normal step costs a few fused reductions, trouble calls the Locator."""

    def __init__(self, model: Any, *, kinds: tuple[str, ...], max_steps: int | None, keep_going: bool) -> None:
        self.model = model
        self.kinds = kinds
        self.max_steps = max_steps
        self.keep_going = keep_going
        self.steps = 0
        self.optimizer_steps: dict[int, list[Any]] = {}  # id(optimizer) -> [class name, step() calls done]
        self.first: NonFinite | None = None
        self.no_grad_first: NonFinite | None = None
        self.no_grad_count = 0
        self.bad_steps: set[int] = set()
        self.stopped: str | None = None
        self.losses: deque[tuple[int, Any]] = deque(maxlen=TRAJECTORY)
        self.first_losses: list[tuple[int, Any]] = []
        self.grad_norms: deque[tuple[int, float]] = deque(maxlen=TRAJECTORY)
        self.clipped_from: Any = None  # this step's norm before clip_grad_norm_ (its own return value)
        self.clip_seen = False  # some recorded norm is clip_grad_norm_'s (result.grad_norm_source)
        self.amp = AmpCount()
        self.updates = UpdateLog()  # ‖Δw‖/‖w‖ of the last steps: a too-large lr before a NaN
        self.roots: dict[int, Any] = {}
        self.placed: dict[int, tuple[Any, str]] = {}  # id(root) -> (outermost module holding it, its path there)
        self.batches = BatchLog()
        self.window = LossWindow(kinds)
        self.calls: deque[RootCall] = deque()
        self.suspects: list[RootCall] = []  # this step's training forwards whose output held inf
        self.tracker: ModuleTracker | None = None  # set while a replay runs: hooks then only name modules
        self._depth = 0
        self._root: RootCall | None = None
        self._in_backward = 0
        self._thread = threading.get_ident()
        self._tensor_type: type = type(None)  # torch.Tensor once a root call begins (torch is imported lazily)
        self._compiling: Callable[[], bool] = bool
        self.locator = Locator(self)
        self.counting = StepCounting(self)  # optimizer steps, or backward calls in hand-updated loops

    # --- global module hooks ----------------------------------------------------------------

    def forward_pre(self, module: Any, args: tuple) -> None:
        if self.tracker is not None:
            self.tracker.enter(module)
            return
        if threading.get_ident() != self._thread:  # DataParallel replicas: not the training loop's call
            return
        depth = self._depth
        self._depth = depth + 1
        if depth or self._in_backward or self.stopped or not self._is_root(module):
            return
        self.counting.before_model_call()
        self.window.close()  # this model call is not part of the loss
        self._root = self._begin(module)

    def forward_post(self, module: Any, args: tuple, *rest: Any) -> None:
        # ``rest`` is (kwargs, output); torch calls always_call hooks as (module, args, None) after a raise.
        if self.tracker is not None:
            self.tracker.exit(module)
            return
        if threading.get_ident() != self._thread:
            return
        self._depth = max(self._depth - 1, 0)
        call = self._root
        if call is None:
            return
        if self._depth or call.module is not module:
            if len(rest) == 2 and call.module is not module:
                self._note_output(call, module, rest[1])
            return
        self._root = None
        if len(rest) == 2:
            self.after_root(call, args, *rest)
        else:
            self.window.resume()

    def _note_output(self, call: RootCall, module: Any, output: Any) -> None:
        """Queue the sum of a submodule's output during a root call: one reduction, never read back unless
        the root's output turns non-finite (then the first non-finite sum names the module, when the exact
        replay does not reproduce the fault). A container returning its last child's tensor adds nothing.
        """
        if self.first is not None or self._compiling():  # later events are only counted, never localised
            return
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, self._tensor_type) and call.new_output(tensor) and checkable(tensor):
                try:
                    call.seen_outputs.append((output_sum(tensor), module))
                except Exception:  # noqa: BLE001 - a tensor subclass without sum(dtype=): left out, never fatal
                    continue

    def _is_root(self, module: Any) -> bool:
        if self.model is not None:
            return module is self.model
        # A parameterless module applied to the output (nn.CrossEntropyLoss) is part of the loss.
        return not (self.window.on and next(module.parameters(), None) is None)

    def _begin(self, module: Any) -> RootCall:
        import torch

        self._tensor_type = torch.Tensor
        self._compiling = torch.compiler.is_compiling  # inside torch.compile's tracing: add no op to its graph
        if id(module) not in self.roots:
            self.roots[id(module)] = module
            self.placed[id(module)] = self._place(module)
        return RootCall(
            module, self.steps, rng_state(), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            _autocast_state(torch), site=user_site(),
        )

    def _place(self, module: Any) -> tuple[Any, str]:
        if self.model is not None:  # the user named the model to watch: names start there
            return unwrap(module), ""
        known = [container for container, _ in self.placed.values()]
        return find_container(module, known, sys._getframe())

    def place_of(self, module: Any) -> tuple[Any, str]:
        """(The outermost module holding ``module``, a root called; its path there): names are paths from it."""
        return self.placed.get(id(module)) or (unwrap(module), "")

    def container_of(self, module: Any) -> Any:
        return self.place_of(module)[0]

    def containers(self) -> list[Any]:
        """Every model the names start from, the one given to ``nan_hunt(model)`` first."""
        given = [unwrap(self.model)] if self.model is not None else []
        return list(dict.fromkeys(given + [container for container, _ in self.placed.values()]))

    def after_root(self, call: RootCall, args: tuple, kwargs: dict, result: Any) -> None:
        call.args, call.kwargs = args, kwargs
        outputs = leaves(result)
        kind = worst_kind([t for t in outputs if checkable(t)], self.kinds)
        if kind is None:
            call.seen_outputs.clear()  # only a non-finite output needs to know which submodule made it
            call.last_output = None
        training = call.grad_enabled and not call.inference
        if kind == NAN:
            self.forward_nonfinite(call, kind)
        elif kind == INF and training and len(self.suspects) < _KEPT_CALLS:
            # An inf may be on purpose (a -inf mask in the logits): judged only if the loss turns non-finite.
            self.suspects.append(call)
        if training and self._remember(call, outputs):
            if self.first is None:
                self.window.open()
        else:
            self.window.resume()

    def _remember(self, call: RootCall, outputs: list[Any]) -> bool:
        """Hook the outputs to catch dL/d(output) for a backward replay; False if nothing needs a grad."""
        call.out_grads = [None] * len(outputs)
        for index, tensor in enumerate(outputs):
            if tensor.requires_grad:
                call.hooks.append(tensor.register_hook(functools.partial(call.capture_grad, index)))
        if not call.hooks:
            return False
        call.output_storages = frozenset(storage_of(t) for t in outputs)
        if len(self.calls) == _KEPT_CALLS:
            self.calls.popleft().release()
        self.calls.append(call)
        return True

    # --- backward -----------------------------------------------------------------------------

    def wrap_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        # Tensor.backward calls torch.autograd.backward, so this one patch sees both.
        @functools.wraps(original)
        def backward(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread:
                return original(*args, **kwargs)
            self.before_backward(args[0] if args else kwargs.get("tensors"))
            self._in_backward += 1
            try:
                result = original(*args, **kwargs)
            finally:
                self._in_backward -= 1
                self.window.end_backward()
            if not self._in_backward:
                self.counting.after_backward()
            return result

        return backward

    def before_backward(self, tensors: Any) -> None:
        import torch

        self.window.close()
        if self.stopped:
            return
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else [
            t for t in (tensors or ()) if isinstance(t, torch.Tensor)
        ]
        if len(tensors) == 1 and tensors[0].numel() == 1:
            self._note_loss(tensors[0].detach())
        bad = [t for t in tensors if worst_kind([t], self.kinds)]
        if bad and not self._seen_already(self.steps):
            self.loss_nonfinite(bad[0], worst_kind([bad[0]], self.kinds) or NAN)
        elif self.first is None:
            self.window.watch_backward()

    def _note_loss(self, loss: Any) -> None:
        entry = (self.steps, loss)
        if self.losses and self.losses[-1][0] == self.steps:  # accumulation: keep the step's last
            self.losses[-1] = entry
        else:
            self.losses.append(entry)
        if self.first_losses and self.first_losses[-1][0] == self.steps:
            self.first_losses[-1] = entry
        elif len(self.first_losses) < HEAD:
            self.first_losses.append(entry)

    # --- optimizer ----------------------------------------------------------------------------

    def step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        if threading.get_ident() != self._thread:
            return None
        self.counting.optimizer_stepping()
        self.optimizer_steps.setdefault(id(optimizer), [type(optimizer).__name__, 0])
        self.window.close()
        if self.stopped:
            return None
        self.updates.before_step(optimizer, self.steps)
        closure = closure_of(args, kwargs)
        if callable(closure):  # Lightning, LBFGS: forward and backward run inside step(); judge after them
            return with_closure(args, kwargs, self._checking_closure(optimizer, closure))
        self.check_grads(optimizer)
        return None

    def _checking_closure(self, optimizer: Any, closure: Callable[[], Any]) -> Callable[[], Any]:
        @functools.wraps(closure)
        def checked() -> Any:
            loss = closure()
            if not self.stopped:
                self.check_grads(optimizer)
            return loss

        return checked

    def check_grads(self, optimizer: Any) -> None:
        """Record the gradient norm; name the producer of a non-finite gradient (once per step)."""
        params = _params_with_grads(optimizer)
        norm = total_norm([p.grad for p in params])
        self.grad_norms.append((self.steps, self._before_clipping(norm)))
        if math.isfinite(norm):
            return
        bad = [p for p in params if worst_kind([p.grad], self.kinds)]
        if bad and not self._seen_already(self.steps):
            self.grads_nonfinite(optimizer, bad)

    def wrap_clip(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``clip_grad_norm_``: keep the norm it measured, so the trajectory shows the norm before clipping.

        nanoGPT clips to 1.0 before every step: the norm at step() is then always <= 1 and would hide a run
        whose true gradient norm is 4e15.
        """

        @functools.wraps(original)
        def clip(*args: Any, **kwargs: Any) -> Any:
            total = original(*args, **kwargs)
            if threading.get_ident() == self._thread:
                self.clipped_from = total
            return total

        return clip

    def _before_clipping(self, norm: float) -> float:
        """The step's norm before clipping when clip_grad_norm_ measured a finite one, else ``norm``."""
        clipped, self.clipped_from = self.clipped_from, None
        try:
            value = float(clipped) if clipped is not None else norm
        except (TypeError, ValueError, RuntimeError):
            return norm
        if not math.isfinite(value):
            return norm
        self.clip_seen = clipped is not None
        return value

    def step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if threading.get_ident() != self._thread or self.stopped:
            return
        step = self.steps
        self.steps += 1
        self.optimizer_steps.setdefault(id(optimizer), [type(optimizer).__name__, 0])[1] += 1
        self.end_step()
        self.updates.after_step(optimizer)
        params = _params_with_grads(optimizer)
        if not math.isfinite(total_norm(params)):
            bad = [p for p in params if worst_kind([p], self.kinds)]
            if bad and not self._seen_already(step):
                self.params_nonfinite(optimizer, bad, step)
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.stop("max-steps")

    def wrap_scaler_update(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
            before = scaler.get_scale() if scaler.is_enabled() else None
            result = original(scaler, *args, **kwargs)
            if before is not None and threading.get_ident() == self._thread:
                self.amp.count(skipped=scaler.get_scale() < before)  # GradScaler backs off only on a skip
                self.end_step()
            return result

        return update

    def end_step(self) -> None:
        for call in self.calls:
            call.release()
        self.calls.clear()
        self.suspects.clear()
        self.window.backward_first = None  # e.g. GradScaler's expected infs in a skipped step

    # --- events -------------------------------------------------------------------------------

    def _seen_already(self, step: int) -> bool:
        """After the first event only count steps: localising again would cost without telling more."""
        if self.first is None:
            return False
        self.bad_steps.add(step)
        return True

    def report_event(self, event: NonFinite) -> None:
        if event.no_grad:  # a NaN computed for logging: worth a warning, not worth stopping the run
            self.no_grad_count += 1
            self.no_grad_first = self.no_grad_first or event
            return
        self.first = dataclasses.replace(event, optimizer_steps=tuple(
            (name, count) for name, count in self.optimizer_steps.values()))
        self.bad_steps.add(event.step)
        self.window.forget()
        self.updates.stop()
        if not self.keep_going:
            self.stop("first-nonfinite")

    def stop(self, reason: str) -> None:
        self.stopped = reason
        raise HuntStopped(reason)

    def close(self) -> None:
        """Leave nothing of ours behind: the window's mode and every tensor hook."""
        self.window.forget()
        self.end_step()
        self.tracker = None

    def release(self) -> None:
        """Forget every reference to the user's objects (models, batches, loss tensors) once reported."""
        self.model = self._root = None
        self.roots.clear()
        self.placed.clear()
        self.losses.clear()
        self.first_losses.clear()
        self.batches = BatchLog()
        self.updates = UpdateLog()

    # --- localisation: done by the Locator, only when something went wrong -----------------------

    def forward_nonfinite(self, call: RootCall, kind: str) -> None:
        no_grad = not call.grad_enabled or call.inference
        if no_grad and self.no_grad_first is not None:
            self.no_grad_count += 1
        elif no_grad or not self._seen_already(call.step):
            self._report(self.locator.guarded(self.locator.forward, call, kind))

    def loss_nonfinite(self, loss: Any, kind: str) -> None:
        self._report(self.locator.guarded(self.locator.loss, loss, kind))

    def grads_nonfinite(self, optimizer: Any, bad: list[Any]) -> None:
        self._report(self.locator.guarded(self.locator.backward, optimizer, bad))

    def params_nonfinite(self, optimizer: Any, bad: list[Any], step: int) -> None:
        self._report(self.locator.optimizer(optimizer, bad, step))

    def _report(self, event: NonFinite | None) -> None:
        if event is not None:
            self.report_event(event)

    @property
    def later_nonfinite_steps(self) -> int:
        return sum(1 for step in self.bad_steps if self.first is not None and step > self.first.step)


class AmpCount:
    """GradScaler steps and skips (a skip halves the scale), and the length of the current run of skips."""

    def __init__(self) -> None:
        self.steps = 0
        self.skipped = 0
        self.trailing_skips = 0

    def count(self, *, skipped: bool) -> None:
        self.steps += 1
        self.skipped += skipped
        self.trailing_skips = self.trailing_skips + 1 if skipped else 0


def closure_of(args: tuple, kwargs: dict) -> Any:
    """The closure given to ``step()``: a step pre-hook's ``args`` start with the optimizer itself."""
    return kwargs.get("closure", args[1] if len(args) > 1 else None)


def with_closure(args: tuple, kwargs: dict, closure: Callable[[], Any]) -> tuple[tuple, dict]:
    """``step()``'s arguments with the closure replaced (an optimizer step pre-hook may return new ones)."""
    if "closure" in kwargs or len(args) < 2:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs


def _params_with_grads(optimizer: Any) -> list[Any]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _autocast_state(torch: Any) -> list[tuple[str, bool, Any]]:
    devices = ["cpu", "cuda"] if torch.cuda.is_initialized() else ["cpu"]
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in devices]

