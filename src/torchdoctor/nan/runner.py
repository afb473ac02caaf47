"""Run a training script as ``python SCRIPT ARGS`` would, in this process, under the NaN hunt.

In-process on purpose: the hunt's hooks and patches must see the script's model, loss and optimizer.
How the script ended (completed, ``sys.exit(n)``, an exception, Ctrl-C) becomes findings and
``result.script``; a script that cannot even be compiled is a ``UserCodeError`` (exit 2).
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import linecache
import os
import sys
import sysconfig
import tempfile
import traceback
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.errors import InputError, UserCodeError
from torchdoctor.paths import display_path
from torchdoctor.report import Finding, Report

__all__ = ["Ending", "check_report_path", "run_script", "write_report"]

MAX_TRACEBACK_FRAMES = 10
_MAX_MESSAGE_CHARS = 2000
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


class Ending(str, enum.Enum):
    """How the script's run ended."""

    COMPLETED = "completed"  # ran to its end (or sys.exit(0))
    EXITED = "exited"  # sys.exit(n) with n != 0
    FAILED = "failed"  # raised an exception
    INTERRUPTED = "interrupted"  # KeyboardInterrupt (Ctrl-C)
    STOPPED = "stopped"  # the hunt stopped it: first non-finite value, or --steps reached


@dataclass(frozen=True)
class ScriptOutcome:
    """The facts of one ending; ``exception`` is the ``SystemExit`` or error that ended it, if any."""

    ending: Ending
    exception: BaseException | None = None


