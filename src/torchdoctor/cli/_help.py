"""Help as Python command lines conventionally show it: flags bare, values as TEXT / INTEGER / PATH or a
metavar, arguments as ``NAME`` (required) or ``[NAME]`` (optional).

Typer 0.29 prints each parameter's Python type (``--json <bool>``, ``<list[str]>``) and wraps required
arguments in braces (``{MODEL_SPEC}``), with no setting to turn that off; so every command and group here is
built with the classes below, which give each parameter a conventional subclass when help is made.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

__all__ = ["ConventionalCommand", "ConventionalGroup", "conventional_value"]

# click's names for the types (argparse shows the dest in capitals, which the metavars here already are)
_VALUE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN", "path": "PATH", "file": "FILE",
                "directory": "DIRECTORY"}


def conventional_value(param: TyperOption | TyperArgument, ctx: Any) -> str | None:
    """What help shows for the value a parameter takes: its metavar, a type name, ``[a|b]``; None for a flag."""
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return None
    if param.metavar is not None and isinstance(param, TyperOption):
        return param.metavar
    label = param.display_type(ctx).strip("<>")  # Typer's own label: "list[str]", "a|b", "path"
    label = re.sub(r"^list\[(.*)\]$", r"\1", label)  # a repeatable option takes one value each time
    label = label.removesuffix(" range")  # the range itself follows: INTEGER [x>=1]
    if "|" in label:
        return f"[{label}]"
    return _VALUE_NAMES.get(label.lower(), label.upper())


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        return conventional_value(self, ctx)


class _Argument(TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else (self.name or "").upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        return conventional_value(self, ctx)

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"


def _conventional(params: list[Any]) -> list[Any]:
    # a subclass that only overrides how help shows it: the parameter parses exactly as before
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _Option
        elif type(param) is TyperArgument:
            param.__class__ = _Argument
    return params


class ConventionalCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        if ctx.allow_extra_args:  # nan-hunt passes what follows -- to the script
            pieces.append("[-- ARGS...]")
        return pieces


class ConventionalGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional(super().get_params(ctx))
