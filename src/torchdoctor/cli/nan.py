"""``torchdoctor nan-hunt SCRIPT [-- ARGS...]``: run a training script and name the first NaN/inf producer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit, stderr_console

# Everything after `--` (and options nan-hunt does not know) is the script's own command line.
NAN_HUNT_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}

ScriptArg = Annotated[
    str,  # a str, not a Path: the script must see its path exactly as typed in sys.argv[0]
    typer.Argument(metavar="SCRIPT", help="The training script, run as `python SCRIPT ARGS...` would run it."),
]
StepsOpt = Annotated[
    Optional[int],  # noqa: UP045 - typer reads the annotation at runtime
    typer.Option("--steps", min=1, help="Stop cleanly after N optimizer steps (not a failure)."),
]
KeepGoingOpt = Annotated[
    bool,
    typer.Option("--keep-going", help="Do not stop at the first non-finite value; record and run on."),
]
NoInfOpt = Annotated[bool, typer.Option("--no-inf", help="Hunt NaN only; let inf values pass.")]
ReportOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--report",
        metavar="FILE",
        help="Write the JSON report to FILE; the summary goes to stderr, so stdout is the script's alone.",
    ),
]


def nan_hunt_command(
    ctx: typer.Context,
    script: ScriptArg,
    steps: StepsOpt = None,
    keep_going: KeepGoingOpt = False,
    no_inf: NoInfOpt = False,
    json: JsonOpt = False,
    report: ReportOpt = None,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run SCRIPT as `python SCRIPT ARGS` would (its ARGS after `--`); name the first op that made NaN or inf."""
    from torchdoctor.nan.ranks import gather_ranks, rank_context, release_ranks
    from torchdoctor.nan.runner import check_report_path, run_script, write_report

    rank = rank_context()  # under torchrun: every rank hunts, rank 0 alone reports
    with exit_on_tool_errors(debug):
        if report is not None:
            report = check_report_path(report)  # absolute now: the script may change the working folder
        result = run_script(
            script, list(ctx.args), steps=steps, keep_going=keep_going, check_inf=not no_inf, stdout_to_stderr=json,
            distributed=rank is not None,
        )
        _print_script_traceback(result)
        if rank is not None:
            result, exit_code = gather_ranks(rank, result)
            if result is None:
                raise typer.Exit(exit_code)
        if report is not None:
            write_report(result, report)
    try:
        _output(result, as_json=json, to_stderr=report is not None, strict=strict)
    finally:
        if rank is not None:
            release_ranks(rank)  # only now: torchrun stops rank 0 as soon as another rank exits non-zero


def _print_script_traceback(result) -> None:
    """The script's own traceback on stderr, exactly as `python SCRIPT` prints it, before our report."""
    import sys

    for finding in result.findings:
        text = finding.details.get("python_traceback") if finding.id == "script-failed" else None
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()


def _output(result, *, as_json: bool, to_stderr: bool, strict: bool) -> None:
    if to_stderr and not as_json:
        from torchdoctor.render.human import render_human

        render_human(result, stderr_console())
        raise typer.Exit(result.exit_code(strict=strict))
    emit(result, as_json=as_json, strict=strict)
