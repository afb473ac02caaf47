"""Options shared by every command, as ``Annotated`` aliases (one definition, same help everywhere)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON report on stdout, nothing else.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too, not only on errors.")]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", envvar="TORCHDOCTOR_DEBUG", help="Show tracebacks of torchdoctor's own errors."),
]
