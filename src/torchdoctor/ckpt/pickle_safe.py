"""A pickle reader that imports and runs nothing: allow-listed globals become plain-data stand-ins, others stubs."""

from __future__ import annotations

import _compat_pickle
import pickle
import struct
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, BinaryIO

from torchdoctor.ckpt.allowlist import (
    ACTIVE_GUARD,
    ALLOWED_GLOBALS,
    MAX_INT64,
    OPAQUE_SAFE_GLOBALS,
    TORCHSCRIPT_HELPERS,
    HashGuard,
)
from torchdoctor.ckpt.records import GLOBAL_KINDS, GlobalUse, PickledObject, StorageClass, StorageRef

MAX_LINE = 64 << 10  # GLOBAL / INST names; longer means a damaged stream
WORK_PER_BYTE = 16  # budget of item copies and key checks per byte of pickle: far above what torch.save needs
WORK_BASE = 1 << 20


class BoundedReader:
    """Reads that never ask for more than what is left before ``end``: a hostile length cannot allocate."""

    def __init__(self, f: BinaryIO, end: int, start: int | None = None) -> None:
        self._file = f
        self._pos = f.tell() if start is None else start
        self._end = end

    def read(self, n: int = -1) -> bytes:
        left = max(self._end - self._pos, 0)
        data = self._file.read(left if n is None or n < 0 or n > left else n)
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        line = self._file.readline(min(MAX_LINE, max(self._end - self._pos, 0)))
        self._pos += len(line)
        if not line.endswith(b"\n"):
            raise pickle.UnpicklingError("pickle line without a newline: the stream is cut or damaged")
        return line

    def skip(self, n: int) -> None:
        """Move past ``n`` bytes without reading them (storage data), never beyond ``end``."""
        if n < 0 or n > self._end - self._pos:
            raise EOFError(f"cannot skip {n} bytes: only {self._end - self._pos} are left")
        self._file.seek(n, 1)
        self._pos += n

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos


class GlobalLog:
    """Every global the pickles of one checkpoint named, with the stub class made for each."""

    def __init__(self) -> None:
        self.uses: dict[str, GlobalUse] = {}
        self._stubs: dict[str, type[PickledObject]] = {}

    def note(self, name: str, allowed: bool) -> GlobalUse:
        use = self.uses.setdefault(name, GlobalUse(name, allowed))
        use.count += 1
        return use

    def stub_class(self, module: str, name: str, allowed: bool) -> type[PickledObject]:
        full = f"{module}.{name}"
        if full not in self._stubs:
            use = self.uses.setdefault(full, GlobalUse(full, allowed))
            self._stubs[full] = type("PickledStub", (PickledObject,), {"module": module, "qualname": name, "use": use})
        return self._stubs[full]

    def report(self) -> list[dict[str, Any]]:
        """``[{"name", "kind", "count"}]``, unsafe first, then module, then safe; by name within a kind."""
        rank = {kind: i for i, kind in enumerate(reversed(GLOBAL_KINDS))}
        rows = [{"name": u.name, "kind": u.kind, "count": u.count} for u in self.uses.values()]
        return sorted(rows, key=lambda row: (rank[row["kind"]], row["name"]))


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickles into stand-ins; ``find_class`` never imports and nothing outside this module runs.

    The pure-Python unpickler on purpose: the C one grows its memo to whatever index a LONG_BINPUT
    names (one flipped byte asks for tens of GB) and offers no per-opcode hooks for the guards below.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, reader: BoundedReader, log: GlobalLog, *, persistent: Callable[[Any], Any] | None = None,
                 allow_extra: Callable[[str], bool] | None = None) -> None:
        super().__init__(reader, encoding="utf-8")
        self.log = log
        self.guard = HashGuard(self.charge)
        self._persistent = persistent
        self._allow_extra = allow_extra or (lambda name: False)
        self._work_left = WORK_BASE + WORK_PER_BYTE * max(reader.remaining(), 0)

    def load(self) -> Any:
        token = ACTIVE_GUARD.set(self.guard)  # the stand-ins that build sets and dicts check keys with it
        try:
            return super().load()
        finally:
            ACTIVE_GUARD.reset(token)

    def charge(self, work: int) -> None:
        """Spend budget: repeated calls on one big memoized argument would otherwise cost time or memory
        quadratic in the pickle's size (a 100 KB pickle can ask for gigabytes)."""
        self._work_left -= work
        if self._work_left < 0:
            raise pickle.UnpicklingError("the pickle asks for far more work than its size justifies")

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # what pickle's own find_class does for Python 2 names (__builtin__.set)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        extra = self._allow_extra(full)
        standin = ALLOWED_GLOBALS.get(full, TORCHSCRIPT_HELPERS.get(full) if extra else None)
        allowed = standin is not None or extra or full in OPAQUE_SAFE_GLOBALS
        self.log.note(full, allowed)
        return standin if standin is not None else self.log.stub_class(module, name, allowed)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("a persistent id in a pickle that should have none")
        return self._persistent(pid)


