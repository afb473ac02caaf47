"""Every command's real ``--help`` reads as Python command lines conventionally do.

Flags take no value (no ``<bool>``), values are named TEXT / INTEGER / PATH or by a metavar (no ``<str>``,
no ``<list[str]>``), required arguments are ``NAME`` and optional ones ``[NAME]`` (no ``{NAME}``).
"""

from __future__ import annotations

import re

import pytest
import typer

from torchdoctor.cli import app


def all_command_paths() -> list[list[str]]:
    """[[], ["env"], ..., ["ckpt"], ["ckpt", "inspect"], ...]: every group and command of the real app."""
    paths: list[list[str]] = []

    def walk(command, path):
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


PATHS = all_command_paths()
WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}  # one option per line: a row is easy to read


def test_every_command_is_covered():
    names = {" ".join(path) for path in PATHS}
    assert {"", "env", "nan-hunt", "data", "count", "explain", "check", "ckpt", "ckpt inspect", "ckpt fix",
            "ckpt diff"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "torchdoctor")
def test_help_shows_no_python_types_and_no_braces(cli, path):
    result = cli(*path, "--help", env=WIDE)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert re.search(r"<(?:bool|str|int|float|path|list\[[^\]]*\])>", text) is None, text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    for row in _option_rows(text, "--help", "--json", "--debug", "--strict", "--version"):
        assert re.search(r"--[\w-]+\s+(?:-\w\s+)?(?:TEXT|BOOLEAN|INTEGER)\b", row) is None, row  # flags: no value


def _option_rows(text: str, *flags: str) -> list[str]:
    return [line for line in text.splitlines() if any(re.search(rf"│ {flag}\b", line) for flag in flags)]


@pytest.mark.parametrize(("path", "usage", "row"), [
    (["count"], "Usage: torchdoctor count [OPTIONS] MODEL_SPEC", r"--input-shape\s+TEXT\s"),
    (["count"], None, r"--depth\s+INTEGER\s"),
    (["explain"], "Usage: torchdoctor explain [OPTIONS] [ID|FILE|-]", r"--strict\s+Exit 1"),
    (["ckpt", "fix"], "Usage: torchdoctor ckpt fix [OPTIONS] PATH", r"--to\s+\[zip\|legacy\|safetensors\]\s"),
    (["ckpt", "diff"], "Usage: torchdoctor ckpt diff [OPTIONS] A B", None),
    (["nan-hunt"], "Usage: torchdoctor nan-hunt [OPTIONS] SCRIPT [-- ARGS...]", r"--steps\s+INTEGER\s"),
    ([], "Usage: torchdoctor [OPTIONS] COMMAND [ARGS]...", r"--version\s+Show the version"),
])
def test_conventional_rendering(cli, path, usage, row):
    text = cli(*path, "--help", env=WIDE).stdout
    if usage is not None:
        assert usage in text, text
    if row is not None:
        assert re.search(row, text), text


def test_the_usage_error_names_the_argument_in_capitals(cli):
    result = cli("count", env=WIDE)
    assert result.exit_code == 2 and "Missing argument 'MODEL_SPEC'" in result.stderr
