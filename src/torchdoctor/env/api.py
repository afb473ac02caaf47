"""``run_env``: the Python twin of ``torchdoctor env`` — run the selected checks, return one Report.

Collectors that import torch run together in one child process (``_collect_child``) and the
DataLoader probe in another, both started first so they overlap; this process only judges.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import EnvCheck, EnvContext, Facts
from torchdoctor.env.child import ChildOutcome, ChildProcess
from torchdoctor.env.registry import BY_NAME, CHECK_NAMES, CHECKS
from torchdoctor.errors import UsageError
from torchdoctor.report import Finding, Report, Section

COLLECTOR_MODULE = "torchdoctor.env._collect_child"
MARKER = "torchdoctor-collect: "

__all__ = ["CHECKS", "CHECK_NAMES", "run_env", "select_checks"]


def select_checks(names: Sequence[str] | None, checks: Sequence[EnvCheck] = CHECKS) -> list[EnvCheck]:
    """The checks named (in registry order), all when ``names`` is empty; ``UsageError`` for unknown names."""
    if not names:
        return list(checks)
    unknown = [name for name in names if name not in {check.name for check in checks}]
    if unknown:
        valid = ", ".join(check.name for check in checks)
        raise UsageError(f"unknown check {', '.join(map(repr, unknown))}; valid checks: {valid}",
                         "torchdoctor env --list-checks")
    return [check for check in checks if check.name in names]


def run_env(
    checks: Sequence[str] | None = None,
    *,
    context: EnvContext | None = None,
    registry: Sequence[EnvCheck] = CHECKS,
    on_progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the named env checks (all by default) and judge the machine. Never raises for a crashing check."""
    selected = select_checks(checks, registry)
    context = context or EnvContext()
    children = _Children(selected, context)
    sections, result = [], {}
    for check in selected:
        if on_progress is not None:
            on_progress(check.title)
        facts = children.facts_for(check)
        findings, headline = _judge(check, facts)
        result[check.name] = dict(facts)
        sections.append(Section(check.name, check.title, headline, tuple(findings)))
    result["checks_run"] = [check.name for check in selected]
    return Report("env", tuple(f for section in sections for f in section.findings), result, tuple(sections))


class _Children:
    """The child processes of one run, started at once; hands each check its facts."""

    def __init__(self, selected: Sequence[EnvCheck], context: EnvContext) -> None:
        self.context = context
        self.probe = None
        if any(check.process == "dataloader" for check in selected):
            self.probe = _guarded_call(lambda: _start_dataloader(context))
        isolated = [c.name for c in selected if c.process == "collector" and BY_NAME.get(c.name) is c]
        self.collector = None
        if isolated and not context.in_process:
            argv = [context.python, "-m", COLLECTOR_MODULE, *isolated]
            self.collector = ChildProcess(argv, timeout_s=context.collector_timeout_s)
        self.isolated = set(isolated) if self.collector else set()

    def facts_for(self, check: EnvCheck) -> dict[str, Any]:
        if check.name in self.isolated:
            return _facts_from_collector(check.name, self.collector.finish())
        if check.process == "dataloader" and not isinstance(self.probe, dict):
            return _guarded_collect(lambda: check.collect(self.context, self.probe))
        return _guarded_collect(lambda: check.collect(self.context))


def _start_dataloader(context: EnvContext) -> Any:
    from torchdoctor.env.workers import start_dataloader_probe

    return start_dataloader_probe(context)


def _guarded_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # reported when the check's facts are asked for
        return _crash_facts(exc)


def _guarded_collect(collect: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return collect()
    except Exception as exc:  # a bug in one check must not hide the others' findings
        return _crash_facts(exc)


def _crash_facts(exc: BaseException) -> dict[str, Any]:
    return {"crashed": {"exception": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}}


def _facts_from_collector(name: str, outcome: ChildOutcome) -> dict[str, Any]:
    """This check's facts from the collector child, or how the child died and whether it was running this check."""
    if outcome.result is not None and name in outcome.result:
        return outcome.result[name]
    reached = [line[len(MARKER):].strip() for line in outcome.stderr.splitlines() if line.startswith(MARKER)]
    running = reached[-1] if reached else None
    how = _how_it_ended(outcome)
    lines = [line.strip() for line in outcome.stderr.splitlines() if line.strip() and not line.startswith(MARKER)]
    death = {"died": True, "how": how, "while": running, "last_line": lines[-1] if lines else None,
             "signal": outcome.signal, "timed_out": outcome.timed_out}
    if running != name:
        death["message"] = f"not run: the collector process {how} while collecting {running or 'nothing yet'}"
    return {"crashed": death}


def _how_it_ended(outcome: ChildOutcome) -> str:
    if outcome.start_error:
        return outcome.start_error
    if outcome.timed_out:
        return f"timed out after {outcome.wall_seconds:.0f} s"
    if outcome.signal:
        return f"was killed by {outcome.signal}"
    return f"exited with code {outcome.returncode} without a result"


def _judge(check: EnvCheck, facts: Facts) -> tuple[list[Finding], str]:
    if "crashed" in facts:
        return [_crash_finding(check, facts["crashed"])], "check crashed"
    try:
        return check.judge(facts), check.headline(facts)
    except Exception as exc:
        return [_crash_finding(check, _crash_facts(exc)["crashed"])], "check crashed"


def _crash_finding(check: EnvCheck, crash: Facts) -> Finding:
    if crash.get("died") and crash.get("while") == check.name == "training":
        # the step itself took the process down (a segfaulting kernel, a hung driver): that is the finding
        last = f": {crash['last_line']}" if crash.get("last_line") else ""
        return make_finding("training-step-failed", f"The training-step process {crash['how']}{last}",
                            details=dict(crash))
    if crash.get("died"):
        reason = crash.get("message") or f"the collector process {crash['how']}"
        last = f" ({crash['last_line']})" if crash.get("last_line") and crash.get("while") == check.name else ""
        message = f"The {check.name} check crashed: {reason}{last}"
    else:
        first = str(crash.get("message", "")).strip().splitlines()
        message = f"The {check.name} check crashed: {crash.get('exception')}: {first[0] if first else ''}"
    return make_finding("check-crashed", message, location=check.name, details={"check": check.name, **crash})
