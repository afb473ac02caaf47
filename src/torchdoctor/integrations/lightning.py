"""``TorchdoctorCallback`` for Lightning: nan-hunt and watch over ``trainer.fit()``.

    trainer = L.Trainer(..., callbacks=[TorchdoctorCallback(fail_fast=True)])

A ``lightning.Callback``, or a ``pytorch_lightning.Callback`` when only that package is installed (a
Trainer accepts only callbacks of its own package). Importing this module imports that library;
``import torchdoctor`` does not.
"""

from __future__ import annotations

import logging
import os
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package of Lightning < 2 and of users who pin it
    from pytorch_lightning import Callback

from torchdoctor.integrations.session import Session, metrics_of, summary_of
from torchdoctor.report import Report

__all__ = ["TorchdoctorCallback"]

_logger = logging.getLogger("torchdoctor.integrations")


class TorchdoctorCallback(Callback):
    """Watch a Lightning run with the CLI's engines; write the report when training ends, or raises.

    ``watch``: the learning watch (``torchdoctor watch``). ``nan_hunt``: name the first producer of NaN/inf.
    ``fail_fast``: stop training (``trainer.should_stop``) at the end of the batch that produced the first
    error. ``report``: the JSON report's path, relative to ``trainer.default_root_dir`` (None: write none).
    After training, ``callback.report`` holds the ``torchdoctor.Report``.
    """

    def __init__(self, watch: bool = True, nan_hunt: bool = True, fail_fast: bool = False,
                 report: str | os.PathLike[str] | None = "torchdoctor-report.json") -> None:
        super().__init__()
        self.session = Session(watch=watch, nan_hunt=nan_hunt, fail_fast=fail_fast, report=report)
        self._error_logged = False

    @property
    def report(self) -> Report | None:
        return self.session.report

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._error_logged = False
        self.session.start()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        error = self.session.first_error()
        if error is not None and not self._error_logged:
            self._error_logged = True  # self.log: to every logger and to trainer.callback_metrics
            pl_module.log(f"torchdoctor/{error.id}", float(error.details.get("step") or 0))
        if self.session.should_stop():
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.session.running:
            self._tell_loggers(trainer, self.session.finish(trainer.default_root_dir, _extra(trainer)))

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """A run that raised (or was interrupted): the hooks go, and the report of what was seen is written.

        Lightning calls this before it finalizes the loggers ("failed"), so they still take the findings.
        """
        report = self.session.finish_after(exception, trainer.default_root_dir, _extra(trainer))
        if report is not None:
            try:
                self._tell_loggers(trainer, report)
            except Exception as error:  # a logger that fails now must not replace the user's exception
                _logger.warning("torchdoctor: the findings of the failed run could not be logged: %s", error)

    def _tell_loggers(self, trainer: Any, report: Report) -> None:
        # self.log is not allowed in on_train_end nor on_exception: write to the loggers themselves.
        metrics = metrics_of(report)
        for logger in trainer.loggers if metrics else ():
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    def __repr__(self) -> str:
        return f"TorchdoctorCallback({summary_of(self.report) if self.report else 'not run'})"


def _extra(trainer: Any) -> dict[str, Any]:
    """``result.callback``'s facts of the run (``library``: lightning or pytorch_lightning)."""
    return {"library": type(trainer).__module__.split(".")[0], "global_step": trainer.global_step}
