"""``torchdoctor explain [ID|FILE|-]``: a finding id's registry entry, or the known errors in a traceback/log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit, stderr_console, stdout_console

TargetArg = Annotated[
    Optional[str],  # noqa: UP045 - typer evaluates the annotation at runtime
    typer.Argument(metavar="ID|FILE|-", help="A finding id (shm-too-small) or code (TD109); a file holding a "
                   "traceback or log; '-' or nothing for stdin (a pipe, or a paste ended with Ctrl-D)."),
]

PASTE_PROMPT = ("Paste the traceback or log, then press Ctrl-D on an empty line (Ctrl-Z then Enter on Windows) "
                "to explain it.")


def explain_command(target: TargetArg = None, json: JsonOpt = False, strict: StrictOpt = False,
                    debug: DebugOpt = False) -> None:
    """Explain a finding id, or the errors in a pasted traceback or log: cause and fix of each.

    Exit codes, as for every command:
    1 a known error matched (an error finding; with --strict, a warning too);
    0 nothing matched, only warnings matched, or an id's entry was printed;
    2 the input cannot be read.
    """
    from torchdoctor.explain import explain_id, explain_source, is_finding_id

    with exit_on_tool_errors(debug):
        if target is not None and target != "-" and (is_finding_id(target) or not _looks_like_path(target)):
            report = explain_id(target)  # unknown ids exit 2 with a suggestion
        else:
            if target is None and sys.stdin.isatty():  # a person at a terminal: read their paste
                stderr_console().print(PASTE_PROMPT, markup=False)
                target = "-"
            report = explain_source(target, stdin=sys.stdin)
    if "entry" in report.result:
        _print_entry(report, json)
        raise typer.Exit(0)
    if not json and not report.findings:
        stdout_console().print(f"No known error in {report.result['source']}: "
                               f"{len(report.result['errors_found'])} error(s) found, none that torchdoctor "
                               "can explain.", markup=False)
        raise typer.Exit(0)
    emit(report, as_json=json, strict=strict)


def _looks_like_path(target: str) -> bool:
    return Path(target).exists() or "/" in target or "\\" in target or Path(target).suffix != ""


def _print_entry(report, as_json: bool) -> None:
    from rich.text import Text

    if as_json:
        from torchdoctor.render.json import render_json

        typer.echo(render_json(report))
        return
    entry = report.result["entry"]
    console = stdout_console()
    console.print(Text(f"{entry['id']} ({entry['code']}, {entry['severity']}, {entry['family']})", style="bold"))
    console.print(entry["summary"], markup=False)
    console.print(Text("why: ", style="bold") + Text(entry["why"]))
    console.print(Text("fix: ", style="bold") + Text(entry["fix"] or "nothing to fix; this is information."))
