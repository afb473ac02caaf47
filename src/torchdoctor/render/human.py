"""The human renderer: flutter-doctor style, a line per check group, a ``fix:`` line per finding, a summary."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from torchdoctor.codes import ANY_SECTION, SectionMissing, section_of
from torchdoctor.report import Finding, Report, Section, Severity, Status

GROUP_MARK = {Status.OK: ("✓", "green"), Status.WARNING: ("!", "yellow"), Status.ERROR: ("✗", "red")}
FINDING_MARK = {Severity.INFO: ("•", "cyan"), Severity.WARNING: ("!", "yellow"), Severity.ERROR: ("✗", "red")}


def render_human(report: Report, console: Console) -> None:
    """Write ``report`` for people: sections with their findings, or a flat list when it has none.

    Raises ``SectionMissing`` before writing anything when a finding would not be shown: no finding may
    silently disappear from human output.
    """
    check_placement(report)
    if report.sections:
        for section in report.sections:
            _render_section(section, console)
    else:
        for finding in report.findings:
            _render_finding(finding, console, indent="")
    console.print()
    console.print(summary_line(report))


def check_placement(report: Report) -> None:
    """Every finding has a registry section for the report's command and, when the report has sections,
    appears in that one (``ANY_SECTION``: in some section)."""
    for finding in report.findings:
        name = section_of(finding.id, report.command)
        if not report.sections:
            continue
        shown = [s.name for s in report.sections if finding in s.findings]
        if not shown or (name != ANY_SECTION and name not in shown):
            where = f"in sections {shown}" if shown else "in no section"
            raise SectionMissing(f"finding {finding.id!r} of a {report.command!r} report is {where}, but the "
                                 f"registry places it in {name!r}")


def _render_section(section: Section, console: Console) -> None:
    mark, style = GROUP_MARK[section.status]
    line = Text()
    line.append(f"[{mark}] ", style=style)
    line.append(section.title, style="bold")
    line.append(f": {section.headline}")
    console.print(line)
    for extra in section.lines:
        console.print(Text(f"    - {extra}", style="dim"))
    for finding in section.findings:
        _render_finding(finding, console, indent="    ")


def _render_finding(finding: Finding, console: Console, indent: str) -> None:
    mark, style = FINDING_MARK[finding.severity]
    line = Text(indent)
    line.append(f"{mark} ", style=style)
    line.append(finding.message)
    line.append(f"  [{finding.id} {finding.code}]", style="dim")
    console.print(line)
    if finding.fix:
        fix = Text(indent + "  ")
        fix.append("fix: ", style="bold")
        fix.append(finding.fix)
        console.print(fix)


def summary_line(report: Report) -> Text:
    counts = {severity: sum(1 for f in report.findings if f.severity is severity) for severity in Severity}
    parts = [f"{counts[s]} {s.value}{'s' if counts[s] != 1 else ''}"
             for s in (Severity.ERROR, Severity.WARNING, Severity.INFO) if counts[s]]
    mark, style = GROUP_MARK[report.status]
    text = Text(f"{mark} ", style=style)
    if report.status is Status.OK:
        text.append("No issues found" + (f" ({', '.join(parts)})" if parts else "") + ".")
    else:
        text.append(", ".join(parts) + ".")
    return text
