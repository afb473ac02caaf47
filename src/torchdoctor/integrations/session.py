"""The engine both trainer callbacks drive by hand: the CLI's nan-hunt (and watch), entered and exited in hooks.

A callback cannot wrap the training loop in a ``with`` block, so a ``Session`` enters the context managers
at train begin and exits them at train end. The hunt runs with ``keep_going``: the engine's own stop is an
exception, which would crash the user's loop; ``fail_fast`` instead asks the trainer to stop cleanly at the
end of the step that produced the first error. A run that raises is finished too (``finish_after``), with
what was seen up to the exception; a run nothing finished is finished when its owner (the callback) is
garbage-collected or the interpreter exits (``finish_left_open``).
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchdoctor.report import Finding, Report, Severity

logger = logging.getLogger("torchdoctor.integrations")

__all__ = ["ENDING_IDS", "Session", "metrics_of", "summary_of", "uncaught_exception"]

# The nan-hunt family's ids of how a run ended: kept with nan_hunt=False, they are not about NaN/inf.
ENDING_IDS = ("script-failed", "script-exit-code")


class Session:
    """One training run under torchdoctor: ``start()`` → per-step ``failed()`` → ``finish()`` → ``report``."""

    def __init__(self, *, watch: bool = True, nan_hunt: bool = True, fail_fast: bool = False,
                 report: str | os.PathLike[str] | None = "torchdoctor-report.json") -> None:
        if not (watch or nan_hunt):
            raise ValueError("TorchdoctorCallback needs watch=True or nan_hunt=True (or both)")
        self.watch_on, self.nan_hunt_on, self.fail_fast = bool(watch), bool(nan_hunt), bool(fail_fast)
        self.report_path = report
        # Imported now, when the callback is built, so that trainer.train() does not pay for it (~0.2 s).
        if self.watch_on:
            from torchdoctor.learning.api import Watch as engine_class
        else:
            from torchdoctor.nan.hunt import NanHunt as engine_class
        self._engine_class: Any = engine_class
        self._engine: Any = None  # the entered Watch or NanHunt
        self._hunt: Any = None  # the NanHunt (the Watch's own when watching)
        self.report: Report | None = None
        self.written: Path | None = None
        self.stopped_early = False
        self._last_resort: weakref.finalize | None = None

    @property
    def running(self) -> bool:
        return self._engine is not None

    def start(self) -> None:
        """Install the engine's global hooks (a leftover run, ended by an exception, is closed first).

        ``watch`` is built on the nan-hunt engine (a keep-going ``NanHunt`` inside), so one engine runs.
        """
        self.close()
        self.report, self.written, self.stopped_early = None, None, False
        engine = self._engine_class(keep_going=True) if not self.watch_on else self._engine_class()
        self._hunt = engine._hunt if self.watch_on else engine
        engine.__enter__()
        self._engine = engine

    def first_error(self) -> Finding | None:
        """The first non-finite value seen so far, as the finding the report will hold (None while healthy)."""
        if not self.nan_hunt_on or self._hunt is None or self._hunt.first_nonfinite is None:
            return None
        from torchdoctor.nan.checks import check_first

        return check_first(self._hunt.first_nonfinite)

    def should_stop(self) -> bool:
        """True once, with ``fail_fast``, when the run has produced an error: the callback stops the trainer."""
        if self.fail_fast and not self.stopped_early and self.first_error() is not None:
            self.stopped_early = True
            return True
        return False

    def finish(self, base_folder: str | os.PathLike[str] | None = None, extra: Mapping[str, Any] | None = None,
               *, exception: BaseException | None = None, ended: str = "completed") -> Report:
        """Remove every hook, build the report, write it (relative paths under ``base_folder``), log a summary.

        ``exception``: what ended the run (a ``script-failed`` finding, as ``nan-hunt`` gives a script that
        raises). ``result.callback.ended``: completed, failed, interrupted (KeyboardInterrupt), exited
        (SystemExit), or ``ended`` when no exception is known (unfinished: finished by close() or at exit).
        """
        engine = self._exit()
        if engine is None:
            raise RuntimeError("Session.finish() called without start()")
        ending, findings = _ending_of(exception, ended)
        report = engine.report
        if findings:  # the engine's own report plus the ending, as the script runners build theirs
            failed = {"script_failed": True} if self.watch_on else None
            report = engine.build_report(extra_findings=findings, extra_result=failed)
        extra = {**dict(extra or {}), "stopped_early": self.stopped_early, "ended": ending}
        self.report = self._with_extra(report, extra)
        if self.report_path is not None:
            from torchdoctor.nan.runner import write_report

            target = Path(os.fspath(self.report_path))
            if not target.is_absolute() and base_folder is not None:
                target = Path(base_folder) / target
            target.parent.mkdir(parents=True, exist_ok=True)
            self.written = write_report(self.report, target)
        _log_summary(self.report, self.written)
        return self.report

    def finish_after(self, exception: BaseException, base_folder: str | os.PathLike[str] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Report | None:
        """``finish`` for a run ended by ``exception``, called while it propagates; None when not running.

        Never raises: the user must see their own exception, not a report that could not be written.
        """
        return self._finish_quietly(base_folder, extra, exception) if self.running else None

    def finish_left_open(self, owner: object, base_folder: str | os.PathLike[str] | None,
                         extra: Callable[[], Mapping[str, Any]], exception: Callable[[], BaseException | None]
                         ) -> None:
        """The last resort for a run nothing finished (an exception no hook saw): finish it when ``owner`` is
        garbage-collected or, at the latest, when the interpreter exits.

        ``extra`` and ``exception`` are asked then (``exception``: the error that ended the run, if known);
        neither may hold a reference to ``owner``, or it would never be collected.
        """
        self._detach_last_resort()
        self._last_resort = weakref.finalize(owner, self._finish_at_exit, base_folder, extra, exception)

    def close(self) -> Report | None:
        """Remove the hooks if they are still installed, writing nothing; the engine's report."""
        engine = self._exit()
        return engine.report if engine is not None else None

    def _exit(self) -> Any:
        """Exit the engine if it is still entered (and drop the last resort): the engine, or None."""
        self._detach_last_resort()
        engine, self._engine, self._hunt = self._engine, None, None
        if engine is not None:
            engine.__exit__(None, None, None)
        return engine

    def _detach_last_resort(self) -> None:
        if self._last_resort is not None:
            self._last_resort.detach()
            self._last_resort = None

    def _finish_at_exit(self, base_folder: str | os.PathLike[str] | None, extra: Callable[[], Mapping[str, Any]],
                        exception: Callable[[], BaseException | None]) -> None:
        self._last_resort = None  # weakref.finalize runs a callback once: nothing to detach
        if self.running:
            self._finish_quietly(base_folder, extra(), exception(), ended="unfinished")

    def _finish_quietly(self, base_folder: str | os.PathLike[str] | None, extra: Mapping[str, Any] | None,
                        exception: BaseException | None, ended: str = "completed") -> Report | None:
        try:
            return self.finish(base_folder, extra, exception=exception, ended=ended)
        except Exception as error:  # while the user's error propagates, in the garbage collector or at exit: ours
            self.close()  # must not replace theirs, nor raise where nobody catches it
            logger.warning("torchdoctor: the report of the run could not be written: %s", error)
            return None

    def _with_extra(self, report: Report, extra: Mapping[str, Any]) -> Report:
        """``result.callback`` added; with ``nan_hunt=False`` the nan-hunt family's NaN/inf findings are left out."""
        findings = report.findings if self.nan_hunt_on else tuple(
            f for f in report.findings if f.code[2] != "3" or f.id in ENDING_IDS)
        sections = tuple(replace(section, findings=tuple(f for f in section.findings if f in findings))
                         for section in report.sections)
        return Report(report.command, findings, {**dict(report.result), "callback": dict(extra)}, sections)


