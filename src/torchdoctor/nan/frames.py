"""The user's own frame on the live call stack: the innermost one outside torch, torchdoctor and the stdlib."""

from __future__ import annotations

import linecache
import sys
from types import FrameType
from typing import Any

# One definition of "library code" for every command: step.py's, which skips torch, torchdoctor,
# the standard library and <frozen>/<string> pseudo-files but keeps third-party site-packages.
from torchdoctor.frames import is_library_file
from torchdoctor.paths import display_path

Site = tuple[str, int]


def user_site(frame: FrameType | None = None) -> Site | None:
    """``(file, line)`` of the innermost user frame from ``frame`` outwards (default: the caller's)."""
    frame = frame if frame is not None else sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_library_file(filename):
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def describe_site(site: Site | None) -> dict[str, Any] | None:
    """The contract's ``source`` object: ``{"file", "line", "code"}`` (code is that line's text)."""
    if site is None:
        return None
    filename, line = site
    return {"file": display_path(filename), "line": line, "code": linecache.getline(filename, line).strip()}


def user_source() -> dict[str, Any] | None:
    """``describe_site`` of the caller's innermost user frame."""
    return describe_site(user_site(sys._getframe(1)))
