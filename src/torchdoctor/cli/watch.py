"""``torchdoctor watch SCRIPT [-- ARGS...]``: run a training script and say why it does not learn."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit, stderr_console
from torchdoctor.cli.nan import NAN_HUNT_CONTEXT, ReportOpt, ScriptArg

WATCH_CONTEXT = NAN_HUNT_CONTEXT  # everything after `--` is the script's own command line

StepsOpt = Annotated[
    Optional[int],  # noqa: UP045 - typer reads the annotation at runtime
    typer.Option("--steps", min=1, help="Watch the first N optimizer steps only; the script still runs to its end."),
]
EveryOpt = Annotated[
    int,
    typer.Option("--every", min=1, metavar="K", help="Sample one step in K (statistics read back once per K steps)."),
]
HtmlOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--html", metavar="FILE", help="Write a self-contained page with the run's pictures to FILE."),
]


def watch_command(
    ctx: typer.Context,
    script: ScriptArg,
    steps: StepsOpt = None,
    every: EveryOpt = 10,
    report: ReportOpt = None,
    html: HtmlOpt = None,
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run SCRIPT as `python SCRIPT ARGS` would (its ARGS after `--`); name why the training does not learn."""
    from torchdoctor.learning.runner import run_watch_script
    from torchdoctor.nan.ranks import rank_context, release_ranks
    from torchdoctor.nan.runner import check_report_path, write_report

    rank = rank_context(command="watch")  # under torchrun: every rank watches, rank 0 alone reports
    with exit_on_tool_errors(debug):
        # absolute now, checked before the run: the script may change folders, a typo must not cost a run
        report = check_report_path(report) if report is not None else None
        html = check_report_path(html) if html is not None else None
        result = run_watch_script(script, list(ctx.args), steps=steps, every=every, stdout_to_stderr=json,
                                  distributed=rank is not None)
        if rank is not None:
            result = _gathered(rank, result)
        if report is not None:
            write_report(result, report)
        if html is not None:
            write_html(result, html)
    try:
        _output(result, as_json=json, to_stderr=report is not None, strict=strict)
    finally:
        if rank is not None:
            release_ranks(rank)  # only now: torchrun stops rank 0 as soon as another rank exits non-zero


def _gathered(rank, result):
    """Rank 0: the report merged from every rank's. Another rank: exits here, with its script's exit code."""
    from torchdoctor.learning.ranks import merge_watch_reports
    from torchdoctor.nan.ranks import gather_ranks

    merged, exit_code = gather_ranks(rank, result, merge=merge_watch_reports,
                                     script_exit_code=result.result.get("exit_code"))
    if merged is None:
        raise typer.Exit(exit_code)
    return merged


def write_html(result, path: Path) -> None:
    """The page, written atomically (a temp file in the same folder, renamed into place)."""
    from torchdoctor.render.watch_html import render_watch_html

    page = render_watch_html(result.to_dict())
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(page)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _output(result, *, as_json: bool, to_stderr: bool, strict: bool) -> None:
    if sys.stderr.isatty() and not as_json:
        _pictures(result)
    if to_stderr and not as_json:
        from torchdoctor.render.human import render_human

        render_human(result, stderr_console())
        raise typer.Exit(result.exit_code(strict=strict))
    emit(result, as_json=as_json, strict=strict)


def _pictures(result) -> None:
    """Loss sparkline and gradient heat strip on a terminal (drawn by render.watch_terminal, when present)."""
    try:
        from torchdoctor.render.watch_terminal import render_watch_pictures
    except ImportError:  # the pictures arrive on another branch; the report stands without them
        return
    render_watch_pictures(result.to_dict()["result"], stderr_console())
