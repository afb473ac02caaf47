"""The engine both trainer callbacks drive by hand: the CLI's nan-hunt (and watch), entered and exited in hooks.

A callback cannot wrap the training loop in a ``with`` block, so a ``Session`` enters the context managers
at train begin and exits them at train end. The hunt runs with ``keep_going``: the engine's own stop is an
exception, which would crash the user's loop; ``fail_fast`` instead asks the trainer to stop cleanly at the
end of the step that produced the first error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchdoctor.report import Finding, Report, Severity

logger = logging.getLogger("torchdoctor.integrations")

__all__ = ["Session", "metrics_of", "summary_of"]


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

    def finish(self, base_folder: str | os.PathLike[str] | None = None, extra: Mapping[str, Any] | None = None
               ) -> Report:
        """Remove every hook, build the report, write it (relative paths under ``base_folder``), log a summary."""
        report = self.close()
        if report is None:
            raise RuntimeError("Session.finish() called without start()")
        self.report = self._with_extra(report, {**dict(extra or {}), "stopped_early": self.stopped_early})
        if self.report_path is not None:
            from torchdoctor.nan.runner import write_report

            target = Path(os.fspath(self.report_path))
            if not target.is_absolute() and base_folder is not None:
                target = Path(base_folder) / target
            target.parent.mkdir(parents=True, exist_ok=True)
            self.written = write_report(self.report, target)
        _log_summary(self.report, self.written)
        return self.report

    def close(self) -> Report | None:
        """Exit the engine if it is still entered; its report."""
        engine, self._engine, self._hunt = self._engine, None, None
        if engine is None:
            return None
        engine.__exit__(None, None, None)
        return engine.report

    def _with_extra(self, report: Report, extra: Mapping[str, Any]) -> Report:
        """``result.callback`` added; with ``nan_hunt=False`` the nan-hunt family's findings are left out."""
        findings = report.findings if self.nan_hunt_on else tuple(f for f in report.findings if f.code[2] != "3")
        sections = tuple(replace(section, findings=tuple(f for f in section.findings if f in findings))
                         for section in report.sections)
        return Report(report.command, findings, {**dict(report.result), "callback": dict(extra)}, sections)


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

