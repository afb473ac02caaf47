import re
from pathlib import Path

import pytest

from torchdoctor.codes import FAMILIES, REGISTRY, get_spec
from torchdoctor.docs import render_findings_markdown
from torchdoctor.errors import UsageError

TESTS = Path(__file__).resolve().parent


def test_ids_and_codes_are_well_formed_and_unique():
    codes = [spec.code for spec in REGISTRY.values()]
    assert len(codes) == len(set(codes))
    for spec in REGISTRY.values():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", spec.id)
        assert re.fullmatch(r"TD[1-9][0-9]{2}", spec.code)
        assert int(spec.code[2]) in FAMILIES
        assert spec.summary and spec.why


def test_docs_findings_md_is_generated_from_the_registry(repo_root):
    committed = (repo_root / "docs" / "findings.md").read_text(encoding="utf-8")
    assert committed == render_findings_markdown(), (
        "docs/findings.md is stale: run `python -m torchdoctor.docs --write docs/findings.md`")


def test_unknown_id_suggests_close_matches():
    with pytest.raises(UsageError) as raised:
        get_spec("shm-too-smal")
    assert "shm-too-small" in raised.value.hint


def test_every_id_is_triggered_by_some_test():
    """Each registry id must be asserted somewhere in the tests besides this registry test."""
    sources = "\n".join(path.read_text(encoding="utf-8") for path in TESTS.rglob("test_*.py")
                        if path.name != "test_codes.py")
    untested = [finding_id for finding_id in REGISTRY if f'"{finding_id}"' not in sources]
    assert not untested, f"ids no test triggers: {untested}"
