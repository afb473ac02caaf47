import re
from pathlib import Path

import pytest

from torchdoctor.ckpt.sections import TITLES as CKPT_TITLES
from torchdoctor.codes import ANY_SECTION, FAMILIES, REGISTRY, SectionMissing, get_spec, section_ids, section_of
from torchdoctor.data.sections import TITLES as DATA_TITLES
from torchdoctor.docs import render_findings_markdown
from torchdoctor.env.registry import CHECK_NAMES
from torchdoctor.errors import UsageError
from torchdoctor.learning.api import SECTIONS as WATCH_SECTIONS

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


def test_every_id_says_which_commands_make_it_and_where_each_shows():
    for spec in REGISTRY.values():
        assert spec.commands, spec.id
        assert spec.explain_only == (spec.commands == ("explain",)), spec.id
        for command in spec.commands:
            assert spec.section_for(command), (spec.id, command)


# The sections each command's human report has: a registry section outside them would never be shown.
SECTIONS = {
    "env": {*CHECK_NAMES, "distributed", ANY_SECTION},
    "ckpt inspect": {name for name, _title in CKPT_TITLES},
    "ckpt fix": {"output"},
    "ckpt diff": {"diff"},
    "data": {name for name, _title in DATA_TITLES},
    "count": {"compute", "uncounted"},
    "nan-hunt": {"nan-hunt"},
    "watch": {name for name, _title in WATCH_SECTIONS},
    "check": {ANY_SECTION},
    "explain": {ANY_SECTION},
}


def test_every_section_named_in_the_registry_exists_in_its_commands_report():
    for spec in REGISTRY.values():
        for command, section in spec.sections.items():
            assert section in SECTIONS[command], (spec.id, command, section)


def test_section_tables_come_from_the_registry():
    assert section_ids("ckpt inspect", "values") == ("nonfinite-weights",)
    assert "training-step-failed" in section_ids("data", "step")
    assert "cuda-out-of-memory" in section_ids("data", "step")  # explain's ids: the step's own errors
    assert get_spec("budget-exceeded").section_for("env") is None
    with pytest.raises(SectionMissing):
        section_of("threads-underused", "data")


def test_families_are_one_story():
    assert FAMILIES == {1: "env", 2: "ckpt", 3: "nan-hunt", 4: "count", 5: "data", 6: "errors",
                        7: "distributed", 8: "watch"}
    readme = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    for digit, family in FAMILIES.items():
        assert f"| {digit}xx | {family} |" in readme, f"README's family table lacks {digit}xx {family}"