_CONTAINERS = (str, bytes, bytearray, tuple, list, dict, set, frozenset)


def _charged(opcode: bytes, cost: Callable[[SafeUnpickler, list[Any]], int]) -> None:
    original = SafeUnpickler.dispatch[opcode[0]]

    def load(self: SafeUnpickler) -> None:
        self.charge(cost(self, self.stack))
        original(self)

    SafeUnpickler.dispatch[opcode[0]] = load


def _keys_cost(keys: Callable[[list[Any]], Iterable[Any]]) -> Callable[[SafeUnpickler, list[Any]], int]:
    """Check every key the opcode will hash; the guard charges what hashing them costs."""
    def cost(self: SafeUnpickler, stack: list[Any]) -> int:
        for key in keys(stack):
            self.guard.check(key)
        return 1
    return cost


def _args_cost(*places: int) -> Callable[[SafeUnpickler, list[Any]], int]:
    return lambda self, stack: sum(_copies(stack[place]) for place in places)


def _copies(args: Any) -> int:
    """What a call may copy of its arguments: the argument tuple and each container in it."""
    if not isinstance(args, _CONTAINERS):
        return 1
    inner = sum(len(a) for a in args if isinstance(a, _CONTAINERS)) if isinstance(args, tuple | list) else 0
    return 1 + len(args) + inner


def _build_keys(stack: list[Any]) -> list[Any]:
    states = stack[-1] if isinstance(stack[-1], tuple) and len(stack[-1]) == 2 else (stack[-1],)
    return [key for state in states if isinstance(state, dict) for key in state]


def _refuse_extension(self: SafeUnpickler) -> None:
    # EXT opcodes resolve through copyreg's process-wide cache, which may hold already-imported objects
    raise pickle.UnpicklingError("extension codes (EXT1/2/4) are not supported")


def _load_bytearray8(self: SafeUnpickler) -> None:
    size = struct.unpack("<Q", self.read(8))[0]
    data = self.read(size)  # bounded by what the stream holds; pickle's own version allocates `size` first
    if len(data) != size:
        raise pickle.UnpicklingError("BYTEARRAY8 longer than the rest of the stream")
    self.append(bytearray(data))


_charged(pickle.SETITEM, _keys_cost(lambda stack: stack[-2:-1]))
for _opcode in (pickle.SETITEMS, pickle.DICT):
    _charged(_opcode, _keys_cost(lambda stack: stack[0::2]))  # the items since the MARK: keys at even places
for _opcode in (pickle.ADDITEMS, pickle.FROZENSET):
    _charged(_opcode, _keys_cost(lambda stack: stack))
_charged(pickle.BUILD, _keys_cost(_build_keys))
_charged(pickle.REDUCE, _args_cost(-1))
_charged(pickle.NEWOBJ, _args_cost(-1))
_charged(pickle.NEWOBJ_EX, _args_cost(-2, -1))
for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
    SafeUnpickler.dispatch[_opcode[0]] = _refuse_extension
SafeUnpickler.dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


def storage_from_pid(pid: Any) -> Any:
    """torch.save's persistent ids: ``('storage', type, key, location, numel[, view])`` → ``StorageRef``.

    Legacy full-module pickles also name their classes as ``('module', cls, source_file, source)``.
    """
    if not isinstance(pid, tuple) or not pid:
        raise pickle.UnpicklingError("a persistent id that is not a tuple")
    tag = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if tag == "module" and len(pid) == 4 and isinstance(pid[1], type) and issubclass(pid[1], PickledObject):
        if pid[1].use is not None:
            pid[1].use.module_like = True
        return pid[1]
    if tag != "storage" or len(pid) not in (5, 6):
        raise pickle.UnpicklingError(f"unknown persistent id {str(tag)[:40]!r}")
    storage_type, key, location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageClass) or type(numel) is not int or not 0 <= numel <= MAX_INT64:
        raise pickle.UnpicklingError("a storage persistent id without a storage type or size")
    if not isinstance(key, str | int) or not isinstance(location, str | bytes):
        raise pickle.UnpicklingError("a storage persistent id without a key or location")
    device = location.decode("ascii") if isinstance(location, bytes) else location
    ref = StorageRef(str(key), storage_type.dtype, numel, device)
    if view is not None:
        return _storage_view(ref, view)
    return ref


def _storage_view(ref: StorageRef, view: Any) -> StorageRef:
    if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int and view[1] >= 0):
        raise pickle.UnpicklingError("a legacy storage view without (key, offset, size)")
    return replace(ref, element_offset=view[1])


def load_data_pickle(reader: BoundedReader, log: GlobalLog | None = None) -> Any:
    """One pickle from ``reader`` with no persistent ids (legacy headers, storage key lists)."""
    return SafeUnpickler(reader, log or GlobalLog()).load()
