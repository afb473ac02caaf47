"""The ``--json`` renderer: exactly one JSON object per report, valid JSON even for NaN facts."""

from __future__ import annotations

import json
import math
from typing import Any

from torchdoctor.report import Report


def json_safe(value: Any) -> Any:
    """Make ``value`` strict-JSON: non-finite floats become "NaN"/"Infinity"/"-Infinity", tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # paths, enums, dtypes: their text is the fact


def render_json(report: Report) -> str:
    return json.dumps(json_safe(report.to_dict()), indent=2, allow_nan=False)
