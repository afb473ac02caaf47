"""``count --memory``: what one training step holds, measured on a fake-tensor step (no memory allocated).

The model's own forward, the surrogate loss, backward and the chosen ``torch.optim`` optimizer run under
PyTorch's ``FakeTensorMode`` on fake CPU tensors (the kernels PyTorch picks on a real device: SDPA's flash
kernel, autocast's casts), with parameters, buffers and inputs made fresh from their shapes, so the caller's
weights are never read or copied. A dispatch mode tracks every storage from the op that creates it until it
is freed (``weakref.finalize``), which gives the high-water mark of live tensors, temporaries included;
``saved_tensors_hooks`` see what autograd saves for backward, module by module.

The figures are those of a step in the steady state of training, where the optimizer state (created by the
first step) is alive through forward and backward: the simulated step is a first one, whose optimizer phase
creates the state and then does what every later step does, and the state's bytes are added to the forward and
backward peaks. (Two simulated steps would give the same numbers at twice the cost; the tests compare with a
real second step.)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.count.memory_tracking import (
    ModuleMemory,
    SavedActivations,
    live_bytes_class,
    storage_bytes,
    tensors_in,
)
from torchdoctor.errors import UsageError, UserCodeError

PHASES = ("forward", "backward", "optimizer")
# torch.optim class and arguments per --optimizer; foreach is CUDA's default (one list-wide temporary per op).
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("SGD", {"lr": 0.01}),
    "momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "adam": ("Adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3}),
}
DEFAULT_OPTIMIZER = "adamw"
AMP_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


@dataclass(frozen=True)
class MemoryPlan:
    """What to simulate: the optimizer, autocast's dtype, a fused optimizer, and the batch size override."""

    optimizer: str = DEFAULT_OPTIMIZER
    amp: str | None = None
    """``"bfloat16"``/``"float16"`` or None."""
    fused: bool = False
    batch_size: int | None = None
    checkpoint: tuple[str, ...] = ()
    """Modules run under ``torch.utils.checkpoint`` (non-reentrant), to measure what checkpointing saves."""


@dataclass(frozen=True)
class MemoryFacts:
    """Bytes of one steady-state training step."""

    batch_size: int | None
    params_bytes: int
    buffers_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    peak_bytes: int
    phase_peaks: dict[str, int]
    weight_copies_bytes: int = 0
    """Of the saved activations, autocast's low-precision copies of the weights (float32 masters stay)."""
    optimizer_values: int = 0
    """Values in the optimizer's floating state tensors (moments, momentum; not Adam's scalar step)."""
    modules: tuple[ModuleMemory, ...] = field(default=())
    """Every named module (``""`` is the model) whose forward saved something or took tensor inputs."""

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=lambda phase: self.phase_peaks.get(phase, 0))

    @property
    def model_state_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes


def parse_plan(optimizer: str | None, amp: str | None) -> MemoryPlan:
    """``--optimizer`` and ``--amp`` -> a plan; unknown names are usage errors."""
    name = (optimizer or DEFAULT_OPTIMIZER).strip().lower()
    if name not in OPTIMIZERS:
        raise UsageError(f"--optimizer does not know {optimizer!r}", hint=f"one of: {', '.join(OPTIMIZERS)}")
    amp_dtype = None
    if amp is not None:
        amp_dtype = AMP_DTYPES.get(amp.strip().lower())
        if amp_dtype is None:
            raise UsageError(f"--amp does not know {amp!r}", hint="one of: bf16, fp16")
    return MemoryPlan(name, amp_dtype)


def batch_size_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """The first dimension of the first tensor input (the issue's definition of the batch size)."""
    import torch

    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


