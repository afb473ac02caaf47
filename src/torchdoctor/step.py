"""The training-step harness every torchdoctor check wraps: forward, loss, backward, optimizer on a copy."""

from __future__ import annotations

import contextlib
import copy
import functools
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.batch import as_call, prediction_of, to_device
from torchdoctor.frames import user_frame
from torchdoctor.report import json_float

if TYPE_CHECKING:
    import torch

PHASES = ("copy", "to-device", "forward", "loss", "backward", "optimizer")

_INPUT_KEYS = ("input", "inputs", "x", "image", "images")
_TARGET_KEYS = ("target", "targets", "y", "label", "labels")
_AUTOCAST_ALIASES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
# Seed for the CPU RNG inside the run, so dropout & co. give the same first loss every time.
_SEED = 0


class LossInferenceError(Exception):
    """No loss was given and none could be guessed from the output and the targets."""


@dataclass(frozen=True)
class StepFailure:
    """Where a training step broke: the phase, the exception, and the user's innermost frame."""

    phase: str
    exc_type: str
    message: str
    user_frame: dict[str, Any] | None
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def headline(self) -> str:
        """First non-empty line of the message (torch errors often run to many lines)."""
        return next((line.strip() for line in self.message.splitlines() if line.strip()), "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "exc_type": self.exc_type,
            "message": self.message,
            "user_frame": dict(self.user_frame) if self.user_frame is not None else None,
        }


@dataclass(frozen=True)
class StepResult:
    """What ``run_training_step`` measured; ``failure`` is None when every step completed."""

    device: str
    autocast_dtype: str | None
    grad_scaler: bool
    ok: bool
    loss: float | None
    losses: list[float]
    grad_norm: float | None
    timings_ms: dict[str, float]
    steps: int
    loss_name: str | None
    failure: StepFailure | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become the strings "nan", "inf", "-inf"."""
        return {
            "device": self.device,
            "autocast_dtype": self.autocast_dtype,
            "grad_scaler": self.grad_scaler,
            "ok": self.ok,
            "loss": json_float(self.loss),
            "losses": [json_float(v) for v in self.losses],
            "grad_norm": json_float(self.grad_norm),
            "timings_ms": {k: json_float(v) for k, v in self.timings_ms.items()},
            "steps": self.steps,
            "loss_name": self.loss_name,
            "failure": self.failure.to_dict() if self.failure is not None else None,
        }


def run_training_step(
    model: torch.nn.Module,
    batch: Any,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer_factory: Callable[[Iterator[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
    device: str | torch.device = "cpu",
    autocast_dtype: str | torch.dtype | None = None,
    grad_scaler: bool = False,
    steps: int = 1,
    copy_model: bool = True,
) -> StepResult:
    """Train ``steps`` steps on a deep copy of ``model`` and report losses, grad norm, timings or failure.

    ``batch`` is ``(inputs, targets)`` or a dict with an input and a target key; ``inputs`` is a
    tensor, a tuple/list (passed as ``*args``) or a dict (passed as ``**kwargs``). An explicit
    ``loss_fn(output, targets)`` gets the raw model output; without one the loss is inferred from
    the prediction (output, its element 0, or its ``"logits"``). Errors raised by the model, the
    loss, torch or the device become ``failure``; only caller mistakes (a malformed batch, a bad
    argument) raise. ``copy_model=False`` trains the caller's model in place (saves memory).
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    inputs, targets = split_batch(batch)
    _check_inputs(inputs)
    run = _Run(
        device=str(device),
        autocast=_autocast_name(autocast_dtype),
        grad_scaler=bool(grad_scaler),
        loss_fn=loss_fn,
        optimizer_factory=optimizer_factory or _default_optimizer,
    )
    try:
        run.train(model, inputs, targets, steps, copy_model)
    except Exception as exc:
        run.fail(exc)
    finally:
        run.release()  # drop the model copy now, not when the caller drops the result
    return run.result(steps)


