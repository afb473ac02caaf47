"""``torch.compile``d submodules seen as the user wrote them, and counted eagerly.

``torch.compile(module)`` returns an ``OptimizedModule`` that holds the module as ``_orig_mod``, so
``named_modules`` lists every compiled part twice (``body`` and ``body._orig_mod``) and every name under it
carries ``_orig_mod``. The user wrote ``self.body = torch.compile(...)`` and reads ``body.0``: the wrapper is
dropped and ``_orig_mod`` takes its name.

Counting runs the compiled parts eagerly (``torch.compiler.set_stance("force_eager")``): the convention counts
the model's ATen ops as eager PyTorch runs them, and nothing is compiled for a count. Our global module hooks
make ``OptimizedModule.__call__`` warn that global hooks fire twice for it; they do, harmlessly (the wrapper is
not a row), so that warning - and only that one - is kept off the user's terminal.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

COMPILED_WRAPPER = "OptimizedModule"  # by class name: an isinstance check would import dynamo (~1 s)
WRAPPED = "_orig_mod"
_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def is_compiled(module: Any) -> bool:
    return type(module).__name__ == COMPILED_WRAPPER and hasattr(module, WRAPPED)


def user_name(name: str) -> str:
    """``body._orig_mod.0`` -> ``body.0`` (a module name, or ModuleTracker's ``Net.body._orig_mod``)."""
    if WRAPPED not in name:  # the common case, without splitting
        return name
    return ".".join(part for part in name.split(".") if part != WRAPPED)


def user_modules(root: Any) -> list[tuple[str, Any]]:
    """``root.named_modules()`` without compile wrappers, with the user's names (see the module doc)."""
    return [(user_name(name), module) for name, module in root.named_modules() if not is_compiled(module)]


@contextlib.contextmanager
def eager_compiled(model: Any) -> Iterator[None]:
    """Compiled submodules of ``model`` run eagerly, without torch's warning about our global hooks."""
    modules = getattr(model, "modules", None)  # not a module at all: count's own checks say so
    if not callable(modules) or not any(is_compiled(module) for module in modules()):
        yield
        return
    import torch

    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6 (older: compiled as torch decides)
    eager = set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
    with warnings.catch_warnings(), eager:
        warnings.filterwarnings("ignore", message=_HOOKS_WARNING, category=UserWarning)
        yield
