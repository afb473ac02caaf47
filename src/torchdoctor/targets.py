"""Resolve ``file.py:name`` / ``package.module:name`` target specs to live objects from the user's code."""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torchdoctor.errors import TargetError, UserCodeError
from torchdoctor.paths import display_path

__all__ = ["resolve_target", "split_target_spec"]

_SPEC_FORMS = "expected 'file.py:name' or 'package.module:name'"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# site-packages usually lives *inside* the stdlib folder, so it is told apart explicitly.
_STDLIB_DIRS = tuple({os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")})
_THIRD_PARTY = re.compile(r"[\\/](site|dist)-packages[\\/]")

TARGET_MODULE_PREFIX = "torchdoctor_target_"


def split_target_spec(spec: str) -> tuple[str, str]:
    """Split ``where:name`` on the *last* colon (so ``C:\\x\\m.py:Net`` works); validate both halves."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not all(part.isidentifier() for part in name.split(".")):
        raise TargetError(f"invalid target spec {spec!r}: {_SPEC_FORMS}")
    return where, name


def resolve_target(spec: str, *, expect: tuple[type, ...] | None = None,
                   unwrap: Callable[[Any, Callable[[Callable[[], Any]], Any]], Any] | None = None) -> object:
    """Import the spec's module, look up its name, build the object (class -> instance, factory -> result).

    With ``expect``, the result must be an instance of one of those types, else ``TargetError``.
    ``unwrap(obj, call)`` may first turn a built object that is not one into one (a Lightning DataModule
    into its train DataLoader); ``call(fn)`` runs the user's ``fn`` with errors reported as the user's.
    """
    where, name = split_target_spec(spec)
    module = _load_file(where) if where.endswith(".py") else _import_module(where)
    obj = _lookup(module, where, name)
    return _materialize(obj, spec, expect, getattr(module, "__file__", None), unwrap)


# --- loading the module -------------------------------------------------------------------------------


def _load_file(where: str) -> ModuleType:
    """Run a file the way ``python file.py`` sees it (its folder first on sys.path), but not as __main__."""
    path = Path(where).expanduser()
    if not path.is_file():
        hint = f"relative paths start at the current folder, {os.getcwd()}"
        raise TargetError(f"no such file: '{where}'", hint=hint)
    path = path.resolve()
    _add_sys_path(str(path.parent))
    mod_name = _module_name(path)
    cached = sys.modules.get(mod_name)
    if cached is not None and getattr(cached, "__file__", None) == str(path):
        # Two targets from one file (model, optimizer) must share one module, not two copies of its classes.
        return cached
    return _exec_file(mod_name, path, where)


def _exec_file(mod_name: str, path: Path, where: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load '{where}' as a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs: dataclasses and pickle look classes up through sys.modules[__module__].
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(mod_name, None)
        raise _user_code_error(exc, str(path), where) from exc
    return module


def _module_name(path: Path) -> str:
    """A name no real import will collide with: the stem (readable in reprs) plus a hash of the full path."""
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{TARGET_MODULE_PREFIX}{stem}_{digest}"


def is_target_module(name: str) -> bool:
    """A module torchdoctor loaded from a ``file.py:name`` spec: its name means nothing to the user."""
    return name.startswith(TARGET_MODULE_PREFIX)


def _add_sys_path(folder: str) -> None:
    # Kept for the object's lifetime: its methods may import siblings lazily.
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _import_module(where: str) -> ModuleType:
    hint = _not_a_module_hint(where)
    if not all(part.isidentifier() for part in where.split(".")):
        raise TargetError(f"cannot import module '{where}': not a module name", hint=hint)
    # `python -m` would see packages in the current folder; the console script would not. Appended, so a
    # stray local file never shadows an installed module.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and (where == exc.name or where.startswith(exc.name + ".")):
            raise TargetError(f"cannot import module '{where}': {exc}", hint=hint) from exc
        raise _user_code_error(exc, None, where) from exc
    except (Exception, SystemExit) as exc:
        raise _user_code_error(exc, None, where) from exc


def _not_a_module_hint(where: str) -> str:
    if os.path.exists(where):
        return f"'{where}' is a file but not a .py file; only Python files can be loaded"
    return "a file path must end in .py; a module must be importable from here"


# --- finding the name and building the object ---------------------------------------------------------


def _lookup(module: ModuleType, where: str, name: str) -> Any:
    obj: Any = module
    parts = name.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            owner = where if i == 0 else f"{where}:{'.'.join(parts[:i])}"
            raise TargetError(f"'{owner}' has no attribute '{part}'", hint=_close_names(obj, part)) from exc
    return obj


def _close_names(owner: Any, wanted: str) -> str | None:
    public = [n for n in dir(owner) if not n.startswith("_")]
    close = difflib.get_close_matches(wanted, public, n=3) or difflib.get_close_matches(
        wanted.lower(), [n.lower() for n in public], n=3
    )
    return "did you mean " + " or ".join(repr(n) for n in close) + "?" if close else None


def _materialize(obj: Any, spec: str, expect: tuple[type, ...] | None, user_file: str | None,
                 unwrap: Callable[..., Any] | None = None) -> Any:
    if expect and isinstance(obj, expect):
        return obj
    called = isinstance(obj, type) or _is_factory(obj)
    result = _call(obj, spec, user_file) if called else obj
    if unwrap is not None and expect and not isinstance(result, expect):
        result = unwrap(result, lambda fn: _call(fn, spec, user_file))
    if expect and not isinstance(result, expect):
        verb = "returned" if called else "is"
        hint = _NOT_A_FACTORY_HINT if called and result is None and not isinstance(obj, type) else None
        raise TargetError(f"{spec} {verb} {_type_name(result)}, expected {_describe(expect)}", hint=hint)
    return result


def _is_factory(obj: Any) -> bool:
    # Only real functions are called: a callable *instance* (say an nn.Module) is the object, not a factory.
    return inspect.isroutine(obj) or isinstance(obj, functools.partial)


def _call(obj: Any, spec: str, user_file: str | None) -> Any:
    missing = _missing_params(obj)
    if missing:
        raise _needs_arguments(spec, ", ".join(missing))
    try:
        return obj()
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            # Raised by the call itself (no signature to check beforehand): it wanted arguments.
            raise _needs_arguments(spec, str(exc)) from exc
        raise _user_code_error(exc, user_file, spec) from exc
    except SystemExit as exc:
        raise _exited_when_called(exc, spec) from exc
    except Exception as exc:
        raise _user_code_error(exc, user_file, spec) from exc


_NOT_A_FACTORY_HINT = ("name the model class or a function that returns the model (e.g. train.py:Net), "
                       "not the script's main()")


def _exited_when_called(exc: SystemExit, spec: str) -> UserCodeError:
    """The named function exited: a script's ``main()`` (argparse reading torchdoctor's own argv), not a factory.

    The module itself imported fine, so "move script code under __main__" would blame a guarded file.
    """
    code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
    return UserCodeError(f"{spec} named a function that is not a model factory: calling it exited with code "
                         f"{code or 0} (a script's main() parses the command line it was given, here torchdoctor's)",
                         hint=_NOT_A_FACTORY_HINT)


def _missing_params(obj: Any) -> list[str]:
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: find out by calling
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.default is p.empty and p.kind not in variadic]


def _needs_arguments(spec: str, detail: str) -> TargetError:
    return TargetError(
        f"{spec} needs arguments ({detail}), but a target is called with none",
        hint="point the target at an object, or at a function with no parameters that builds it",
    )


def _type_name(obj: Any) -> str:
    return "None" if obj is None else _qualified(type(obj))


def _describe(types: tuple[type, ...]) -> str:
    names = [_qualified(t) for t in types]
    return " or ".join(("an " if n[0].lower() in "aeiou" else "a ") + n for n in names)


def _qualified(cls: type) -> str:
    """Shortest public dotted name: ``torch.nn.Module``, not ``torch.nn.modules.module.Module``."""
    if cls.__module__ == "builtins" or is_target_module(cls.__module__):
        return cls.__qualname__  # the user's own class: the internal name of its loaded file says nothing
    parts = cls.__module__.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if getattr(sys.modules.get(prefix), cls.__qualname__, None) is cls:
            return f"{prefix}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


# --- errors from the user's own code ------------------------------------------------------------------


def _user_code_error(exc: BaseException, user_file: str | None, label: str) -> UserCodeError:
    """One line, ``file:line: ExcType: message``, at the frame the user can fix."""
    location = _syntax_location(exc) or _frame_location(exc, user_file) or label
    lines = str(exc).strip().splitlines()
    text = f"{location}: {type(exc).__name__}" + (f": {lines[0]}" if lines else "")
    hint = None
    if isinstance(exc, SystemExit):
        hint = "the module exits when imported; move script code under `if __name__ == \"__main__\":`"
    return UserCodeError(text, hint=hint)


def _syntax_location(exc: BaseException) -> str | None:
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno and not exc.filename.startswith("<"):
        return f"{display_path(exc.filename)}:{exc.lineno}"
    return None


def _frame_location(exc: BaseException, user_file: str | None) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    real = os.path.realpath(user_file) if user_file else None
    tiers = (
        [f for f in frames if real and os.path.realpath(f.filename) == real],
        [f for f in frames if not _is_ours(f.filename) and not _is_stdlib(f.filename)],
        [f for f in frames if not _is_ours(f.filename)],
    )
    for tier in tiers:
        if tier:
            return f"{display_path(tier[-1].filename)}:{tier[-1].lineno}"
    return None


def _is_ours(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _is_stdlib(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap> and friends
        return True
    path = os.path.abspath(filename)
    return path.startswith(_STDLIB_DIRS) and not _THIRD_PARTY.search(path)

