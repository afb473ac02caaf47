"""``torchdoctor check``: run every check configured in ``[tool.torchdoctor]``; JUnit and GitHub output for CI."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit
from torchdoctor.cli._progress import item_lines

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer evaluates the annotation at runtime
    typer.Option("--config", metavar="FILE",
                 help="A torchdoctor.toml (default: the tool.torchdoctor table of ./pyproject.toml)."),
]
JunitOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--junit", metavar="FILE", help="Also write a JUnit XML report to FILE (a testsuite per item)."),
]
GithubOpt = Annotated[bool, typer.Option(
    "--github", help="Print GitHub Actions ::error/::warning annotation lines before the report.")]


def check_command(
    config: ConfigOpt = None,
    junit: JunitOpt = None,
    github: GithubOpt = False,
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the configured checks (env, ckpt, data, nan-hunt, count, watch); with no config, env."""
    from torchdoctor.check.api import run_check
    from torchdoctor.check.outputs import render_github, render_junit

    if json and github:
        raise typer.BadParameter("--github prints annotation lines; use it without --json", param_hint="--github")
    with exit_on_tool_errors(debug):
        report = run_check(config, on_item=item_lines(enabled=not json))
        if junit is not None:
            write_atomically(junit, render_junit(report))
    if github:
        sys.stdout.write(render_github(report))
        sys.stdout.flush()
    emit(report, as_json=json, strict=strict or report.result["fail_on"] == "warning")


def write_atomically(path: Path, text: str) -> None:
    """Write to a temp file beside ``path`` and rename it into place: no half-written report on a crash."""
    path = path.resolve()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
