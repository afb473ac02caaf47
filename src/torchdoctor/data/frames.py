"""Where a user's exception came from: their innermost frame, and what torch's fetcher was doing at the time."""

from __future__ import annotations

import re
import traceback
from typing import Any

from torchdoctor.frames import frame_facts, is_core_file, is_installed_package
from torchdoctor.frames import user_frame as traceback_user_frame

_FETCH_FILE = re.compile(r"torch[\\/]utils[\\/]data[\\/]_utils[\\/]fetch\.py$")
_TEXT_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)', re.MULTILINE)


def user_frame(exc: BaseException) -> dict[str, Any] | None:
    """The user's innermost frame (their ``__getitem__``, not PIL's ``ImageFile.py`` it called): from the
    traceback, or, for an exception re-raised from a DataLoader worker, from the worker's traceback text.

    The shared rule counts third-party code as the user's; here a frame in the user's own files wins, and
    the installed package's frame that raised is kept as ``raised_in``.
    """
    if traceback_user_frame(exc.__traceback__) is None:
        return user_frame_from_text(str(exc))
    walked = traceback.walk_tb(exc.__traceback__)
    return _pick([(frame.f_code.co_filename, line, frame.f_code.co_name) for frame, line in walked])


def user_frame_from_text(text: str) -> dict[str, Any] | None:
    return _pick([(match["file"], int(match["line"]), match["function"]) for match in _TEXT_FRAME.finditer(text)])


def _pick(frames: list[tuple[str, int, str]]) -> dict[str, Any] | None:
    """The innermost frame in the user's own files, else the innermost outside torch and the stdlib."""
    outside = [frame for frame in frames if not is_core_file(frame[0])]
    if not outside:
        return None
    own = [frame for frame in outside if not is_installed_package(frame[0])]
    chain = [(filename, function) for filename, _, function in frames]
    found = _named(frame_facts(*(own or outside)[-1]), chain)
    if own and own[-1] is not outside[-1]:
        found["raised_in"] = frame_facts(*outside[-1])
    return found


def _named(frame: dict[str, Any], chain: list[tuple[str, str]]) -> dict[str, Any]:
    """``<listcomp>`` → ``__getitem__``: a comprehension (its own frame before 3.12) is named by its function."""
    if not frame["function"].startswith("<") or frame["function"] == "<module>":
        return frame
    enclosing = [name for filename, name in chain if filename == frame["file"] and not name.startswith("<")]
    return {**frame, "function": enclosing[-1]} if enclosing else frame


def fetch_context(exc: BaseException) -> dict[str, Any]:
    """What torch's single-process fetcher held when ``exc`` passed through it (``num_workers=0`` only).

    ``indices``: the batch's data-set indices; ``index``: the one ``__getitem__`` was called with (Python
    3.11 keeps it in the comprehension's frame); ``samples``: the fetched samples when collation failed.
    Reading these locals is the only way to name an index under shuffle without reading the data twice.
    """
    context: dict[str, Any] = {}
    for frame, _line in traceback.walk_tb(exc.__traceback__):
        if not _FETCH_FILE.search(frame.f_code.co_filename):
            continue
        local = frame.f_locals
        if isinstance(local.get("possibly_batched_index"), (list, tuple)):
            context["indices"] = [_as_int(i) for i in local["possibly_batched_index"]]
        if "idx" in local:
            context["index"] = _as_int(local["idx"])
        if isinstance(local.get("data"), list):
            context["samples"] = local["data"]
    return context


def _as_int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value
