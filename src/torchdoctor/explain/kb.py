"""The Python twin of ``torchdoctor explain``: ``explain_id`` (a registry entry), ``explain_source`` (a log)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from torchdoctor.codes import REGISTRY, get_spec
from torchdoctor.errors import InputError, UsageError
from torchdoctor.report import Report


def explain_id(finding_id: str) -> Report:
    """A report whose ``result.entry`` is the registry entry for ``finding_id`` (an id or a TDnnn code)."""
    by_code = {spec.code.lower(): spec for spec in REGISTRY.values()}
    spec = by_code.get(finding_id.strip().lower()) or get_spec(finding_id.strip())
    entry = {
        "id": spec.id, "code": spec.code, "severity": spec.severity.value, "family": spec.family,
        "summary": spec.summary, "why": spec.why, "fix": spec.fix,
    }
    return Report("explain", (), {"entry": entry})


def is_finding_id(text: str) -> bool:
    """Whether ``text`` names a registry entry (an id or a TDnnn code)."""
    key = text.strip()
    return key in REGISTRY or key.lower() in {spec.code.lower() for spec in REGISTRY.values()}


def explain_source(path: str | None, stdin: TextIO) -> Report:
    """The ``explain`` report for a traceback or log read from ``path``, or from ``stdin`` (None or ``-``)."""
    from torchdoctor.explain.parse import explain_text

    if path is None or path == "-":
        if path is None and stdin.isatty():
            raise UsageError("nothing to explain", hint="torchdoctor explain ID, or FILE, or pipe a traceback into it")
        return explain_text(stdin.read(), "stdin")
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    return explain_text(text, path)
