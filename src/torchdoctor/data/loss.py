"""The loss: ``ce`` / ``bce`` / ``mse``, a user's loss (a callable or a ``file.py:name`` spec), or inferred from
the targets' dtype and shape against the model's output."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchdoctor.errors import TargetError

TASKS = ("ce", "bce", "mse")
_ALIASES = {"ce": "ce", "cross_entropy": "ce", "cross-entropy": "ce", "crossentropy": "ce", "bce": "bce",
            "bce_with_logits": "bce", "mse": "mse", "mse_loss": "mse", "l2": "mse"}
CE_IGNORE_INDEX = -100  # F.cross_entropy's default: labels equal to it are skipped, never out of range


@dataclass(frozen=True)
class LossChoice:
    """``task``: what the targets must look like (ce, bce, mse, or None: unknown); ``fn``: what the step calls."""

    task: str | None
    fn: Callable[[Any, Any], Any] | None
    name: str | None
    ignore_index: int | None = CE_IGNORE_INDEX


def resolve_loss(loss: str | Callable | None) -> LossChoice | None:
    """A user's choice of loss; None when none was given (then it is inferred per batch)."""
    if loss is None:
        return None
    if isinstance(loss, str):
        task = _ALIASES.get(loss.strip().lower())
        if task is not None:
            return builtin_loss(task)
        loss = _load_loss(loss)
    return _user_loss(loss)


def builtin_loss(task: str) -> LossChoice:
    functions = {"ce": cross_entropy, "bce": binary_cross_entropy_with_logits, "mse": mse_loss}
    return LossChoice(task, functions[task], functions[task].__name__)


def infer_task(target: Mapping[str, Any] | None, output_shape: Sequence[int | None] | None) -> str | None:
    """The loss the targets imply: integer class indices → ce, multi-hot → bce, float like the output → mse/bce."""
    if target is None or target.get("shape") is None:
        return None
    shape, output = list(target["shape"]), list(output_shape) if output_shape else None
    same_shape = output is not None and len(shape) == len(output) and shape[1:] == output[1:]
    if not target["dtype"].startswith("float"):
        return "bce" if same_shape and not target.get("one_hot_rows") else "ce"  # multi-hot vs class indices
    if output is None:
        return None
    binary = target.get("integral") and target.get("min", 0) >= 0 and target.get("max", 1) <= 1
    if same_shape:
        return "bce" if binary else "mse"
    if len(shape) == len(output) - 1 and (output[1] or 0) > 1 and target.get("integral"):
        return "ce"  # whole numbers one per sample against C logits: class indices stored as floats
    return "mse"


def _user_loss(loss: Any) -> LossChoice:
    from torch import nn

    if not callable(loss):
        raise TargetError(f"the loss must be callable, got {type(loss).__name__}")
    name = type(loss).__name__ if isinstance(loss, nn.Module) else getattr(loss, "__name__", type(loss).__name__)
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return LossChoice("ce", loss, name, loss.ignore_index)
    if isinstance(loss, (nn.BCEWithLogitsLoss, nn.BCELoss)):
        return LossChoice("bce", loss, name)
    if isinstance(loss, (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)):
        return LossChoice("mse", loss, name)
    return LossChoice(None, loss, name, None)


def _load_loss(spec: str) -> Any:
    """``file.py:name`` → a loss: a class is instantiated, a function of (output, target) is used as it is."""
    from torchdoctor import targets

    where, name = targets.split_target_spec(spec)
    # resolve_target would call a function with required parameters and refuse it; a loss function has two
    module = targets._load_file(where) if where.endswith(".py") else targets._import_module(where)
    obj = targets._lookup(module, where, name)
    if inspect.isroutine(obj) and len(targets._missing_params(obj)) >= 2:
        return obj
    return targets.resolve_target(spec)


# --- the built-in losses (named functions, so the report names them) --------------------------------


def cross_entropy(output: Any, target: Any) -> Any:
    import torch.nn.functional as F

    from torchdoctor.batch import prediction_of

    return F.cross_entropy(prediction_of(output), target)


def binary_cross_entropy_with_logits(output: Any, target: Any) -> Any:
    import torch.nn.functional as F

    from torchdoctor.batch import prediction_of

    return F.binary_cross_entropy_with_logits(prediction_of(output), target)


def mse_loss(output: Any, target: Any) -> Any:
    import torch.nn.functional as F

    from torchdoctor.batch import prediction_of

    return F.mse_loss(prediction_of(output), target)
