"""``explain_id``: the Python twin of ``torchdoctor explain ID`` (the registry entry of one finding id)."""

from __future__ import annotations

from torchdoctor.codes import REGISTRY, get_spec
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
