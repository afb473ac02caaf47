"""Which frames are the user's: not torch, not torchdoctor, not the standard library, not installed packages.

One rule shared by the training-step harness, the data probe and nan-hunt, so every command points at the
same line of the user's code.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import sysconfig
import traceback
from typing import Any


def user_frame(tb) -> dict[str, Any] | None:
    """The innermost traceback frame outside torch, torchdoctor and the standard library."""
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        filename = frame.f_code.co_filename
        if not is_library_file(filename):
            found = frame_facts(filename, lineno, frame.f_code.co_name)
    return found


def frame_facts(filename: str, line: int, function: str) -> dict[str, Any]:
    """The one shape of a user frame in every command's facts: ``{"file", "line", "function", "code"}``."""
    return {"file": filename, "line": line, "function": function, "code": linecache.getline(filename, line).strip()}


@functools.lru_cache(maxsize=1024)
def is_library_file(filename: str) -> bool:
    # Installed packages (transformers, accelerate, lightning...) are libraries too: a Trainer's frames sit
    # between the user's script and the failing op, and pointing at a line inside them helps nobody.
    return is_core_file(filename) or is_installed_package(filename)


@functools.lru_cache(maxsize=1024)
def is_core_file(filename: str) -> bool:
    """torch, torchdoctor, the standard library or a pseudo-file: never the user's code nor a package they called."""
    if filename.startswith("<"):  # <frozen ...>, <string>: nothing to point a user at
        return True
    path = os.path.realpath(filename)
    if any(_is_under(path, root) for root in _library_roots()):
        return True
    paths = sysconfig.get_paths()
    return any(_is_under(path, os.path.realpath(paths[key])) for key in ("stdlib", "platstdlib"))


def is_installed_package(filename: str) -> bool:
    """A file of an installed third-party package (site-packages / dist-packages), e.g. PIL's ``ImageFile.py``."""
    return any(part in ("site-packages", "dist-packages") for part in os.path.realpath(filename).split(os.sep))


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    roots = [os.path.dirname(os.path.realpath(__file__))]
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "__file__", None):
        roots.append(os.path.dirname(os.path.realpath(torch.__file__)))
    return tuple(roots)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
