"""``torchdoctor explain ID``: print the registry entry of a finding id."""

from __future__ import annotations

from typing import Annotated

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt
from torchdoctor.cli._output import stdout_console


def explain_command(
    finding_id: Annotated[str, typer.Argument(metavar="ID", help="A finding id such as shm-too-small, or its code.")],
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Explain a finding id: what it means, why it matters, how to fix it."""
    from torchdoctor.explain import explain_id

    with exit_on_tool_errors(debug):
        report = explain_id(finding_id)
    if json:
        from torchdoctor.render.json import render_json

        typer.echo(render_json(report))
    else:
        _print_entry(report.result["entry"])
    raise typer.Exit(0)


def _print_entry(entry: dict) -> None:
    from rich.text import Text

    console = stdout_console()
    console.print(Text(f"{entry['id']} ({entry['code']}, {entry['severity']}, {entry['family']})", style="bold"))
    console.print(entry["summary"], markup=False)
    console.print(Text("why: ", style="bold") + Text(entry["why"]))
    console.print(Text("fix: ", style="bold") + Text(entry["fix"] or "nothing to fix; this is information."))
