"""The ``torchdoctor`` command line: a thin Typer layer over the Python API (no torch import here)."""

from __future__ import annotations

from typing import Annotated

import typer

from torchdoctor import __version__
from torchdoctor.cli.check import check_command
from torchdoctor.cli.ckpt import app as ckpt_app
from torchdoctor.cli.count import count_command
from torchdoctor.cli.data import data_command
from torchdoctor.cli.env import env_command
from torchdoctor.cli.explain import explain_command
from torchdoctor.cli.nan import NAN_HUNT_CONTEXT, nan_hunt_command
from torchdoctor.cli.watch import WATCH_CONTEXT, watch_command

app = typer.Typer(
    name="torchdoctor",
    help="A doctor for PyTorch training: judges the machine, names the cause, says the fix.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# in the order people meet their problems: machine, checkpoints, NaNs, learning, data, compute, errors
app.command("env")(env_command)
app.add_typer(ckpt_app, name="ckpt")
app.command("nan-hunt", context_settings=NAN_HUNT_CONTEXT)(nan_hunt_command)
app.command("watch", context_settings=WATCH_CONTEXT)(watch_command)
app.command("data")(data_command)
app.command("count")(count_command)
app.command("explain")(explain_command)
app.command("check")(check_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"torchdoctor {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """A doctor for PyTorch training: judges the machine, names the cause, says the fix."""


def main() -> None:
    app()
