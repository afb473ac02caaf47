"""``TorchdoctorCallback`` for the Hugging Face ``Trainer``: nan-hunt and watch over ``trainer.train()``.

    trainer = Trainer(..., callbacks=[TorchdoctorCallback(fail_fast=True)])

Importing this module imports ``transformers`` (``import torchdoctor`` does not).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from transformers import Trainer, TrainerCallback

from torchdoctor.integrations.session import Session, metrics_of, summary_of
from torchdoctor.report import Report

__all__ = ["TorchdoctorCallback"]


class TorchdoctorCallback(TrainerCallback):
    """Watch a ``Trainer`` run with the CLI's engines; write the report when training ends.

    ``watch``: the learning watch (``torchdoctor watch``). ``nan_hunt``: name the first producer of NaN/inf.
    ``fail_fast``: stop training (``control.should_training_stop``) at the end of the step that produced the
    first error. ``report``: the JSON report's path, relative to ``args.output_dir`` (None: write none).
    After training, ``callback.report`` holds the ``torchdoctor.Report``.
    """

    def __init__(self, watch: bool = True, nan_hunt: bool = True, fail_fast: bool = False,
                 report: str | os.PathLike[str] | None = "torchdoctor-report.json") -> None:
        self.session = Session(watch=watch, nan_hunt=nan_hunt, fail_fast=fail_fast, report=report)
        self.trainer: Trainer | None = None

    @property
    def report(self) -> Report | None:
        return self.session.report

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer = _calling_trainer()
        self.session.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.session.should_stop():
            control.should_training_stop = True
            self._log({"torchdoctor/stopped_at_step": float(state.global_step)})
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.session.running:
            return
        extra = {"library": "transformers", "global_step": state.global_step}
        report = self.session.finish(base_folder=args.output_dir, extra=extra)
        self._log(metrics_of(report))

    def close(self) -> None:
        """Remove the hooks of a run that ended by an exception (the Trainer calls no callback then)."""
        self.session.close()

    def _log(self, metrics: dict[str, float]) -> None:
        # trainer.log reaches every reporter (TensorBoard, W&B...) and state.log_history.
        if self.trainer is not None and metrics:
            self.trainer.log(dict(metrics))

    def __repr__(self) -> str:
        return f"TorchdoctorCallback({summary_of(self.report) if self.report else 'not run'})"


def _calling_trainer() -> Trainer | None:
    """The ``Trainer`` whose ``train()`` is on the stack: transformers gives callbacks no reference to it."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None