def _ending_of(exception: BaseException | None, ended: str) -> tuple[str, tuple[Finding, ...]]:
    """How the run ended (``result.callback.ended``) and the finding that says so, as ``nan-hunt`` judges a script.

    The user's frames are looked for under the current folder first (where their training code usually is).
    """
    if exception is None:
        return ended, ()
    from torchdoctor.nan.runner import Ending, ScriptOutcome, judge_outcome

    if isinstance(exception, KeyboardInterrupt):
        ending = Ending.INTERRUPTED
    else:
        ending = Ending.EXITED if isinstance(exception, SystemExit) else Ending.FAILED
    return ending.value, judge_outcome(ScriptOutcome(ending, exception), Path.cwd())


def uncaught_exception(code: Any) -> BaseException | None:
    """The exception that ended the interpreter (Python keeps it in ``sys.last_value`` before exiting) when its
    traceback runs through ``code``: an error from an earlier, unrelated cell of a notebook is not the run's."""
    error = getattr(sys, "last_value", None)
    trace = error.__traceback__ if isinstance(error, BaseException) else None
    while trace is not None:
        if trace.tb_frame.f_code is code:
            return error
        trace = trace.tb_next
    return None


def summary_of(report: Report) -> str:
    """One line: the worst findings by id, or that the run was clean."""
    serious = [f for f in report.findings if f.severity is not Severity.INFO]
    if not serious:
        return "torchdoctor: no issues found."
    ids = ", ".join(dict.fromkeys(f"{f.id} ({f.severity.value})" for f in serious))
    return f"torchdoctor: {len(serious)} issue(s): {ids}. First: {serious[0].message} Fix: {serious[0].fix}"


def metrics_of(report: Report) -> dict[str, float]:
    """Numbers for the trainer's loggers (they take scalars): counts per severity and 1.0 per finding id.

    Empty for a clean run, so a healthy run adds nothing to the user's logs.
    """
    if not report.findings:
        return {}
    metrics = {f"torchdoctor/{severity.value}s": 0.0 for severity in Severity}
    for finding in report.findings:
        metrics[f"torchdoctor/{finding.severity.value}s"] += 1.0
        metrics[f"torchdoctor/{finding.id}"] = 1.0
    return metrics


def _log_summary(report: Report, written: Path | None) -> None:
    where = f" Report: {written}" if written is not None else ""
    level = logging.INFO if all(f.severity is Severity.INFO for f in report.findings) else logging.WARNING
    logger.log(level, "%s%s", summary_of(report), where)

