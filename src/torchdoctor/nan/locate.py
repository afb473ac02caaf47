"""Exact localisation: dispatch handlers that name the first op turning finite values into NaN/inf."""

from __future__ import annotations

import functools
import math
from typing import Any

from torchdoctor.nan.frames import describe_site, user_site
from torchdoctor.nan.records import Producer
from torchdoctor.nan.tensors import (
    INF,
    LOW_PRECISION,
    NAN,
    bad_kinds,
    checkable,
    dtype_name,
    shallow_tensors,
)

# Ops that hand back memory nobody has written yet: whatever garbage they hold is not a NaN "produced".
FACTORY_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided",
    "resize_", "resize_as_",
})
# Ops whose non-finite *scalar* argument is the value asked for: masked_fill(mask, -inf) builds a mask.
FILL_OPS = frozenset({
    "masked_fill", "masked_fill_", "fill", "fill_", "full", "full_like", "new_full", "scalar_tensor",
    "index_fill", "index_fill_", "where", "clamp", "clamp_", "clamp_min", "clamp_max", "nan_to_num",
    "fill_diagonal_",
})
# Ops that only move or view values: finite in, finite out, so watching them is wasted time.
MOVE_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand", "expand_as",
    "slice", "select", "squeeze", "unsqueeze", "detach", "alias", "as_strided", "clone", "contiguous",
    "flatten", "unflatten", "split", "split_with_sizes", "chunk", "unbind", "narrow", "index_select", "gather",
    "cat", "stack", "lift_fresh", "lift_fresh_copy", "unfold", "diagonal", "view_as", "repeat", "roll", "flip",
    "relu", "neg", "abs", "max", "min", "amax", "amin", "embedding", "masked_select", "sort", "topk",
})
_KEEP = 8  # producers / inflows remembered per handler; the first few are all anyone reads


class Found(BaseException):
    """Ends a replay as soon as the producer is known; BaseException so the user's ``except`` lets it by."""


def op_name(func: Any) -> str:
    """``aten.div`` for ``aten.div.Tensor``: the overload is noise to a reader."""
    return str(func.overloadpacket)


def dispatch_mode(handler: Any) -> Any:
    """A ``TorchDispatchMode`` whose ``__torch_dispatch__`` is ``handler(func, args, kwargs)``."""
    return _mode_class()(handler)


@functools.lru_cache(maxsize=1)
def _mode_class() -> type:
    # Built lazily: defining a TorchDispatchMode subclass needs torch, and importing this module must not.
    from torch.utils._python_dispatch import TorchDispatchMode

    class HandlerMode(TorchDispatchMode):
        def __init__(self, handler: Any) -> None:
            super().__init__()
            self.handler = handler

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return self.handler(func, args, kwargs or {})

    return HandlerMode


