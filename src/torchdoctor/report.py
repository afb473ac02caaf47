"""Findings and reports: the data every command returns and every renderer reads.

A ``Finding`` never prints; a ``Report`` knows its status and exit code and turns
itself into the JSON object described by ``shared/contract/report.schema.json``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class Severity(str, enum.Enum):
    """How bad a finding is; ordered ``info < warning < error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class Status(str, enum.Enum):
    """Outcome of a report or of one check group."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One judged problem or notable fact, in the shape of the report contract."""

    id: str
    code: str
    severity: Severity
    message: str
    fix: str | None = None
    location: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "fix": self.fix,
            "location": self.location,
            "details": dict(self.details),
        }


def worst_status(findings: Iterable[Finding]) -> Status:
    """``error`` if any error, ``warning`` if any warning, else ``ok`` (info does not count)."""
    worst = max((f.severity.rank for f in findings), default=0)
    if worst == Severity.ERROR.rank:
        return Status.ERROR
    if worst == Severity.WARNING.rank:
        return Status.WARNING
    return Status.OK


@dataclass(frozen=True)
class Section:
    """One check group as people see it: a headline and the findings under it."""

    name: str
    title: str
    headline: str
    findings: tuple[Finding, ...] = ()
    lines: tuple[str, ...] = ()  # extra facts shown under the headline (a fix plan, the largest differences)

    @property
    def status(self) -> Status:
        return worst_status(self.findings)


@dataclass(frozen=True)
class Report:
    """What a command returns: findings, command-specific facts, and the sections to show."""

    command: str
    findings: tuple[Finding, ...]
    result: Mapping[str, Any]
    sections: tuple[Section, ...] = ()

    @property
    def status(self) -> Status:
        return worst_status(self.findings)

    def exit_code(self, strict: bool = False) -> int:
        """0 without error findings, 1 with any (with ``strict``, warnings count too)."""
        status = self.status
        if status is Status.ERROR or (strict and status is Status.WARNING):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        from torchdoctor import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "torchdoctor",
            "version": __version__,
            "command": self.command,
            "status": self.status.value,
            "findings": [f.to_dict() for f in self.findings],
            "result": dict(self.result),
        }


def json_float(value: float | None) -> float | str | None:
    """``value`` as the contract writes a number that may be non-finite: ``"nan"``, ``"inf"``, ``"-inf"``."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
