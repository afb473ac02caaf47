"""``python -m torchdoctor.docs``: a real argparse command line, not Markdown on ``--help``."""

from __future__ import annotations

import pytest

from torchdoctor.docs import main, render_findings_markdown


def test_help_is_a_usage_text_not_the_markdown(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith("usage: python -m torchdoctor.docs") and "--write PATH" in out
    assert "# torchdoctor findings" not in out


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_write_and_print(tmp_path, capsys):
    target = tmp_path / "findings.md"
    assert main(["--write", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_findings_markdown()
    assert capsys.readouterr().out == ""
    assert main([]) == 0
    assert capsys.readouterr().out == render_findings_markdown()