def collect_memory(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], plan: MemoryPlan, *,
                   dtype: Any = None) -> MemoryFacts:
    """Run a fake training step of ``model`` per ``plan`` and measure what it holds (see the module doc)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            return _simulate(model, args, kwargs, plan, dtype)
    except UsageError:
        raise
    except Exception as exc:
        raise UserCodeError(
            f"the memory estimate could not run a fake training step of {type(model).__name__}: "
            f"{type(exc).__name__}: {_headline(exc)}",
            hint="a fake-tensor step cannot follow code that depends on tensor values (.item(), nonzero, "
                 "data-dependent shapes); rerun with --debug for the traceback",
        ) from exc


def _simulate(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], plan: MemoryPlan,
              dtype: Any) -> MemoryFacts:
    import torch

    from torchdoctor.ckpt.against_model import surrogate_loss

    params = {name: _fake_like(p, dtype, p.requires_grad) for name, p in model.named_parameters()}
    buffers = {name: _fake_like(b, dtype, False) for name, b in model.named_buffers()}
    fake_args, fake_kwargs, batch = _fake_inputs(args, kwargs, plan.batch_size)
    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = _optimizer(plan, trainable)
    tracker, saved = live_bytes_class()(), SavedActivations(model, {*params.values(), *buffers.values()})
    tracker.weights = {param.untyped_storage()._cdata for param in params.values()}
    for tensor in [*params.values(), *buffers.values(), *tensors_in([fake_args, fake_kwargs])]:
        tracker.track(tensor)
    with tracker:
        tracker.enter("forward")
        autocast = torch.autocast("cpu", dtype=getattr(torch, plan.amp)) if plan.amp else contextlib.nullcontext()
        # The fake tensors stay in the model through backward: checkpointed modules run forward again there.
        with _in_model(model, {**params, **buffers}), _checkpointed(model, plan.checkpoint):
            with saved, autocast:
                output = model(*fake_args, **fake_kwargs)
                loss = surrogate_loss(output, None)
            # before backward frees them (a freed storage leaves weight_copies)
            copies = sum(size for key, (size, _) in saved.saved.items() if key in tracker.weight_copies)
            tracker.enter("backward")
            if loss.requires_grad:  # a fully frozen model has nothing to train
                loss.backward()
            del output, loss  # a training loop holds the output until backward returns
        grads = storage_bytes(p.grad for p in trainable if p.grad is not None)
        tracker.enter("optimizer")
        if optimizer is not None:
            optimizer.step()
    state = [value for per_param in (optimizer.state.values() if optimizer else ()) for value in per_param.values()]
    state_bytes = storage_bytes(t for t in state if isinstance(t, torch.Tensor))
    peaks = {phase: peak + (state_bytes if phase != "optimizer" else 0) for phase, peak in tracker.phase_peaks.items()}
    return MemoryFacts(
        batch_size=batch, params_bytes=storage_bytes(params.values()), buffers_bytes=storage_bytes(buffers.values()),
        grads_bytes=grads, optimizer_bytes=state_bytes, activations_bytes=saved.total_bytes,
        peak_bytes=max(peaks.values()), phase_peaks=peaks, modules=saved.module_rows(), weight_copies_bytes=copies,
        optimizer_values=sum(t.numel() for t in state if isinstance(t, torch.Tensor) and t.is_floating_point()
                             and t.dim() > 0),
    )


def _optimizer(plan: MemoryPlan, trainable: list[Any]) -> Any | None:
    import torch

    class_name, arguments = OPTIMIZERS[plan.optimizer]
    implementation = {"fused": True} if plan.fused else {"foreach": True}
    if not trainable:
        return None
    return getattr(torch.optim, class_name)(trainable, **arguments, **implementation)


@contextlib.contextmanager
def _in_model(model: Any, tensors: dict[str, Any]) -> Iterator[None]:
    """``tensors`` in place of the model's parameters and buffers (tied ones follow), in training mode; the
    model's own tensors and modes are back on exit. ``functional_call``'s context, held across backward."""
    from torch.nn.utils.stateless import _reparametrize_module

    training = {module: module.training for module in model.modules()}
    try:
        with _reparametrize_module(model, tensors, tie_weights=True, strict=False):
            model.train()
            yield
    finally:
        for module, flag in training.items():
            module.training = flag


@contextlib.contextmanager
def _checkpointed(model: Any, names: tuple[str, ...]) -> Iterator[None]:
    """The named modules' forwards wrapped in ``torch.utils.checkpoint`` (instance attributes, removed on exit)."""
    from torch.utils.checkpoint import checkpoint

    modules = dict(model.named_modules())
    patched = [modules[name] for name in names if name in modules and "forward" not in vars(modules[name])]
    try:
        for module in patched:
            module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
        yield
    finally:
        for module in patched:
            vars(module).pop("forward", None)


def _fake_like(tensor: Any, dtype: Any, requires_grad: bool) -> Any:
    """A fresh (fake, under the active FakeTensorMode) CPU tensor of ``tensor``'s shape, strides and dtype."""
    import torch

    kind = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    fresh = torch.empty_strided(tuple(tensor.shape), tuple(tensor.stride()), dtype=kind, device="cpu")
    return fresh.requires_grad_(requires_grad)


def _fake_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any],
                 batch: int | None) -> tuple[tuple[Any, ...], dict[str, Any], int | None]:
    """Fake copies of the tensor inputs, with the first dimension set to ``batch`` when given."""
    import torch
    from torch.utils._pytree import tree_map

    def fake(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        shape = list(value.shape)
        if batch is not None and shape:
            shape[0] = batch
        fresh = torch.zeros(shape, dtype=value.dtype, device="cpu")
        return fresh.requires_grad_(value.requires_grad and value.is_floating_point())

    fake_args, fake_kwargs = tree_map(fake, (tuple(args), dict(kwargs)))
    return fake_args, fake_kwargs, batch_size_of(fake_args, fake_kwargs)


def _headline(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
