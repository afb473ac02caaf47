"""Plain data the safe reader builds: tensor and storage records, dtype facts, stubs for refused classes."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

# First parts of global names that can do harm when called: always "unsafe", whatever else the pickle does.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket", "pty", "runpy",
    "importlib", "pickle", "_pickle", "marshal", "ctypes", "code", "codeop", "webbrowser", "requests", "urllib",
    "httplib", "http", "asyncio", "multiprocessing", "signal", "tempfile", "pathlib", "io", "operator",
    "functools", "types", "inspect", "pdb", "timeit", "platform", "ftplib", "smtplib", "telnetlib", "numpy",
})
GLOBAL_KINDS = ("safe", "module", "unsafe")

DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16, "complex64": 8, "complex32": 4,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1, "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "bits1x8": 1, "bits2x4": 1, "bits4x2": 1, "bits8": 1, "bits16": 2,
    **{f"{sign}int{bits}": 1 for sign in ("", "u") for bits in range(1, 8)},
}
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
                 "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32"}
# torch.<Name>Storage classes that persistent ids name (torch.storage._dtype_to_storage_type_map)
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "QUInt8Storage": "quint8", "QInt8Storage": "qint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}


class _Sealed:
    """Stand-ins that BUILD must not change: a pickle that tries is damaged or hostile."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"BUILD on a {type(self).__name__}")


@dataclass(frozen=True)
class TorchName(_Sealed):
    """A torch dtype, layout, memory format or qscheme global, by name (``float32``)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TorchClass(_Sealed):
    """``torch.Tensor``, ``torch.nn.Parameter`` or a legacy tensor class, referenced but never imported."""

    name: str


@dataclass(frozen=True)
class StorageClass(_Sealed):
    """``torch.FloatStorage`` & co.: only the dtype its storages hold."""

    name: str
    dtype: str


@dataclass(frozen=True)
class StorageRef(_Sealed):
    """A storage named by a persistent id ``('storage', type, key, location, numel[, view])``."""

    key: str
    dtype: str
    numel: int
    device: str
    element_offset: int = 0
    """Start of a legacy storage view inside its root storage, in elements."""


@dataclass(frozen=True)
class TensorRecord(_Sealed):
    """A tensor as data: where its elements live and how to read them, never the elements themselves."""

    storage_key: str | None
    """Key into ``CheckpointReading.storages``; None when the file holds no data for it (meta, dcp)."""
    dtype: str
    """Torch dtype name without ``torch.``: ``float32``, ``bfloat16``."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int = 0
    """In elements of ``dtype``."""
    device: str = "cpu"
    requires_grad: bool = False
    is_parameter: bool = False

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def itemsize(self) -> int | None:
        return DTYPE_ITEMSIZE.get(self.dtype)

    @property
    def nbytes(self) -> int | None:
        return None if self.itemsize is None else self.numel * self.itemsize

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for dim, step in reversed(list(zip(self.shape, self.stride, strict=True))):
            if dim != 1 and step != expected:
                return False
            expected *= dim
        return True

    @property
    def span(self) -> int:
        """Elements from the first to the last one the tensor uses in its storage (the covering range)."""
        if self.numel == 0:
            return 0
        return 1 + sum((dim - 1) * step for dim, step in zip(self.shape, self.stride, strict=True))


@dataclass
class GlobalUse:
    """One global the pickle names, and how it used it."""

    name: str
    allowed: bool
    count: int = 0
    called: bool = False
    module_like: bool = False

    @property
    def kind(self) -> str:
        """``safe`` (allow-listed), ``module`` (a pickled nn.Module class) or ``unsafe`` (anything else)."""
        if self.allowed:
            return "safe"
        if self.called or self.name.split(".", 1)[0] in DANGEROUS_MODULES:
            return "unsafe"  # a real unpickler would have run it
        if self.module_like or self.name.startswith("torch.nn.modules."):
            return "module"
        return "unsafe"


class PickledObject:
    """Stand-in for an object of a class the reader refused to import: what the pickle gave it, as data.

    Each refused global gets its own subclass (``module``, ``qualname``, ``use``). Instances keep
    ``args`` / ``kwargs`` (from NEWOBJ or a call), ``state`` (from BUILD; a pickled nn.Module's
    ``__dict__``), ``entries`` (SETITEMS) and ``items`` (APPENDS). No method runs pickle-supplied code.
    """

    module: ClassVar[str] = ""
    qualname: ClassVar[str] = ""
    use: ClassVar[GlobalUse | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.entries = args, kwargs, None, [], {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Only REDUCE / INST / OBJ get here (cls(*args)); NEWOBJ calls __new__ alone. A real unpickler
        # would run the class's own code now, so this counts as a call.
        _mark_called(type(self))

    def __call__(self, *args: Any, **kwargs: Any) -> PickledObject:
        _mark_called(type(self))
        return type(self).__new__(type(self), *args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state
        if isinstance(state, dict) and ("_modules" in state or "_parameters" in state) and self.use:
            self.use.module_like = True

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value  # SETITEM / SETITEMS checked the key before it got here

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self.items.extend(items)

    @classmethod
    def full_name(cls) -> str:
        return f"{cls.module}.{cls.qualname}"

    def __repr__(self) -> str:
        return f"<pickled {self.full_name()}>"


def _mark_called(cls: type[PickledObject]) -> None:
    if cls.use is not None:
        cls.use.called = True


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, in elements, of a dense tensor of ``shape``."""
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))
