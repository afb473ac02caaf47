"""``TorchdoctorCallback`` for the Hugging Face ``Trainer``: nan-hunt and watch over ``trainer.train()``.

    trainer = Trainer(..., callbacks=[TorchdoctorCallback(fail_fast=True)])

Importing this module imports ``transformers`` (``import torchdoctor`` does not).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from transformers import Trainer, TrainerCallback

from torchdoctor.integrations.session import Session, metrics_of, summary_of, uncaught_exception
from torchdoctor.report import Report

__all__ = ["TorchdoctorCallback"]


class TorchdoctorCallback(TrainerCallback):
    """Watch a ``Trainer`` run with the CLI's engines; write the report when training ends, or raises.

    ``watch``: the learning watch (``torchdoctor watch``). ``nan_hunt``: name the first producer of NaN/inf.
    ``fail_fast``: stop training (``control.should_training_stop``) at the end of the step that produced the
    first error. ``report``: the JSON report's path, relative to ``args.output_dir`` (None: write none).
    After training, ``callback.report`` holds the ``torchdoctor.Report``.

    The Trainer calls no callback when training raises. Given to ``Trainer(callbacks=[...])``, the callback
    wraps that trainer's ``train`` (one attribute of the instance, in ``on_init_end``), so the exception is
    seen as it propagates: the hooks are removed and the report written (``result.callback.ended``:
    failed). Added later (``trainer.add_callback``), a run that raises is finished when the callback is
    garbage-collected or the interpreter exits, or by ``close()``.
    """

    def __init__(self, watch: bool = True, nan_hunt: bool = True, fail_fast: bool = False,
                 report: str | os.PathLike[str] | None = "torchdoctor-report.json") -> None:
        self.session = Session(watch=watch, nan_hunt=nan_hunt, fail_fast=fail_fast, report=report)
        self.trainer: Trainer | None = None
        self._output_dir: str | None = None
        self._state: Any = None  # the run's TrainerState: global_step for a report written after a crash

    @property
    def report(self) -> Report | None:
        return self.session.report

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _calling_trainer()
        if trainer is not None and not hasattr(vars(trainer).get("train"), "torchdoctor_callback"):
            trainer.train = _finishing_on_error(trainer.train, self)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer = _calling_trainer()
        self._output_dir, self._state = args.output_dir, state
        self.session.start()
        # The last resort: neither argument may hold this callback (nor its trainer), or it is never collected.
        self.session.finish_left_open(self, args.output_dir, functools.partial(_extra, state),
                                      functools.partial(uncaught_exception, Trainer.train.__code__))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.session.should_stop():
            control.should_training_stop = True
            self._log({"torchdoctor/stopped_at_step": float(state.global_step)})
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.session.running:
            return
        report = self.session.finish(base_folder=args.output_dir, extra=_extra(state))
        self._log(metrics_of(report))

    def close(self) -> Report | None:
        """Finish a run that is still open (an exception the callback did not see): the hooks are removed and
        the report of what was seen is written (``ended``: unfinished). Does nothing when no run is open."""
        if not self.session.running:
            return None
        return self.session.finish(base_folder=self._output_dir, extra=_extra(self._state), ended="unfinished")

    def _finish_after(self, error: BaseException) -> None:
        """The run raised ``error``: remove the hooks, write the report (never raises in the error's place)."""
        self.session.finish_after(error, self._output_dir, _extra(self._state))

    def _log(self, metrics: dict[str, float]) -> None:
        # trainer.log reaches every reporter (TensorBoard, W&B...) and state.log_history.
        if self.trainer is not None and metrics:
            self.trainer.log(dict(metrics))

    def __repr__(self) -> str:
        return f"TorchdoctorCallback({summary_of(self.report) if self.report else 'not run'})"


def _extra(state: Any) -> dict[str, Any]:
    return {"library": "transformers", "global_step": getattr(state, "global_step", None)}


def _finishing_on_error(train: Callable[..., Any], callback: TorchdoctorCallback) -> Callable[..., Any]:
    """``trainer.train`` that finishes the callback's run when training raises, then lets the error go on."""

    @functools.wraps(train)
    def train_finishing_on_error(*args: Any, **kwargs: Any) -> Any:
        try:
            return train(*args, **kwargs)
        except BaseException as error:  # KeyboardInterrupt too: the report says "interrupted"
            callback._finish_after(error)
            raise

    train_finishing_on_error.torchdoctor_callback = callback  # type: ignore[attr-defined]
    return train_finishing_on_error


def _calling_trainer() -> Trainer | None:
    """The ``Trainer`` whose ``__init__`` or ``train()`` is on the stack: transformers gives callbacks no
    reference to it."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None
