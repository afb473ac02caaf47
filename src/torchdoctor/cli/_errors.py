"""The CLI edge: tool errors become one line on stderr and exit code 2; tracebacks only with --debug."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from torchdoctor.errors import TorchdoctorError


@contextmanager
def exit_on_tool_errors(debug: bool) -> Iterator[None]:
    """Map ``TorchdoctorError`` (and any unexpected exception) to a one-line message and ``typer.Exit(2)``."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except TorchdoctorError as error:
        if debug:
            traceback.print_exc()
        # a message of several lines (every problem in a config file) gets the prefix on each
        _say("\n".join(f"torchdoctor: error: {line}" for line in error.message.splitlines()), error.hint)
        raise typer.Exit(error.exit_code) from None
    except Exception as error:  # a bug in torchdoctor: still one line unless --debug
        if debug:
            traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _say(f"torchdoctor: internal error: {type(error).__name__}: {message}",
             None if debug else "rerun with --debug (or TORCHDOCTOR_DEBUG=1) for the traceback")
        raise typer.Exit(2) from None


def _say(message: str, hint: str | None) -> None:
    sys.stderr.write(message + "\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
