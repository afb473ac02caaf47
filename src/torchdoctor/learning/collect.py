"""The collector: hook callbacks that record per-step statistics of the user's own training.

Steps are optimizer steps; a run without any optimizer counts backward calls instead ("without an
optimizer, a step is a backward call"). Every ``every``-th step is *sampled*: its layers' gradient norms,
update ratios, activations and loss inputs are computed with tensor ops, queued, and read back to the
host together when the step ends. Losses of every step are kept as tensors and read back with them.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.learning import norms, stats
from torchdoctor.learning.activations import Activations, FunctionalSite, LossInput
from torchdoctor.learning.carry import CarryCheck
from torchdoctor.learning.names import Names
from torchdoctor.nan.watch import closure_of, with_closure


@dataclass
class Sample:
    """One sampled step, read back: lr and per-layer gradient norm and update ratio."""

    lr: float | None = None
    grad_norm: dict[Any, float] = field(default_factory=dict)
    update_ratio: dict[Any, float] = field(default_factory=dict)


@dataclass
class Layered:
    """Parameters grouped by layer for one fused reduction: ``index[i]`` = position of param i's layer."""

    params: list[Any]
    layers: list[Any]
    index: list[int]


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    """A failure of ours must never break the user's training: stop watching, say so once on stderr."""

    @functools.wraps(callback)
    def guarded(self: Collector, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the training goes on without us
            self.fail(exc)
            return None

    return guarded


class Collector:
    """Per-run state of ``watch``; the callbacks return at once on steps that are not sampled."""

    def __init__(self, names: Names, *, every: int, max_steps: int | None,
                 on_done: Callable[[], None] = lambda: None) -> None:
        self.names = names
        self.every = every
        self.max_steps = max_steps
        self.on_done = on_done
        self.mode = "backward"  # until the first optimizer step
        self.step = 0
        self.opt_steps = 0
        self.backwards = 0
        self.done = False
        self.acts = Activations()
        self.optimizers: dict[int, Any] = {}
        self.samples: dict[int, Sample] = {}
        self.losses: list[tuple[int, int, float]] = []  # (optimizer steps, backward calls, loss)
        self.carried: list[tuple[int, list[Any]]] = []  # (step, params whose grad was carried over)
        self.got_grad: set[int] = set()  # ids of optimizer params seen with a gradient at a step
        self.grad_params: dict[int, tuple[Any, int, int]] = {}  # id -> (param with a grad, first, last step)
        self._losses: list[tuple[int, int, Any]] = []
        self._pending: list[tuple[Callable[[list[float]], None], Any]] = []
        self._snapshot: tuple[int, Layered, list[Any]] | None = None
        self._carry: dict[int, CarryCheck] = {}
        self._thread = threading.get_ident()
        self.failure: str | None = None

    @property
    def sampling(self) -> bool:
        return not self.done and self.sampled(self.step)

    def sampled(self, step: int) -> bool:
        """One step in ``every``; with several optimizers (a GAN) one round of their steps, so none is skipped."""
        rounds = step // max(len(self.optimizers), 1) if self.mode == "optimizer" else step
        return rounds % self.every == 0

    def _ours(self) -> bool:
        return not self.done and threading.get_ident() == self._thread

    # --- forward ---------------------------------------------------------------------------------

    @_guarded
    def forward_post(self, module: Any, args: Any, output: Any) -> None:
        if not self.sampling or threading.get_ident() != self._thread:
            return
        import torch

        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return
        named = self.names.module(module)
        if named is None:
            return
        self.names.saw_forward(module)
        if isinstance(output, torch.Tensor):
            self.acts.produced(module, output)
            kind = _activation_kind(module)
            if kind is not None and output.is_floating_point() and output.numel():
                self.acts.unit_stats(module, kind, output)
        if self.names.is_root(module):  # the root called, not its container (training_step calls self.body)
            for tensor in _tensors_of(output):  # a tuple or dict too: a VAE returns (reconstruction, mu, logvar)
                self.acts.model_output(tensor)
        if isinstance(module, _mode_types()) and not module.training:
            self.acts.eval_mode(module, named[0])

    def wrap_loss(self, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(original)
            def loss(*args: Any, **kwargs: Any) -> Any:
                if self.sampling and threading.get_ident() == self._thread:
                    scores = args[0] if args else kwargs.get("input")
                    target = args[1] if len(args) > 1 else kwargs.get("target")
                    if getattr(scores, "requires_grad", False):
                        self._loss_input(kind, scores, target)
                return original(*args, **kwargs)

            return loss

        return make

    def wrap_activation(self, kind: str, spelling: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``F.relu(x)``, ``torch.tanh(x)``, ``x.sigmoid()`` ... in a forward: real code (pytorch/examples' mnist)
        has no nn.ReLU for the module hook to see. Outside sampled steps the wrapper only tests a flag."""

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(original)
            def activation(*args: Any, **kwargs: Any) -> Any:
                output = original(*args, **kwargs)
                if self.sampling and threading.get_ident() == self._thread:
                    tensor = args[0] if args else kwargs.get("input")
                    self._functional_activation(kind, spelling, sys._getframe(1), tensor, output)
                return output

            return activation

        return make

    @_guarded
    def _functional_activation(self, kind: str, spelling: str, caller: Any, tensor: Any, output: Any) -> None:
        import torch

        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return
        code = caller.f_code  # a method's first argument is its module, whatever it is called
        module = caller.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if not isinstance(module, torch.nn.Module) or _is_activation_module(module):
            return  # not in a module (F.relu's own call of torch.relu), or nn.Tanh's forward: its hook sees that
        if self.names.module(module) is None or self.acts.is_model_output(tensor):
            return  # not the watched model's, or torch.sigmoid(model(x)) in a training_step: the loss's business
        if output.is_floating_point() and output.numel():
            self.acts.functional(FunctionalSite(module, spelling, caller.f_lineno), kind, output)

    @_guarded
    def _loss_input(self, kind: str, scores: Any, target: Any) -> None:
        flag = self.acts.loss_flag(kind, scores, target)
        if flag is None:
            return
        record = self.acts.loss_inputs.setdefault(kind, LossInput())
        producer = self.acts.producer(scores)
        record.steps.append(self.step)
        name = self.names.display(producer) if producer is not None else None
        record.producers.append(name)
        if name is not None:
            record.producer_types.setdefault(name, type(producer).__name__)
        self._queue(lambda values: record.flags.append(bool(values[0])), flag.reshape(1))

    # --- backward --------------------------------------------------------------------------------

    def wrap_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def backward(*args: Any, **kwargs: Any) -> Any:
            if not self._ours():
                return original(*args, **kwargs)
            self.before_backward(args[0] if args else kwargs.get("tensors"))
            result = original(*args, **kwargs)
            self.after_backward()
            return result

        return backward

    @_guarded
    def before_backward(self, tensors: Any) -> None:
        import torch

        self.acts.end_step()  # the loss is computed: the producers are no longer needed
        if isinstance(tensors, torch.Tensor) and tensors.numel() == 1:
            self._losses.append((self.opt_steps, self.backwards, tensors.detach().reshape(())))
        if self.mode == "backward" and self._snapshot is not None:
            self._measure_update()
            self.flush()

    @_guarded
    def after_backward(self) -> None:
        step = self.backwards
        self.backwards += 1
        if self.mode != "backward":
            return
        check = self._carry.pop("backward", None)
        if check is not None:  # no optimizer: kept only where the weights moved in between (gather_facts)
            self._finish_carry_check(check)
        if self.sampled(step):
            params = [p for p in self.names.param_objects if p.requires_grad and p.grad is not None]
            self.samples[step] = Sample()
            self._measure_grads(step, params)
            self._arm_carry_check("backward", params, step)
        self.step = self.backwards
        self._check_limit()

    # --- optimizer -------------------------------------------------------------------------------

    @_guarded
    def step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> tuple[tuple, dict] | None:
        if not self._ours():
            return None
        if self.mode == "backward":
            self._start_counting_optimizer_steps()
        self.optimizers.setdefault(id(optimizer), optimizer)
        closure = closure_of(args, kwargs)
        if callable(closure):
            # Lightning and LBFGS: zero_grad, forward and backward run inside step(), in the closure; the
            # gradients this step uses exist only once it has run (before it, they are the last step's).
            return with_closure(args, kwargs, self._measuring_closure(optimizer, closure))
        self._before_update(optimizer)
        return None

    def _measuring_closure(self, optimizer: Any, closure: Callable[[], Any]) -> Callable[[], Any]:
        measured = False

        @functools.wraps(closure)
        def measuring() -> Any:
            nonlocal measured
            loss = closure()
            if not measured:  # LBFGS calls it several times per step: the first call's gradients are the step's
                measured = True
                self._before_update(optimizer)
            return loss

        return measuring

    @_guarded  # also called from the user's closure, outside step_pre's guard
    def _before_update(self, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.got_grad.update(id(p) for p in params if p.grad is not None)
        check = self._carry.pop(id(optimizer), None)
        if check is not None:
            self._finish_carry_check(check)
        if self.sampling:
            self.acts.commit_eval_mode(self.step)
            self._note_gradients()
            self.samples[self.step] = Sample(lr=_lr(optimizer))
            self._measure_grads(self.step, [p for p in params if p.grad is not None])

    @_guarded
    def step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._ours():
            return
        step = self.step
        if self._snapshot is not None and self._snapshot[0] == step:
            self._measure_update()
            self._arm_carry_check(id(optimizer), [p for g in optimizer.param_groups for p in g["params"]], step)
        self.opt_steps += 1
        self.step = self.opt_steps
        if self.sampled(step):
            self.flush()
        self.acts.forget_step()
        self._check_limit()

    def _start_counting_optimizer_steps(self) -> None:
        """The first optimizer step: what the backward calls measured so far was not a step; start over."""
        self.mode = "optimizer"
        self.step = self.opt_steps
        self.samples.clear()
        self._snapshot = None
        self._pending.clear()  # nothing but backward-mode measurements is queued before the first step

    # --- measurements ----------------------------------------------------------------------------

    def _layered(self, params: list[Any]) -> Layered | None:
        named = [(p, self.names.layer_of(p)) for p in params if not (p.grad is not None and p.grad.is_sparse)]
        named = [(p, found[0]) for p, found in named if found is not None]
        if not named:
            return None
        layers = list(dict.fromkeys(layer for _, layer in named))
        position = {layer: i for i, layer in enumerate(layers)}
        index = [position[layer] for _, layer in named]
        return Layered([p for p, _ in named], layers, index)

    def _measure_grads(self, step: int, params: list[Any]) -> None:
        layered = self._layered(params)
        if layered is None:
            return
        # held until the step is read back (in step_post; without an optimizer, at the next backward), in case
        # a norm came out inf and must be measured again
        grads = norms.measure([p.grad for p in layered.params])
        sample = self.samples[step]

        def record(values: list[float]) -> None:
            per_layer = norms.per_layer(norms.rescued(grads, values), layered.index, len(layered.layers))
            sample.grad_norm.update(zip(layered.layers, per_layer, strict=True))

        self._queue(record, grads.values)
        self._snapshot = (step, layered, [stats.head(p).clone() for p in layered.params])

    def _measure_update(self) -> None:
        import torch

        step, layered, before = self._snapshot
        self._snapshot = None
        changed, weights = (norms.measure(ts) for ts in stats.updates(before, layered.params))
        sample = self.samples[step]

        def record(values: list[float]) -> None:
            count = len(changed.tensors)
            delta, now = (norms.per_layer(norms.rescued(n, part), layered.index, len(layered.layers))
                          for n, part in ((changed, values[:count]), (weights, values[count:])))
            sample.update_ratio.update(zip(layered.layers, norms.ratios(delta, now), strict=True))

        self._queue(record, torch.cat([changed.values, weights.values]))

    def _note_gradients(self) -> None:
        """Remember every model parameter holding a gradient (judged against all optimizers at the end)."""
        for param in self.names.param_objects:
            if param.requires_grad and param.grad is not None:
                first = self.grad_params.get(id(param), (param, self.step, self.step))[1]
                self.grad_params[id(param)] = (param, first, self.step)

    def _arm_carry_check(self, key: Any, params: list[Any], step: int) -> None:
        check = CarryCheck.arm(params, step)
        if check is not None:
            self._carry[key] = check

    def _finish_carry_check(self, check: CarryCheck) -> None:
        finished = check.finish()
        if finished is None:
            return
        params, flags = finished

        def record(values: list[float]) -> None:
            carried = [p for p, flag in zip(params, values, strict=True) if flag]
            if carried:
                self.carried.append((check.step + 1, carried))

        self._queue(record, flags)

    # --- reading back ----------------------------------------------------------------------------

    def _queue(self, consume: Callable[[list[float]], None], values: Any) -> None:
        self._pending.append((consume, values))

    def flush(self) -> None:
        """Read every queued value and loss back to the host in one transfer."""
        import torch

        pending, self._pending = self._pending, []
        losses, self._losses = self._losses, []
        parts = [values.detach().float().reshape(-1) for _, values in pending]
        parts += [loss.float().reshape(1) for *_, loss in losses]
        if not parts:
            return
        device = parts[0].device
        flat = torch.cat([part.to(device) for part in parts]).tolist()
        at = 0
        for (consume, _values), part in zip(pending, parts, strict=False):
            consume(flat[at:at + part.numel()])
            at += part.numel()
        values = flat[at:]
        self.losses.extend((opt, bwd, value) for (opt, bwd, _), value in zip(losses, values, strict=False))

    def _check_limit(self) -> None:
        if self.max_steps is not None and self.step >= self.max_steps:
            self.close()
            self.on_done()

    def fail(self, exc: BaseException) -> None:
        import sys

        self.failure = f"{type(exc).__name__}: {exc}"
        print(f"torchdoctor watch: stopped watching at step {self.step}: {self.failure}", file=sys.stderr)
        for check in self._carry.values():
            check.remove()
        self._carry.clear()
        self._pending.clear()
        self._snapshot = None
        self.done = True

    def close(self) -> None:
        """Stop watching: drop the armed checks' hooks, read back what is left."""
        for check in self._carry.values():
            check.remove()
        self._carry.clear()
        try:
            if self._snapshot is not None and self.mode == "backward" and not self.done:
                self._measure_update()
            self._snapshot = None
            self.flush()
        except Exception as exc:  # noqa: BLE001 - the report must still come
            self.fail(exc)
        self.done = True


def _lr(optimizer: Any) -> float | None:
    try:
        return float(optimizer.param_groups[0]["lr"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


@functools.cache
def _activation_types() -> tuple[tuple[Any, str], ...]:
    from torch import nn

    return ((nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"))


def _activation_kind(module: Any) -> str | None:
    return next((kind for cls, kind in _activation_types() if isinstance(module, cls)), None)


# Smooth activations whose formula has a tanh or sigmoid factor (transformers' NewGELUActivation calls
# torch.tanh, QuickGELU x * torch.sigmoid(1.702 x)): that factor at its bound means linear or 0, not stuck.
_SMOOTH_ACTIVATIONS = ("gelu", "silu", "swish", "mish")


def _is_activation_module(module: Any) -> bool:
    """nn.ReLU/Tanh/Sigmoid (their own hook judges them), or a leaf module named like a smooth activation."""
    if _activation_kind(module) is not None:
        return True
    name = type(module).__name__.lower()
    return any(smooth in name for smooth in _SMOOTH_ACTIVATIONS) and next(module.children(), None) is None


def _tensors_of(output: Any) -> list[Any]:
    """The tensors a model returned: itself, or the items of a tuple, list or dict (a ModelOutput), one level."""
    import torch

    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else [output]
    return [item for item in items if isinstance(item, torch.Tensor)]


@functools.cache
def _mode_types() -> tuple[type, ...]:
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    return (_DropoutNd, _BatchNorm)
