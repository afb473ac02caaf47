"""Run a training script as ``python SCRIPT ARGS`` would, in this process, under ``watch``.

The same runner as nan-hunt's (argv, sys.path, ``__main__``, how the script ended, its frames): its
helpers are reused as they are, so that both commands treat a script alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchdoctor.nan.runner import (  # shared on purpose: one notion of "running the user's script"
    Ending,
    ScriptOutcome,
    _as_main,
    _compile_script,
    _execute,
    _judge_outcome,
    _python_exit_code,
    _script_path,
    _stdout_redirect,
)
from torchdoctor.report import Report

__all__ = ["run_watch_script"]


def run_watch_script(script: str | os.PathLike[str], args: Sequence[str] = (), *, steps: int | None = None,
                     every: int = 10, stdout_to_stderr: bool = False) -> Report:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` inside ``watch``; return its report.

    The script always runs to its end: ``steps`` only limits what is watched.
    """
    from torchdoctor.learning.api import Watch

    script = os.fspath(script)
    path = _script_path(script)
    code = _compile_script(path, script)
    watcher = Watch(steps=steps, every=every)
    outcome = ScriptOutcome(Ending.STOPPED)
    with _as_main(script, path, args) as module, _stdout_redirect(stdout_to_stderr):
        with watcher:
            outcome = _execute(code, module)
    findings = _judge_outcome(outcome, Path(os.path.realpath(path)).parent)
    return watcher.build_report(extra_findings=findings, extra_result=script_facts(script, args, outcome))


def script_facts(script: str, args: Sequence[str], outcome: ScriptOutcome) -> dict[str, Any]:
    return {
        "script": script,
        "args": list(args),
        "exit_code": _python_exit_code(outcome),
        "script_failed": outcome.ending is Ending.FAILED,
    }
