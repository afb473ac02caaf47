"""``run_check``: every item configured in ``[tool.torchdoctor]``, one report, ignored ids set aside."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torchdoctor.check.config import CheckConfig, IgnoreRule, Item, load_config
from torchdoctor.check.run import ItemOutcome, SubprocessRunner, run_item
from torchdoctor.codes import make_finding
from torchdoctor.report import Finding, Report, Section, worst_status

COMMAND = "check"

ItemProgress = Callable[[int, int, Item, "ItemOutcome | None"], None]
"""Told ``(number, total, item, None)`` before an item runs and ``(number, total, item, outcome)`` after."""


def run_check(config_path: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None, *,
              run_subprocess: SubprocessRunner = subprocess.run, on_item: ItemProgress | None = None) -> Report:
    """Load the config (``ConfigError``, exit 2, when it is wrong), run every item, and report them together.

    ``result["fail_on"]`` says whether warnings fail the run (``Report.exit_code(strict=...)``).
    """
    config = load_config(Path(config_path) if config_path is not None else None, Path(cwd) if cwd else None)
    outcomes = []
    with _importable_from(config.root):
        for number, item in enumerate(config.items, 1):
            if on_item is not None:
                on_item(number, len(config.items), item, None)
            outcomes.append(run_item(item, config, run_subprocess=run_subprocess))
            if on_item is not None:
                on_item(number, len(config.items), item, outcomes[-1])
    return build_report(config, outcomes)


@contextlib.contextmanager
def _importable_from(root: Path) -> Iterator[None]:
    """``package.module:name`` specs import from the config's folder (the project root), as they would with
    ``python -m`` run there, wherever ``torchdoctor check`` itself was started."""
    folder = str(Path(root).resolve())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def build_report(config: CheckConfig, outcomes: Iterable[ItemOutcome]) -> Report:
    reasons = {rule.id: rule for rule in config.ignore}
    items, sections, findings, ignored = [], [], [], []
    for outcome in outcomes:
        kept, dropped = _split(_item_findings(outcome), reasons)
        findings += kept
        ignored += [{**f.to_dict(), "item": outcome.item.name, "kind": outcome.item.kind,
                     "reason": reasons[f.id].reason} for f in dropped]
        items.append(_item_dict(outcome, kept, reasons))
        sections.append(_section(outcome, kept, dropped, reasons))
    result = {"config": config.display_path(), "fail_on": config.fail_on, "items": items, "ignored": ignored}
    return Report(COMMAND, tuple(findings), result, tuple(sections))


def _item_findings(outcome: ItemOutcome) -> tuple[Finding, ...]:
    if outcome.report is not None:
        return outcome.report.findings
    item = outcome.item
    return (make_finding("check-crashed", f"{item.kind} {item.name} could not run: {outcome.error}",
                         fix=outcome.hint or "", location=item.file, details={"item": item.name, "kind": item.kind}),)


def _split(findings: Iterable[Finding], reasons: Mapping[str, IgnoreRule]) -> tuple[list[Finding], list[Finding]]:
    kept, dropped = [], []
    for finding in findings:
        (dropped if finding.id in reasons else kept).append(finding)
    return kept, dropped


def _item_dict(outcome: ItemOutcome, kept: list[Finding], reasons: Mapping[str, IgnoreRule]) -> dict[str, Any]:
    item, report = outcome.item, outcome.report
    return {
        "kind": item.kind,
        "name": item.name,
        "file": item.file,
        "line": item.line,
        "status": worst_status(kept).value,
        "error": None if outcome.error is None else {"message": outcome.error, "hint": outcome.hint},
        "findings": [f.to_dict() for f in kept],
        "groups": _groups(report, reasons) if report is not None else [],
        "report": report.to_dict() if report is not None else None,
    }


def _groups(report: Report, reasons: Mapping[str, IgnoreRule]) -> list[dict[str, Any]]:
    """The item's check groups: its report's sections, plus one group per id of findings in no section."""
    groups, seen = [], set()
    for section in report.sections:
        # a section may repeat a finding in other words (data's "Training step"); only the report's own count
        shown = [f for f in section.findings if f in report.findings]
        seen.update(id(f) for f in shown)
        groups.append({"name": section.name, "title": section.title,
                       "findings": [f.to_dict() for f in shown if f.id not in reasons]})
    loose: dict[str, list[dict[str, Any]]] = {}
    for finding in report.findings:
        if id(finding) not in seen and finding.id not in reasons:
            loose.setdefault(finding.id, []).append(finding.to_dict())
    groups += [{"name": fid, "title": fid, "findings": group} for fid, group in loose.items()]
    return groups or [{"name": report.command, "title": report.command, "findings": []}]


def _section(outcome: ItemOutcome, kept: list[Finding], dropped: list[Finding],
             reasons: Mapping[str, IgnoreRule]) -> Section:
    item = outcome.item
    lines = [f"ignored {f.id}: {f.message}" + (f" (reason: {reasons[f.id].reason})" if reasons[f.id].reason else "")
             for f in dropped]
    lines += [f"{b['budget']}: {b['actual']:,} of {b['limit']:,}" for b in outcome.budgets if b["actual"] is not None]
    title = item.kind if item.name == item.kind else f"{item.kind} {item.name}"
    return Section(f"{item.kind}:{item.name}", title, _headline(outcome, kept), tuple(kept), tuple(lines))


def _headline(outcome: ItemOutcome, kept: list[Finding]) -> str:
    if outcome.report is None:
        return "could not run"
    counts = {s: sum(1 for f in kept if f.severity.value == s) for s in ("error", "warning", "info")}
    parts = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n]
    result = outcome.report.result
    facts = []
    if outcome.item.kind == "env":
        facts.append(f"{len(result.get('checks_run', ()))} checks run")
    if outcome.item.kind == "watch" and isinstance(result.get("steps_watched"), int):
        facts.append(f"{result['steps_watched']} steps watched")
    if outcome.item.kind == "count" and (result.get("params") or {}).get("total") is not None:
        facts.append(f"{result['params']['total']:,} parameters")
    if outcome.item.kind == "ckpt":
        facts += _values_not_scanned(result.get("values_scan") or {})
    return ", ".join(facts + (parts or ["no issues"]))


def _values_not_scanned(scan: Mapping[str, Any]) -> list[str]:
    """Said when a ckpt item's values were not checked for NaN/inf, in the config's words (not the CLI's)."""
    if scan.get("mode") == "headers-only":
        from torchdoctor.ckpt.inspect import SCAN_LIMIT_BYTES  # loaded already: the item ran ckpt inspect
        from torchdoctor.units import format_bytes

        return [f"headers only: {format_bytes(scan['data_bytes'])} of tensor data, values not scanned for NaN/inf "
                f"above {format_bytes(SCAN_LIMIT_BYTES)} (scan-values = true scans them)"]
    if scan.get("mode") == "off":
        return ["values not scanned for NaN/inf (scan-values = false)"]
    return []
