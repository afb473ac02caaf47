"""``torchdoctor count``: parameters, MACs and FLOPs under one stated convention (importing it imports no torch).

``torchdoctor.count(model, inputs)`` returns a ``Report``; ``count_spec(SPEC, ...)`` is the CLI's twin.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from torchdoctor.count.api import count, count_spec
from torchdoctor.count.ops import CONVENTION, OpKind, classify_op

__all__ = ["CONVENTION", "OpKind", "classify_op", "count", "count_spec"]


class _CallableModule(types.ModuleType):
    """``torchdoctor.count`` is both this package and the function the API promises: once the package is
    imported, ``torchdoctor.count`` names the package, so the package itself forwards calls to ``count``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return count(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
