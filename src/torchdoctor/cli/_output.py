"""Print a report in the chosen mode and exit with the contract's code."""

from __future__ import annotations

import sys

import typer

from torchdoctor.report import Report


def emit(report: Report, *, as_json: bool, strict: bool) -> None:
    """JSON (one object, stdout) or the human rendering; then exit 0/1 per the report's findings."""
    if as_json:
        from torchdoctor.render.json import render_json

        sys.stdout.write(render_json(report) + "\n")
    else:
        from torchdoctor.render.human import render_human

        render_human(report, stdout_console())
    raise typer.Exit(report.exit_code(strict=strict))


def stdout_console():
    """A Rich console for stdout: colour only on a TTY (Rich's default), NO_COLOR honoured, no wrapping."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)
