"""The existing commands as assertions: a finite training step, a checkpoint that loads, a sound loader."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torchdoctor.testing.failures import raise_for

__all__ = ["assert_checkpoint_loads", "assert_finite_step", "assert_loader_ok"]


def assert_finite_step(model: Any, batch: Any, *, loss_fn: Callable[[Any, Any], Any] | None = None, steps: int = 1,
                       device: str = "cpu", strict: bool = False) -> None:
    """``steps`` real training steps on a copy of ``model`` stay finite, else the first producer is named.

    The step is ``torchdoctor.run_training_step`` (SGD with momentum unless the model computes its own
    loss) run under ``nan_hunt``: a NaN/inf fails with ``nonfinite-*`` and the user's line; a step that
    raises fails with ``training-step-failed`` and the error.
    """
    from torchdoctor.codes import make_finding
    from torchdoctor.nan.hunt import nan_hunt
    from torchdoctor.step import run_training_step

    outcome = None  # stays so when the hunt stops the step at its first non-finite value
    with nan_hunt() as hunt:
        outcome = run_training_step(model, batch, loss_fn=loss_fn, steps=steps, device=device)
    findings = list(hunt.report.findings)
    if outcome is not None and outcome.failure is not None and not findings:
        failure = outcome.failure
        where = f" at {failure.user_frame['file']}:{failure.user_frame['line']}" if failure.user_frame else ""
        message = f"The training step failed in the {failure.phase}{where}: {failure.exc_type}: {failure.headline}"
        findings.append(make_finding("training-step-failed", message, details=failure.to_dict()))
    raise_for("assert_finite_step", findings, strict=strict)


def assert_checkpoint_loads(path: str | os.PathLike[str], model: Any = None, *, strict: bool = False) -> None:
    """``torchdoctor ckpt inspect PATH --model``: the file reads safely; with ``model``, it loads and trains."""
    from torchdoctor.ckpt.inspect import inspect_checkpoint

    raise_for(f"assert_checkpoint_loads({os.fspath(path)!r})", inspect_checkpoint(path, model=model), strict=strict)


def assert_loader_ok(loader: Any, model: Any = None, num_classes: int | None = None, *, strict: bool = False,
                     **probe_options: Any) -> None:
    """``torchdoctor data``: the loader's batches (and, with ``model``, a training step on them) are sound."""
    from torchdoctor.data.api import probe_loader

    report = probe_loader(loader, model, num_classes=num_classes, **probe_options)
    raise_for("assert_loader_ok", report, strict=strict)
