"""CI outputs of a ``check`` report: JUnit XML and GitHub Actions annotation lines (formatters return strings)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.report import Report, Severity

_PY_LOCATION = re.compile(r"^(?P<file>.+?\.py):(?P<line>\d+)")
_LEVEL = {"error": "error", "warning": "warning"}  # info findings make no annotation: CI logs stay quiet


def fails(finding: Mapping[str, Any], fail_on: str) -> bool:
    """Whether a finding fails the run: errors always, warnings with ``fail-on = "warning"``."""
    return Severity(finding["severity"]).rank >= Severity(fail_on).rank


# --- JUnit ------------------------------------------------------------------------------------------------------


def render_junit(report: Report) -> str:
    """``<testsuites>`` with a ``<testsuite>`` per item and a ``<testcase>`` per check group or failing id."""
    result = report.result
    root = ET.Element("testsuites", name="torchdoctor")
    for item in result["items"]:
        ignored = [f for f in result["ignored"] if f["item"] == item["name"] and f["kind"] == item["kind"]]
        root.append(_suite(item, ignored, result["fail_on"]))
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in root)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _suite(item: Mapping[str, Any], ignored: Sequence[Mapping[str, Any]], fail_on: str) -> ET.Element:
    suite = ET.Element("testsuite", name=f"{item['kind']}: {item['name']}")
    classname = f"torchdoctor.{item['kind']}"
    if item["error"] is not None:
        case = ET.SubElement(suite, "testcase", classname=classname, name=item["name"])
        error = ET.SubElement(case, "error", message=item["error"]["message"], type="check-crashed")
        error.text = _finding_text(item["findings"][0]) if item["findings"] else item["error"]["message"]
    else:
        for group in item["groups"]:
            _group_cases(suite, classname, group, fail_on)
    for finding in ignored:
        case = ET.SubElement(suite, "testcase", classname=classname, name=f"{finding['id']} (ignored)")
        reason = f": {finding['reason']}" if finding.get("reason") else ""
        ET.SubElement(case, "skipped", message=f"ignored {finding['id']}{reason}")
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    for key in ("failure", "error", "skipped"):
        suite.set(key + ("s" if key != "skipped" else ""), str(sum(1 for c in cases if c.find(key) is not None)))
    return suite


def _group_cases(suite: ET.Element, classname: str, group: Mapping[str, Any], fail_on: str) -> None:
    failing: dict[str, list[Mapping[str, Any]]] = {}
    for finding in group["findings"]:
        if fails(finding, fail_on):
            failing.setdefault(finding["id"], []).append(finding)
    notes = [f for f in group["findings"] if not fails(f, fail_on)]
    if not failing:
        case = ET.SubElement(suite, "testcase", classname=classname, name=group["title"])
        _system_out(case, notes)
        return
    for index, (finding_id, findings) in enumerate(failing.items()):
        name = group["title"] if finding_id == group["title"] else f"{group['title']}: {finding_id}"
        case = ET.SubElement(suite, "testcase", classname=classname, name=name)
        failure = ET.SubElement(case, "failure", message=f"[{finding_id}] {findings[0]['message']}",
                                type=finding_id)
        failure.text = "\n\n".join(_finding_text(f) for f in findings)
        if index == 0:
            _system_out(case, notes)


def _system_out(case: ET.Element, findings: Sequence[Mapping[str, Any]]) -> None:
    if findings:
        ET.SubElement(case, "system-out").text = "\n\n".join(_finding_text(f) for f in findings)


def _finding_text(finding: Mapping[str, Any]) -> str:
    lines = [f"{finding['id']} ({finding['code']}, {finding['severity']}): {finding['message']}"]
    if finding.get("location"):
        lines.append(f"location: {finding['location']}")
    if finding.get("fix"):
        lines.append(f"fix: {finding['fix']}")
    return "\n".join(lines)


# --- GitHub Actions -----------------------------------------------------------------------------------------------


def render_github(report: Report) -> str:
    """``::error file=F,line=N,title=ID::message`` per error/warning finding (workflow commands, escaped)."""
    config = report.result.get("config")
    lines = []
    for item in report.result["items"]:
        for finding in item["findings"]:
            level = _LEVEL.get(finding["severity"])
            if level is None:
                continue
            file, line = _where(finding, item, config)
            lines.append(_command(level, {"file": file, "line": line, "title": finding["id"]}, _message(finding)))
    return "".join(line + "\n" for line in lines)


def _where(finding: Mapping[str, Any], item: Mapping[str, Any], config: str | None) -> tuple[Any, Any]:
    match = _PY_LOCATION.match(finding.get("location") or "")
    if match:
        return match["file"], int(match["line"])
    if item.get("file"):
        return item["file"], None
    return (config, item.get("line")) if config else (None, None)


def _message(finding: Mapping[str, Any]) -> str:
    return finding["message"] + (f"\nfix: {finding['fix']}" if finding.get("fix") else "")


def _command(level: str, properties: Mapping[str, Any], message: str) -> str:
    shown = ",".join(f"{key}={_escape_property(str(value))}" for key, value in properties.items() if value is not None)
    return f"::{level} {shown}::{_escape_data(message)}" if shown else f"::{level}::{_escape_data(message)}"


def _escape_data(text: str) -> str:
    # https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts (escapeData / escapeProperty)
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
