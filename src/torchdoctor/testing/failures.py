"""Turn findings into one assertion message: the finding's id, code, message and fix, as the CLI shows them."""

from __future__ import annotations

from collections.abc import Iterable

from torchdoctor.report import Finding, Report, Severity

__all__ = ["failing", "raise_for"]


def failing(findings: Iterable[Finding], *, strict: bool = False) -> list[Finding]:
    """The findings that fail an assertion: errors (and warnings with ``strict``)."""
    bar = Severity.WARNING.rank if strict else Severity.ERROR.rank
    return [f for f in findings if f.severity.rank >= bar]


def format_failure(what: str, findings: list[Finding]) -> str:
    lines = [f"{what}: {len(findings)} problem(s)"]
    for finding in findings:
        lines.append(f"  {finding.id} ({finding.code}): {finding.message}")
        if finding.fix:
            lines.append(f"    fix: {finding.fix}")
    return "\n".join(lines)


def raise_for(what: str, report_or_findings: Report | Iterable[Finding], *, strict: bool = False) -> None:
    """``AssertionError`` naming every failing finding; nothing when there is none."""
    findings = report_or_findings.findings if isinstance(report_or_findings, Report) else report_or_findings
    bad = failing(findings, strict=strict)
    if bad:
        raise AssertionError(format_failure(what, bad))
