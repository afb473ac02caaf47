"""Errors that mean torchdoctor could not do its job (exit code 2).

Problems found *in* the user's artifact are findings, not exceptions; these are for
bad usage, unreadable input and user code that fails to import. The CLI maps every
``TorchdoctorError`` to one line on stderr (see ``cli/_errors.py``).
"""

from __future__ import annotations


class TorchdoctorError(Exception):
    """Base class: ``message`` is one line; ``hint`` says what to do next, or is None."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(TorchdoctorError):
    """The command line asked for something that does not exist (e.g. an unknown check)."""


class TargetError(TorchdoctorError):
    """A target spec (``file.py:name`` / ``pkg.mod:name``) could not be resolved."""


class UserCodeError(TargetError):
    """The user's own module raised while it was being imported or called."""


class InputError(TorchdoctorError):
    """An input file is missing or unreadable."""


class WriteFailed(TorchdoctorError):
    """An output could not be written (disk full, permissions, ...): nothing partial is left, the input untouched."""