def run_script(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    steps: int | None = None,
    keep_going: bool = False,
    check_inf: bool = True,
    stdout_to_stderr: bool = False,
    distributed: bool = False,
) -> Report:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` inside ``nan_hunt``; return its report.

    ``stdout_to_stderr`` sends the script's ``print`` output to stderr (so stdout can hold a JSON
    report). ``sys.argv``, ``sys.path``, ``sys.modules["__main__"]`` and the working folder are
    restored afterwards. ``distributed`` (a torchrun rank) also watches DistributedDataParallel models.
    """
    script = os.fspath(script)
    path = script_path(script)
    code = compile_script(path, script)
    from torchdoctor.nan.ddp import DdpWatch
    from torchdoctor.nan.hunt import nan_hunt

    outcome = ScriptOutcome(Ending.STOPPED)  # stays so only when the hunt's HuntStopped ends the run
    ddp = DdpWatch() if distributed else None
    with as_main(script, path, args) as module, stdout_redirect(stdout_to_stderr):
        hunt = nan_hunt(check_inf=check_inf, max_steps=steps, keep_going=keep_going)
        with hunt, ddp or contextlib.nullcontext():
            outcome = execute_script(code, module)
    findings = judge_outcome(outcome, Path(os.path.realpath(path)).parent)
    extra_result = _script_facts(script, args, outcome)
    if ddp is not None:
        findings += _ddp_findings(ddp, findings)
        extra_result["ddp"] = ddp.facts.to_dict()
    return hunt.build_report(extra_findings=findings, extra_result=extra_result)


def _ddp_findings(ddp: Any, findings: tuple[Finding, ...]) -> tuple[Finding, ...]:
    from torchdoctor.nan.ddp import check_ddp

    explained = next((f.details.get("explained_by") for f in findings if f.id == "script-failed"), None)
    return tuple(check_ddp(ddp.facts, failure_explained_by=explained))


# --- preparing the script ------------------------------------------------------------------------------


def script_path(script: str) -> Path:
    path = Path(script).expanduser()
    if not path.exists():
        raise InputError(f"no such file: '{script}'", hint=f"relative paths start at the current folder, {os.getcwd()}")
    if not path.is_file():
        raise InputError(f"'{script}' is not a file", hint="pass the training script itself, e.g. train.py")
    return Path(os.path.abspath(path))  # python keeps a symlink's own path in __file__; sys.path[0] resolves it


def compile_script(path: Path, script: str) -> types.CodeType:
    """Compile first, so a syntax error is the user's code failing to load (exit 2), not a finding."""
    try:
        source = path.read_bytes()  # bytes: compile() honours a PEP 263 coding cookie like python does
    except OSError as exc:
        raise InputError(f"cannot read '{script}': {exc.strerror or exc}") from exc
    try:
        return compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{display_path(exc.filename or str(path))}:{exc.lineno}" if exc.lineno else display_path(str(path))
        raise UserCodeError(f"{where}: {type(exc).__name__}: {exc.msg}") from exc
    except ValueError as exc:  # e.g. "source code string cannot contain null bytes"
        raise UserCodeError(f"{display_path(str(path))}: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def as_main(script: str, path: Path, args: Sequence[str]) -> Iterator[types.ModuleType]:
    """A fresh ``__main__`` module, argv and sys.path as ``python SCRIPT ARGS`` sets them; all restored.

    Not ``runpy.run_path``: it rewrites ``sys.argv[0]`` to the path it is given, and a script must see
    the path as typed in ``sys.argv[0]`` but an absolute ``__file__``, as under ``python SCRIPT``.
    """
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    module.__builtins__ = builtins
    module.__loader__ = SourceFileLoader("__main__", str(path))
    module.__cached__ = None
    saved_argv, saved_path, saved_cwd = sys.argv, list(sys.path), os.getcwd()
    saved_main = sys.modules.get("__main__")
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.realpath(path)))
    sys.modules["__main__"] = module
    try:
        yield module
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path  # in place: other code holds a reference to this very list
        if saved_main is None:
            sys.modules.pop("__main__", None)
        else:
            sys.modules["__main__"] = saved_main
        with contextlib.suppress(OSError):
            os.chdir(saved_cwd)


def stdout_redirect(to_stderr: bool) -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(sys.stderr) if to_stderr else contextlib.nullcontext()


def execute_script(code: types.CodeType, module: types.ModuleType) -> ScriptOutcome:
    """Run the code; every ending but the hunt's own ``HuntStopped`` (a BaseException) becomes an outcome."""
    from torchdoctor.nan.hunt import HuntStopped

    try:
        exec(code, module.__dict__)
    except HuntStopped:
        raise  # the hunt's __exit__ takes it: a clean stop, not the script's failure
    except SystemExit as exc:
        return ScriptOutcome(Ending.COMPLETED if _exit_status(exc) == 0 else Ending.EXITED, exc)
    except KeyboardInterrupt as exc:
        return ScriptOutcome(Ending.INTERRUPTED, exc)
    except BaseException as exc:  # noqa: B036 - python reports any other BaseException as a failure too
        return ScriptOutcome(Ending.FAILED, exc)
    finally:
        with contextlib.suppress(Exception):  # the script may have closed or replaced stdout
            sys.stdout.flush()  # its output comes before the report, also through a pipe
    return ScriptOutcome(Ending.COMPLETED)


# --- judging the ending ----------------------------------------------------------------------------------


def judge_outcome(outcome: ScriptOutcome, script_dir: Path) -> tuple[Finding, ...]:
    if outcome.ending is Ending.FAILED and outcome.exception is not None:
        return (_failure_finding(outcome.exception, script_dir),)
    if outcome.ending is Ending.EXITED and isinstance(outcome.exception, SystemExit):
        return (_exit_finding(outcome.exception, script_dir),)
    return ()


def _failure_finding(exc: BaseException, script_dir: Path) -> Finding:
    frames = _user_frames(exc, script_dir)
    where = _frame_location(frames[-1]) if frames else None
    headline = _headline(exc)
    condition = _failed_assert(exc, frames)
    if condition is not None and not headline.startswith("assert "):  # pytest's rewritten asserts say it already
        headline = f"{headline} (assert {condition} failed)" if headline else f"assert {condition} failed"
    from torchdoctor.explain.rules import match_exception  # one knowledge base for every command

    explained = match_exception(exc, model_errors=True)
    headline += f" ({explained.sentence})" if explained is not None else ""  # the location stays last
    message = f"{type(exc).__name__}" + (f": {headline}" if headline else "") + (f" at {where}" if where else "")
    details = {
        "exc_type": type(exc).__name__,
        "message": str(exc)[:_MAX_MESSAGE_CHARS],
        "traceback": [_frame_dict(frame) for frame in frames[-MAX_TRACEBACK_FRAMES:]],
        "python_traceback": python_traceback(exc),
    }
    if explained is not None:
        details["explained_by"] = explained.id
    if condition is not None:
        details["assertion"] = condition
    return make_finding("script-failed", message, location=where, details=details)


def python_traceback(exc: BaseException) -> str:
    """The traceback text ``python SCRIPT`` prints for ``exc``, chained exceptions included.

    Only our own frames go (the ``exec`` that ran the script, the hunt's hooks and wrappers): under plain
    python they do not exist. Every other frame, torch's too, stays as python shows it.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    seen: set[int] = set()
    pending = [report]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list([f for f in current.stack if not _is_ours(f.filename)])
        pending.extend(e for e in (current.__cause__, current.__context__, *(current.exceptions or ())) if e)
    return "".join(report.format())


def _exit_finding(exc: SystemExit, script_dir: Path) -> Finding:
    status = _exit_status(exc)
    frames = _user_frames(exc, script_dir)
    where = _frame_location(frames[-1]) if frames else None
    text = None if isinstance(exc.code, int) else str(exc.code)  # sys.exit("msg") exits 1 after printing msg
    message = f"the script exited with code {status}" + (f" at {where}" if where else "")
    message += f": {text}" if text else ""
    return make_finding("script-exit-code", message, location=where, details={"exit_code": status, "message": text})


def _exit_status(exc: SystemExit) -> int:
    """The status ``python SCRIPT`` would exit with: None -> 0, an int -> itself, anything else -> 1."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def _headline(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _failed_assert(exc: BaseException, frames: list[traceback.FrameSummary]) -> str | None:
    """The condition of the user's ``assert`` statement that raised ``exc`` (``t <= self.block_size``).

    None unless ``exc`` is an AssertionError raised in the user's last frame, on a line starting ``assert``
    (an assert inside torch is torch's, not the user's check). Python 3.11+ marks the failed condition's
    columns; older ones give the whole line.
    """
    raised = traceback.extract_tb(exc.__traceback__)[-1:] if isinstance(exc, AssertionError) else []
    if not raised or not frames or not (frames[-1].line or "").startswith("assert"):
        return None
    frame = frames[-1]
    if (raised[0].filename, raised[0].lineno) != (frame.filename, frame.lineno):
        return None
    columns = (getattr(frame, "colno", None), getattr(frame, "end_colno", None))
    if getattr(frame, "end_lineno", None) != frame.lineno or None in columns:
        return frame.line.removeprefix("assert").strip()
    source = linecache.getline(frame.filename, frame.lineno).encode()  # the columns count UTF-8 bytes
    condition = source[columns[0]:columns[1]].decode(errors="replace").strip()
    return condition or frame.line.removeprefix("assert").strip()


def _script_facts(script: str, args: Sequence[str], outcome: ScriptOutcome) -> dict[str, Any]:
    facts = {
        "path": script,
        "argv": [script, *args],
        "ended": outcome.ending.value,
        "exit_code": python_exit_code(outcome),
    }
    return {"script": facts, "interrupted": outcome.ending is Ending.INTERRUPTED}


def python_exit_code(outcome: ScriptOutcome) -> int | None:
    """What ``python SCRIPT`` would have exited with; None when the hunt stopped the script early."""
    if isinstance(outcome.exception, SystemExit):
        return _exit_status(outcome.exception)
    return {Ending.COMPLETED: 0, Ending.FAILED: 1, Ending.INTERRUPTED: 130}.get(outcome.ending)


# --- the user's frames ---------------------------------------------------------------------------------


def _user_frames(exc: BaseException, script_dir: Path) -> list[traceback.FrameSummary]:
    """The traceback's frames in the user's files: under the script's folder first, else outside libraries."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_ours(f.filename)]
    root = str(script_dir)
    tiers = (
        [f for f in frames if _is_under(f.filename, root) and not _is_library(f.filename)],
        [f for f in frames if not _is_library(f.filename)],
        frames,
    )
    return next((tier for tier in tiers if tier), [])


def _is_ours(filename: str) -> bool:
    return _is_under(filename, _PACKAGE_DIR)


def _is_library(filename: str) -> bool:
    """torch, torchdoctor, the standard library, installed packages, and ``<frozen ...>`` code."""
    if filename.startswith("<"):
        return True
    path = os.path.realpath(filename)
    if any(part in ("site-packages", "dist-packages") for part in path.split(os.sep)):
        return True
    torch = sys.modules.get("torch")
    roots = [_PACKAGE_DIR, *(os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib"))]
    if torch is not None and getattr(torch, "__file__", None):
        roots.append(os.path.dirname(os.path.realpath(torch.__file__)))
    return any(_is_under(path, root) for root in roots)


def _is_under(filename: str, root: str) -> bool:
    path = os.path.realpath(filename)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _frame_location(frame: traceback.FrameSummary) -> str:
    return f"{display_path(frame.filename)}:{frame.lineno}"


def _frame_dict(frame: traceback.FrameSummary) -> dict[str, Any]:
    return {"file": display_path(frame.filename), "line": frame.lineno, "function": frame.name, "code": frame.line}



# --- writing the report --------------------------------------------------------------------------------


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """The absolute report path, checked before the run (a typo should not cost a training run)."""
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise InputError(f"cannot write the report: '{path}' is a folder")
    if not target.parent.is_dir():
        raise InputError(f"cannot write the report: no such folder '{target.parent}'")
    if not os.access(target.parent, os.W_OK):
        raise InputError(f"cannot write the report: folder '{target.parent}' is not writable")
    return target


def write_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write the JSON report to ``path`` atomically: a temp file in the same folder, renamed into place."""
    from torchdoctor.render.json import render_json

    target = check_report_path(path)
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InputError(f"cannot write the report in '{target.parent}': {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render_json(report) + "\n")
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
