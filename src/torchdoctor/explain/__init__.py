"""Explain: registry entries for finding ids (``kb``) and the rule table mapping exceptions to findings (``rules``).

``torchdoctor/explain.py`` used to hold ``explain_id``; a package shadows a module of the same name, so it
lives in ``explain/kb.py`` now and is re-exported here for ``torchdoctor explain ID`` (no torch import).
"""

from __future__ import annotations

from torchdoctor.explain.kb import explain_id, explain_source, is_finding_id

__all__ = ["explain_id", "explain_source", "is_finding_id"]
