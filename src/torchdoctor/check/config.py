"""Load and validate ``[tool.torchdoctor]`` (pyproject.toml) or a ``torchdoctor.toml`` into dataclasses."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from torchdoctor.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (needs `tomli; python_version < "3.11"` in the dependencies)
    import tomli as tomllib

PYPROJECT = "pyproject.toml"
STANDALONE = "torchdoctor.toml"
FAIL_ON = ("error", "warning")
ITEM_KINDS = ("env", "ckpt", "data", "nan-hunt", "count", "watch")


class ConfigError(UsageError):
    """The check configuration is wrong (unknown key, wrong type, missing file, unknown id): exit 2."""


@dataclass(frozen=True)
class IgnoreRule:
    id: str
    reason: str | None = None


@dataclass(frozen=True)
class Item:
    """One configured check: its kind, a display name, its options (snake_case) and where it is written."""

    kind: str
    name: str
    options: Mapping[str, Any]
    file: str | None = None
    """Config-relative file the item is about (checkpoint, script, loader spec file), for annotations."""
    line: int | None = None
    """Line of the item's table in the config file."""


@dataclass(frozen=True)
class CheckConfig:
    root: Path
    """Folder that relative paths start from (the config file's folder)."""
    path: Path | None = None
    """The config file, or None when none was found (then only ``env`` runs)."""
    fail_on: str = "error"
    ignore: tuple[IgnoreRule, ...] = ()
    items: tuple[Item, ...] = field(default_factory=tuple)

    @property
    def strict(self) -> bool:
        return self.fail_on == "warning"

    def display_path(self) -> str | None:
        return self.path.name if self.path is not None else None


# key -> (accepted types, required); keys as written in TOML
_STR, _INT, _BOOL = (str,), (int,), (bool,)
_SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "env": {"checks": ((list,), False)},
    "ckpt": {"path": (_STR, True), "model": (_STR, False), "input-shape": ((list,), False),
             "scan-values": (_BOOL, False)},
    "data": {"loader": (_STR, True), "model": (_STR, False), "batches": (_INT, False), "num-classes": (_INT, False),
             "loss": (_STR, False), "input-key": ((str, int), False), "target-key": ((str, int), False),
             "timeout": ((int, float), False)},
    "nan-hunt": {"script": (_STR, True), "args": ((list,), False), "steps": (_INT, False),
                 "timeout": ((int, float), False)},
    "count": {"model": (_STR, True), "input-shape": ((list,), False), "max-params": (_INT, False),
              "max-macs": (_INT, False)},
    "watch": {"script": (_STR, True), "args": ((list,), False), "steps": (_INT, False),
              "timeout": ((int, float), False)},
}
_TOP_KEYS = {"fail-on", "ignore", *ITEM_KINDS}
_FILE_KINDS = ("ckpt", "nan-hunt", "watch")  # items about a file (not a ``file.py:name`` spec)


def find_config(cwd: Path) -> Path | None:
    """``pyproject.toml`` with a ``[tool.torchdoctor]`` table, else ``torchdoctor.toml``, else None."""
    pyproject = cwd / PYPROJECT
    if pyproject.is_file() and "torchdoctor" in _read_toml(pyproject, None).get("tool", {}):
        return pyproject
    standalone = cwd / STANDALONE
    return standalone if standalone.is_file() else None


def load_config(config_path: Path | None = None, cwd: Path | None = None) -> CheckConfig:
    """Read and validate the config; with none found, a config that runs every env check."""
    cwd = Path(cwd or Path.cwd())
    if config_path is not None:
        path = (cwd / config_path).resolve()
        shown = str(config_path)  # errors name the file as the user wrote it
        if not path.is_file():
            raise ConfigError(f"no such config file: '{config_path}'")
    else:
        found = find_config(cwd)
        if found is None:
            return CheckConfig(root=cwd, items=(Item("env", "env", {"checks": None}),))
        path, shown = found.resolve(), found.name
    text = path.read_text(encoding="utf-8")
    prefix = "tool.torchdoctor" if path.name == PYPROJECT else ""
    data = _read_toml(path, text, shown)
    if prefix:
        data = data.get("tool", {}).get("torchdoctor", {})
    return _Validator(path, text, prefix, shown).config(data)


