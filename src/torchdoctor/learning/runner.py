"""Run a training script as ``python SCRIPT ARGS`` would, in this process, under ``watch``.

The same runner as nan-hunt's (argv, sys.path, ``__main__``, how the script ended, its frames): its
helpers are reused as they are, so that both commands treat a script alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdoctor.nan.runner import (  # shared on purpose: one notion of "running the user's script"
    Ending,
    ScriptOutcome,
    as_main,
    compile_script,
    execute_script,
    judge_outcome,
    python_exit_code,
    script_path,
    stdout_redirect,
)
from torchdoctor.report import Finding, Report

if TYPE_CHECKING:
    from torchdoctor.nan.ddp import DdpFacts

__all__ = ["run_watch_script"]


def run_watch_script(script: str | os.PathLike[str], args: Sequence[str] = (), *, steps: int | None = None,
                     every: int = 10, stdout_to_stderr: bool = False, distributed: bool = False) -> Report:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` inside ``watch``; return its report.

    The script always runs to its end: ``steps`` only limits what is watched. ``distributed`` (a torchrun
    rank) also watches DistributedDataParallel models as nan-hunt does (``result.ddp``, its 7xx findings).
    """
    from torchdoctor.learning.api import Watch
    from torchdoctor.nan.ddp import DdpWatch

    script = os.fspath(script)
    path = script_path(script)
    code = compile_script(path, script)
    watcher = Watch(steps=steps, every=every)
    ddp = DdpWatch() if distributed else None
    outcome = ScriptOutcome(Ending.STOPPED)
    with as_main(script, path, args) as module, stdout_redirect(stdout_to_stderr):
        with watcher, ddp or contextlib.nullcontext():
            outcome = execute_script(code, module)
    findings = judge_outcome(outcome, Path(os.path.realpath(path)).parent)
    extra_result = script_facts(script, args, outcome)
    if ddp is not None:
        findings += ddp_findings(ddp.facts, findings)
        extra_result["ddp"] = ddp.facts.to_dict()
    return watcher.build_report(extra_findings=findings, extra_result=extra_result)


def ddp_findings(facts: DdpFacts, findings: tuple[Finding, ...]) -> tuple[Finding, ...]:
    """nan-hunt's DDP judgement; a crash DDP's reducer raised for unused parameters is named as such."""
    from torchdoctor.nan.ddp import check_ddp

    explained = next((f.details.get("explained_by") for f in findings if f.id == "script-failed"), None)
    return tuple(check_ddp(facts, failure_explained_by=explained))


def script_facts(script: str, args: Sequence[str], outcome: ScriptOutcome) -> dict[str, Any]:
    return {
        "script": script,
        "args": list(args),
        "exit_code": python_exit_code(outcome),
        "script_failed": outcome.ending is Ending.FAILED,
    }