def _default_optimizer(params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


class _Run:
    """State of one harness run: the current phase, what was measured, and the training objects."""

    def __init__(self, *, device, autocast, grad_scaler, loss_fn, optimizer_factory) -> None:
        self.device_label = device
        self.autocast = autocast
        self.grad_scaler = grad_scaler
        self.loss_fn = loss_fn
        self.optimizer_factory = optimizer_factory
        self.phase = "copy"
        self.losses: list[float] = []
        self.grad_norm: float | None = None
        self.loss_name: str | None = None
        self.timings: dict[str, float] = {}
        self.failure: StepFailure | None = None
        self.model = self.optimizer = self.scaler = None
        self.sync: Callable[[], None] = _no_sync

    def train(self, model, inputs, targets, steps: int, copy_model: bool) -> None:
        import torch

        self.phase = "copy"
        work = copy.deepcopy(model) if copy_model else model
        self.phase = "to-device"
        dev = torch.device(self.device_label)
        self.model = work.train().to(dev)
        self.device_label = _device_label(torch, dev)
        self.sync = _synchronizer(torch, dev)
        args, kwargs = as_call(to_device(inputs, dev))
        targets = to_device(targets, dev)
        # enable_grad: a caller inside torch.no_grad() still gets a real backward.
        with _forked_rng(torch, dev), torch.enable_grad():
            for index in range(steps):
                self.step(torch, dev, args, kwargs, targets, first=index == 0)

    def step(self, torch, dev, args, kwargs, targets, *, first: bool) -> None:
        self.timings = {}
        self.phase = "forward"
        self.model.zero_grad(set_to_none=True)
        self.sync()
        start = time.perf_counter()
        with self.timed("forward"), _autocast(torch, dev, self.autocast):
            output = self.model(*args, **kwargs)
        with self.timed("loss"), _autocast(torch, dev, self.autocast):
            loss, self.loss_name = compute_loss(torch, output, targets, self.loss_fn)
            self.losses.append(_loss_value(torch, loss))
        with self.timed("backward"):
            self.backward(torch, dev, loss)
        if first and self.scaler is None:
            self.grad_norm = _grad_norm(torch, self.model)
        self.optimize(torch, first=first)
        self.sync()
        self.timings["total"] = (time.perf_counter() - start) * 1000.0

    def backward(self, torch, dev, loss) -> None:
        if self.grad_scaler and self.scaler is None:
            self.scaler = torch.amp.GradScaler(dev.type)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimize(self, torch, *, first: bool) -> None:
        self.phase = "optimizer"
        if self.optimizer is None:
            # Built after the first backward so a broken factory still leaves loss and grad_norm.
            self.optimizer = self.optimizer_factory(self.model.parameters())
        if self.scaler is None:
            with self.timed("optimizer"):
                self.optimizer.step()
            return
        with self.timed("optimizer"):
            self.scaler.unscale_(self.optimizer)
        if first:  # the grads are unscaled now, so the norm is the real one
            self.grad_norm = _grad_norm(torch, self.model)
        with self.timed("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Mark ``phase`` as current and add its wall time; sync first so async kernels count."""
        self.phase = phase
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.timings[phase] = self.timings.get(phase, 0.0) + (time.perf_counter() - start) * 1000.0

    def fail(self, exc: Exception) -> None:
        frame = user_frame(exc.__traceback__)
        # The traceback's frames hold activations and the model copy (GPU memory); keep the
        # frames for the explain layer but drop their locals.
        traceback.clear_frames(exc.__traceback__)
        self.failure = StepFailure(self.phase, type(exc).__name__, str(exc).strip(), frame, exc)

    def release(self) -> None:
        self.model = self.optimizer = self.scaler = None

    def result(self, steps: int) -> StepResult:
        return StepResult(
            device=self.device_label,
            autocast_dtype=self.autocast,
            grad_scaler=self.grad_scaler,
            ok=self.failure is None,
            loss=self.losses[0] if self.losses else None,
            losses=list(self.losses),
            grad_norm=self.grad_norm,
            timings_ms=dict(self.timings),
            steps=steps,
            loss_name=self.loss_name,
            failure=self.failure,
        )


# --- batch ------------------------------------------------------------------------------------


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a 2-tuple/list or a dict with one input key and one target key."""
    if isinstance(batch, Mapping):
        input_key = next((k for k in _INPUT_KEYS if k in batch), None)
        target_key = next((k for k in _TARGET_KEYS if k in batch), None)
        if input_key is None or target_key is None:
            raise ValueError(
                f"a dict batch needs an input key (one of {', '.join(_INPUT_KEYS)}) and a target key "
                f"(one of {', '.join(_TARGET_KEYS)}); got keys {sorted(map(str, batch))}"
            )
        return batch[input_key], batch[target_key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"batch must be (inputs, targets) or a dict with input and target keys, got {_describe(batch)}"
    )


def _check_inputs(inputs: Any) -> None:
    import torch

    if not isinstance(inputs, (torch.Tensor, tuple, list, Mapping)):
        raise ValueError(f"inputs must be a tensor, a tuple/list or a dict, got {_describe(inputs)}")


# --- loss -------------------------------------------------------------------------------------


def compute_loss(torch, output: Any, targets: Any, loss_fn) -> tuple[Any, str]:
    """The loss tensor and its name: the caller's ``loss_fn``, the model's own loss, or a guess."""
    if loss_fn is not None:
        return loss_fn(output, targets), _callable_name(loss_fn)
    if isinstance(output, Mapping) and "logits" not in output and "loss" in output:
        return output["loss"], "model_loss"  # the model computed its loss itself (Hugging Face style)
    prediction = prediction_of(output)
    functional = torch.nn.functional
    if isinstance(prediction, torch.Tensor) and isinstance(targets, torch.Tensor):
        integer = not (targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool)
        if integer:
            return functional.cross_entropy(prediction, targets), "cross_entropy"
        if targets.is_floating_point() and prediction.shape == targets.shape:
            return functional.mse_loss(prediction, targets), "mse"
    raise LossInferenceError(
        f"cannot infer a loss from model output {_describe(prediction)} and targets {_describe(targets)}: "
        "integer targets get cross_entropy, floating targets shaped like the output get mse; "
        "pass loss_fn= for anything else"
    )


def _loss_value(torch, loss: Any) -> float:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the loss must be a tensor, got {_describe(loss)}")
    if loss.numel() != 1:
        raise ValueError(f"the loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
    return float(loss.detach().float().item())


def _callable_name(fn: Any) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    return getattr(fn, "__name__", None) or type(fn).__name__


def _grad_norm(torch, model: torch.nn.Module) -> float | None:
    """Global L2 norm of every gradient (None when no parameter got one)."""
    norms = []
    for param in model.parameters():
        grad = param.grad
        if grad is None:
            continue
        if grad.is_sparse:
            grad = grad.coalesce().values()
        norms.append(torch.linalg.vector_norm(grad.detach().float()))
    if not norms:
        return None
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])).item())


# --- device -----------------------------------------------------------------------------------


def _autocast_name(value: Any) -> str | None:
    """Canonical "float16" / "bfloat16" / None from a torch.dtype or a name; anything else is a caller bug."""
    if value is None:
        return None
    name = str(value).lower()
    name = name[len("torch.") :] if name.startswith("torch.") else name
    if name not in _AUTOCAST_ALIASES:
        raise ValueError(f"autocast_dtype must be float16 or bfloat16, got {value!r}")
    return _AUTOCAST_ALIASES[name]


def _autocast(torch, dev: torch.device, dtype_name: str | None) -> contextlib.AbstractContextManager:
    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=getattr(torch, dtype_name))


def _device_label(torch, dev: torch.device) -> str:
    """``cuda`` -> ``cuda:0`` (the index actually used); the given string when there is none."""
    if dev.index is not None or dev.type in ("cpu", "mps", "meta"):
        return str(dev)
    module = getattr(torch, dev.type, None)
    with contextlib.suppress(Exception):
        return f"{dev.type}:{module.current_device()}"
    return str(dev)


def _synchronizer(torch, dev: torch.device) -> Callable[[], None]:
    """A no-argument function that waits for ``dev``'s queued kernels (a no-op on CPU)."""
    if dev.type == "cpu":
        return _no_sync
    synchronize = getattr(getattr(torch, dev.type, None), "synchronize", None)
    if synchronize is None:
        return _no_sync
    if dev.type == "mps":  # torch.mps.synchronize takes no device
        return synchronize
    return functools.partial(synchronize, dev)


def _no_sync() -> None:
    return None


@contextlib.contextmanager
def _forked_rng(torch, dev: torch.device) -> Iterator[None]:
    """Seed the CPU RNG for the run and restore the caller's CPU and device RNG state afterwards."""
    accelerator = dev.type in ("cuda", "mps", "xpu")
    devices = [dev] if accelerator else []
    with torch.random.fork_rng(devices=devices, device_type=dev.type if accelerator else None):
        torch.random.default_generator.manual_seed(_SEED)
        yield


# --- failures ---------------------------------------------------------------------------------


# --- helpers ----------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """``shape (5, 4) float32`` for a tensor, the type name otherwise."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"shape {tuple(shape)} {str(dtype).replace('torch.', '')}"
    return type(value).__name__
