"""``torchdoctor env``: judge the machine by running real training steps."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit, stderr_console, stdout_console

CheckOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer reads the annotation at runtime on Python 3.9
    typer.Option("--check", "-c", help="Run only this check (repeatable); see --list-checks."),
]
ListOpt = Annotated[bool, typer.Option("--list-checks", help="List the checks and exit.")]
DistributedOpt = Annotated[bool, typer.Option("--distributed", help="Also launch local ranks with torchrun: "
                                              "collectives, bandwidth and a DDP step.")]
NprocOpt = Annotated[int, typer.Option("--nproc", min=1, help="Ranks for --distributed.")]
BackendOpt = Annotated[Optional[str],  # noqa: UP045
                       typer.Option("--backend", help="gloo or nccl for --distributed (default: nccl with CUDA).")]


def env_command(
    check: CheckOpt = None,
    list_checks: ListOpt = False,
    distributed: DistributedOpt = False,
    nproc: NprocOpt = 2,
    backend: BackendOpt = None,
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Judge this machine: build, GPUs, real training steps, /dev/shm, DataLoader workers, threads, memory."""
    from torchdoctor.env.api import CHECKS, run_env

    if list_checks:
        _print_checks(CHECKS, json)
        raise typer.Exit(0)
    with exit_on_tool_errors(debug):
        with _progress(enabled=not json) as status:
            report = run_env(check, on_progress=(lambda title: status.update(f"checking {title}…"))
                             if status else None)
            if distributed:
                report = _with_distributed(report, nproc, backend, status)
    emit(report, as_json=json, strict=strict)


def _with_distributed(report, nproc: int, backend: str | None, status):
    from torchdoctor.dist.api import DistOptions, add_distributed

    if status:
        status.update(f"launching {nproc} ranks…")
    return add_distributed(report, DistOptions(nproc=nproc, backend=backend))


def _progress(enabled: bool):
    """A spinner on stderr only when stdout and stderr are both terminals: never in pipes, logs or CI."""
    console = stderr_console()
    if not enabled or not (console.is_terminal and stdout_console().is_terminal):
        return nullcontext(None)
    return console.status("checking…")


def _print_checks(checks, as_json: bool) -> None:
    if as_json:
        import json

        typer.echo(json.dumps([{"name": c.name, "title": c.title, "description": c.description} for c in checks],
                              indent=2))
        return
    console = stdout_console()
    for check in checks:
        console.print(f"{check.name:<16} {check.description}", markup=False)