class ModuleTracker:
    """Qualified name of the module running now, fed by the hunt's global module hooks during a replay."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.stack: list[str | None] = []

    def enter(self, module: Any) -> None:
        self.stack.append(self.names.get(id(module)))

    def exit(self, module: Any) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def current(self) -> str | None:
        # The root's own name is "": ops directly in the model's forward have no submodule to name.
        return next((name for name in reversed(self.stack) if name), None)


class ProducerWatch:
    """Dispatch handler: remembers the first ops whose outputs hold NaN/inf while their inputs do not.

    It also notes *inflows*: non-finite tensors no watched op made (a target, a parameter, a constant)
    at the first op that reads them.
    """

    def __init__(self, kinds: tuple[str, ...], tracker: ModuleTracker | None = None, *, stop: bool = False,
                 tagger: Any = None) -> None:
        self.kinds = kinds
        self.tracker = tracker
        self.stop = stop  # raise Found at the first producer (a replay needs no more)
        self.tagger = tagger  # also remember which op made each autograd node (the loss window)
        self.active = True
        self.producers: list[tuple[Producer, Any]] = []  # (producer, its output tensor) in run order
        self.inflows: list[tuple[Producer, Any]] = []  # (the op reading it, the outside tensor)
        self.output_kinds: set[str] | None = None  # a replay's output: which kinds it held (None: not read)
        self._known: dict[int, tuple[Any, set[str]]] = {}  # bad outputs seen: id -> (tensor, kinds)
        self._bad_storages: set[int] = set()

    def __call__(self, func: Any, args: tuple, kwargs: dict) -> Any:
        if not self.active:
            return func(*args, **kwargs)
        inputs = list(shallow_tensors(args, kwargs))
        if self.tagger is not None:
            self.tagger.before(inputs)
        # An in-place op overwrites its input: judge the input as it was before the op ran.
        before = self._kinds_of(inputs) if func._schema.is_mutable else None
        out = func(*args, **kwargs)
        if func.overloadpacket.__name__ in FACTORY_OPS:
            return out
        if self.tagger is not None:
            self.tagger.after(func, out)
        if func.overloadpacket.__name__ in MOVE_OPS:
            return out
        outputs = [t for t in shallow_tensors((out,)) if checkable(t)]
        produced = bad_kinds(outputs, self.kinds)
        if produced:
            self._judge(func, args, kwargs, inputs, outputs, produced, before)
        return out

    def _kinds_of(self, tensors: list[Any]) -> set[str]:
        """Bad kinds among ``tensors``; outputs already judged are looked up, not scanned again."""
        found: set[str] = set()
        for tensor in tensors:
            known = self._known.get(id(tensor))
            found |= known[1] if known is not None else bad_kinds([tensor], self.kinds)
        return found

    def _judge(self, func, args, kwargs, inputs, outputs, produced, before) -> None:
        had = before if before is not None else self._kinds_of(inputs)
        # Fill-like ops asked for the value: masked_fill(mask, -inf) makes a mask, not a bug.
        on_purpose = scalar_kinds(args, kwargs) if func.overloadpacket.__name__ in FILL_OPS else set()
        for kind in sorted(produced, reverse=True):  # "nan" before "inf"
            if kind in had:
                self._note_inflow(kind, func, inputs)
            elif kind not in on_purpose:
                self._note_producer(kind, func, args, kwargs, outputs)
        for tensor in outputs:
            self._known[id(tensor)] = (tensor, produced)
            self._bad_storages.add(storage_of(tensor))

    def _note_producer(self, kind, func, args, kwargs, outputs) -> None:
        if len(self.producers) < _KEEP:
            output = next((t for t in outputs if bad_kinds([t], (kind,))), outputs[0])
            dtype = dtype_name(output)
            overflow = kind == INF and dtype in LOW_PRECISION and overflowed(func, args, kwargs, dtype)
            self.producers.append((self._record(kind, func, dtype, overflow), output))
        if self.stop:
            raise Found

    def _note_inflow(self, kind, func, inputs) -> None:
        if len(self.inflows) >= _KEEP:
            return
        outside = next((t for t in inputs if kind in self._kinds_of([t])), None)
        if outside is not None and storage_of(outside) not in self._bad_storages:
            self.inflows.append((self._record(kind, func, dtype_name(outside)), outside))

    def _record(self, kind: str, func: Any, dtype: str, overflow: bool = False) -> Producer:
        module = self.tracker.current if self.tracker is not None else None
        return Producer(kind, op_name(func), module, describe_site(user_site()), dtype, overflow)


def scalar_kinds(args: tuple, kwargs: dict) -> set[str]:
    """Kinds carried in by plain-number arguments (``masked_fill(m, float('-inf'))``)."""
    found: set[str] = set()
    for value in [*args, *kwargs.values()]:
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                found.add(NAN if math.isnan(item) else INF)
    return found


def overflowed(func: Any, args: tuple, kwargs: dict, dtype: str) -> bool:
    """True when the op recomputed in float32 gives finite values beyond ``dtype``'s largest number."""
    import torch

    if func._schema.is_mutable:
        return True  # cannot rerun it safely; an inf from finite low-precision inputs is nearly always range
    limit = torch.finfo(getattr(torch, dtype)).max
    try:
        wide = func(*_widen(args), **{k: _widen_one(v) for k, v in kwargs.items()})
    except Exception:
        return True
    outputs = [t for t in shallow_tensors((wide,)) if checkable(t)]
    return any(bool(((t.abs() > limit) & torch.isfinite(t)).any()) for t in outputs)


def _widen(args: tuple) -> list[Any]:
    return [type(a)(_widen_one(x) for x in a) if isinstance(a, (list, tuple)) else _widen_one(a) for a in args]


def _widen_one(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    if value in (torch.float16, torch.bfloat16):  # dtype= of a cast
        return torch.float32
    return value


def storage_of(tensor: Any) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except Exception:  # tensor subclasses without storage
        return id(tensor)


def reaches(start: Any, target: Any, limit: int = 200_000) -> bool:
    """Whether autograd node ``target`` is in the graph behind ``start`` (so it fed that value)."""
    seen, todo = set(), [start]
    while todo and len(seen) < limit:
        node = todo.pop()
        if node is target:
            return True
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        todo.extend(next_node for next_node, _ in node.next_functions)
    return False