def _read_toml(path: Path, text: str | None, shown: str | None = None) -> dict[str, Any]:
    try:
        return tomllib.loads(text if text is not None else path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{shown or path.name}: invalid TOML: {error}") from None


class _Problem(Exception):
    """One thing wrong in the config; the validator records it and goes on, so a run reports them all."""

    def __init__(self, message: str, hint: str | None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


_FAILED = object()  # what a failed step returns instead of a value


class _Validator:
    """Turns the parsed table into a ``CheckConfig``; every error names the key and its line."""

    def __init__(self, path: Path, text: str, prefix: str, shown: str | None = None) -> None:
        self.path, self.root, self.prefix = path, path.parent, prefix
        self.shown = shown or path.name
        self.lines = text.splitlines()
        self.problems: list[_Problem] = []

    def config(self, data: Mapping[str, Any]) -> CheckConfig:
        for key in data:
            if key not in _TOP_KEYS:
                self.attempt(self.fail, f"unknown key '{key}'", None, None, key,
                             f"known keys: {', '.join(sorted(_TOP_KEYS))}")
        fail_on = data.get("fail-on", "error")
        if fail_on not in FAIL_ON:
            self.attempt(self.fail, f"'fail-on' must be one of {', '.join(FAIL_ON)}, not {fail_on!r}", None, None,
                         "fail-on")
        items = [item for kind in ITEM_KINDS for item in self.items(kind, data.get(kind))]
        ignore = self.attempt(self.ignore, data.get("ignore", []))
        self.raise_problems()  # so nothing below sees a _FAILED
        if not items:
            items = [Item("env", "env", {"checks": None})]
        return CheckConfig(self.root, self.path, fail_on, ignore, tuple(items))

    def attempt(self, step: Any, *args: Any) -> Any:
        """``step(*args)``, or ``_FAILED`` with its problem recorded."""
        try:
            return step(*args)
        except _Problem as problem:
            self.problems.append(problem)
            return _FAILED

    def raise_problems(self) -> None:
        """Every problem at once: one line each, in file order (a problem without a line first)."""
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise ConfigError(self.problems[0].message, self.problems[0].hint)
        lines = [f"{problem.message} ({problem.hint})" if problem.hint else problem.message
                 for problem in self.problems]
        raise ConfigError("\n".join(sorted(lines, key=_line_number)),
                          f"{len(lines)} problems in {self.shown}; fix them all, then rerun")

    # --- items ----------------------------------------------------------------------------------------------------

    def items(self, kind: str, value: Any) -> list[Item]:
        if value is None:
            return []
        if kind == "env":
            if not isinstance(value, dict):
                self.attempt(self.fail, "'env' must be a table ([tool.torchdoctor.env])", None, None, "env")
                return []
            tables: list[tuple[Any, int | None]] = [(value, None)]
        elif not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            self.attempt(self.fail, f"'{kind}' must be an array of tables ([[{self.qualified(kind)}]])", None, None,
                         kind)
            return []
        else:
            tables = list(zip(value, range(len(value)), strict=True))
        items = [self.item(kind, table, index) for table, index in tables]
        return [item for item in items if item is not None]

    def item(self, kind: str, table: Mapping[str, Any], index: int | None) -> Item | None:
        """The item, or None when something in it is wrong (recorded; every key is still looked at)."""
        before = len(self.problems)
        options = {}
        for key, value in table.items():
            converted = self.attempt(self.option, kind, index, key, value)
            if converted is not _FAILED:
                options[key.replace("-", "_")] = converted
        for key, (_, required) in _SCHEMAS[kind].items():
            if required and key not in table:
                self.attempt(self.fail, f"'{kind}' needs '{key}'", kind, index, None)
        if len(self.problems) > before:
            return None
        file, name = self.subject(kind, options)
        return Item(kind, name, options, file, self.line(kind, index, None))

    def option(self, kind: str, index: int | None, key: str, value: Any) -> Any:
        schema = _SCHEMAS[kind]
        if key not in schema:
            self.fail(f"unknown key '{key}' in {kind}", kind, index, key, hint=f"known keys: {', '.join(schema)}")
        types, _ = schema[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            self.fail(f"'{kind}.{key}' must be {' or '.join(t.__name__ for t in types)}, "
                      f"not {type(value).__name__}", kind, index, key)
        return self.convert(kind, index, key, value)

    def convert(self, kind: str, index: int | None, key: str, value: Any) -> Any:
        if key in ("checks", "args"):
            if not all(isinstance(part, str) for part in value):
                self.fail(f"'{kind}.{key}' must be a list of strings", kind, index, key)
            if key == "checks":
                self.known_env_checks(value, index)
            return tuple(value)
        if key == "input-shape":
            return self.shapes(kind, index, key, value)
        if key in ("batches", "steps", "num-classes", "max-params", "max-macs") and value < 1:
            self.fail(f"'{kind}.{key}' must be at least 1", kind, index, key)
        if key == "timeout" and value < 0:
            self.fail(f"'{kind}.{key}' must be a number of seconds >= 0 (0: no limit)", kind, index, key)
        if key in ("path", "script"):
            return self.existing(kind, index, key, value)
        if key in ("model", "loader"):
            return self.spec(kind, index, key, value)
        return value

    def known_env_checks(self, names: list[str], index: int | None) -> None:
        from torchdoctor.env.api import CHECKS  # torch-free: the checks import torch when they run

        known = [check.name for check in CHECKS]
        for name in names:
            if name not in known:
                self.fail(f"unknown env check '{name}'", "env", index, "checks", hint=f"known: {', '.join(known)}")

    def shapes(self, kind: str, index: int | None, key: str, value: list[Any]) -> tuple[tuple[int, ...], ...]:
        shapes = value if value and all(isinstance(part, list) for part in value) else [value]
        for shape in shapes:
            if not shape or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 for dim in shape):
                self.fail(f"'{kind}.{key}' must be a shape like [1, 3, 32, 32] (or a list of them)", kind, index, key)
        return tuple(tuple(shape) for shape in shapes)

    def existing(self, kind: str, index: int | None, key: str, value: str) -> str:
        if not (self.root / value).exists():
            self.fail(f"'{kind}.{key}': no such file '{value}' (relative to {self.shown})", kind, index, key)
        return _shown(self.root / value)

    def spec(self, kind: str, index: int | None, key: str, value: str) -> str:
        """``file.py:name`` becomes absolute (relative to the config); ``pkg.mod:name`` is left alone."""
        where, sep, name = value.rpartition(":")
        if not sep or not where or not name:
            self.fail(f"'{kind}.{key}' must be 'file.py:name' or 'package.module:name', not {value!r}",
                      kind, index, key)
        if not where.endswith(".py"):
            return value
        return f"{self.existing(kind, index, key, where)}:{name}"

    def subject(self, kind: str, options: Mapping[str, Any]) -> tuple[str | None, str]:
        """The config-relative file an item is about, and the item's display name."""
        raw = {"ckpt": "path", "nan-hunt": "script", "data": "loader", "count": "model", "watch": "script"}.get(kind)
        if raw is None:
            return None, kind
        value = str(options[raw])
        where = value.rpartition(":")[0] if kind in ("data", "count") else value
        file = self.relative(where) if where.endswith(".py") or kind in _FILE_KINDS else None
        name = self.relative(value) if kind in _FILE_KINDS else self.relative_spec(value)
        return file, name

    def relative(self, path: str) -> str:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path

    def relative_spec(self, spec: str) -> str:
        where, _, name = spec.rpartition(":")
        return f"{self.relative(where)}:{name}" if where.endswith(".py") else spec

    # --- ignore ---------------------------------------------------------------------------------------------------

    def ignore(self, value: Any) -> tuple[IgnoreRule, ...]:
        if not isinstance(value, list):
            self.fail("'ignore' must be a list of ids or { id = ..., reason = ... } tables", None, None, "ignore")
        rules = (self.attempt(self.ignore_rule, entry) for entry in value)
        return tuple(rule for rule in rules if rule is not _FAILED)

    def ignore_rule(self, entry: Any) -> IgnoreRule:
        from torchdoctor.codes import REGISTRY

        if isinstance(entry, dict):
            if set(entry) - {"id", "reason"} or not isinstance(entry.get("id"), str) \
                    or not isinstance(entry.get("reason", ""), str):
                self.fail("each 'ignore' table needs a string 'id' and may have a string 'reason'",
                          None, None, "ignore")
            rule = IgnoreRule(entry["id"], entry.get("reason"))
        elif isinstance(entry, str):
            rule = IgnoreRule(entry)
        else:
            self.fail("'ignore' entries must be ids or { id = ..., reason = ... } tables", None, None, "ignore")
        if rule.id not in REGISTRY:
            self.fail_at(f"unknown finding id '{rule.id}' in 'ignore'", self.line_of_text(rule.id, "ignore"),
                         hint="`torchdoctor explain ID` lists what an id means; see docs/findings.md")
        return rule

    # --- errors and lines -----------------------------------------------------------------------------------------

    def qualified(self, kind: str | None) -> str:
        return ".".join(part for part in (self.prefix, kind) if part)

    def fail(self, message: str, kind: str | None, index: int | None, key: str | None, hint: str | None = None
             ) -> NoReturn:
        self.fail_at(message, self.line(kind, index, key), hint)

    def fail_at(self, message: str, line: int | None, hint: str | None = None) -> NoReturn:
        where = f"{self.shown}, line {line}" if line else self.shown
        raise _Problem(f"{where}: {message}", hint)

    def line(self, kind: str | None, index: int | None, key: str | None) -> int | None:
        """1-based line of ``key`` in the table of ``kind`` (its ``index``-th entry); tomllib keeps no positions,
        so the text is scanned: the table header first, then the key up to the next header."""
        start = self.header_line(kind, index)
        if start is None:
            return None
        has_header = kind is not None or bool(self.prefix)
        if key is not None:
            key_pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[=.]")
            for number in range(start + 1 if has_header else 0, len(self.lines)):
                if _HEADER.match(self.lines[number]):
                    break
                if key_pattern.match(self.lines[number]):
                    return number + 1
            if kind is None:  # a top-level key may be written as its own table: [tool.torchdoctor.KEY]
                table = self.header_line(key, None)
                table = table if table is not None else self.header_line(key, 0)
                if table is not None:
                    return table + 1
        return start + 1 if has_header else None

    def header_line(self, kind: str | None, index: int | None) -> int | None:
        """0-based line of the table header (``[[tool.torchdoctor.ckpt]]``, ``[tool.torchdoctor]``); 0 for the
        top level of a torchdoctor.toml, whose keys come before any header."""
        name = self.qualified(kind)
        if not name:
            return 0
        brackets = (r"\[\[", r"\]\]") if index is not None else (r"\[", r"\]")
        pattern = re.compile(rf"^\s*{brackets[0]}\s*{re.escape(name)}\s*{brackets[1]}")
        matches = [number for number, text in enumerate(self.lines) if pattern.match(text)]
        position = index or 0
        return matches[position] if position < len(matches) else None

    def line_of_text(self, needle: str, key: str) -> int | None:
        quoted = (f'"{needle}"', f"'{needle}'")
        for number, text in enumerate(self.lines):
            if any(q in text for q in quoted):
                return number + 1
        return self.line(None, None, key)


_HEADER = re.compile(r"^\s*\[")
_LINE = re.compile(r", line (\d+): ")


def _line_number(text: str) -> int:
    found = _LINE.search(text)
    return int(found.group(1)) if found else 0


def _shown(path: Path) -> str:
    """Relative to the current folder when inside it (messages then show what the user would type)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())
