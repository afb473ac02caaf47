"""What allow-listed globals become: stand-ins that build plain records (never torch), and the allow-list itself.

Mirrors ``_get_allowed_globals`` in torch/_weights_only_unpickler.py (what ``torch.load(weights_only=True)``
accepts), plus the TorchScript and torch.distributed.checkpoint names that only their own loaders resolve.
"""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from torchdoctor.ckpt.records import (
    DTYPE_ALIASES,
    DTYPE_ITEMSIZE,
    STORAGE_DTYPES,
    PickledObject,
    StorageClass,
    StorageRef,
    TensorRecord,
    TorchClass,
    TorchName,
)

MAX_NDIM = 64
MAX_INT64 = 2**63 - 1  # sizes, strides and offsets are int64 in torch; a longer int is damage or an attack
MAX_KEY_DEPTH = 64  # hashing a nested tuple recurses in C without a guard: a deep one crashes Python
MAX_KEY_NODES = 100_000  # tuple hashes are not cached: a key made of shared tuples hashes in exponential time


class HashGuard:
    """Refuses dict keys and set items whose hash would crash Python or never end; remembers tuples it measured.

    Each tuple is measured once (size and height of its tuple tree, from its children's), so a pickle
    that reuses one big key a million times costs a million dictionary look-ups, not a million walks.
    """

    def __init__(self, charge: Callable[[int], None] = lambda work: None) -> None:
        self._known: dict[int, tuple[int, int, tuple[Any, ...]]] = {}  # id → (size, height, the tuple: kept alive)
        self._charge = charge

    def check(self, key: Any) -> None:
        """Raise ``UnpicklingError`` when ``key`` is unsafe to hash; charge the budget for hashing it.

        The charge is what hashing costs (Python does not cache tuple hashes, so every use of a key walks
        its whole tuple tree again) plus, the first time, what measuring it cost.
        """
        if type(key) is not tuple:
            return
        if id(key) in self._known:
            self._charge(self._known[id(key)][0])
            return
        work, todo = 0, [(key, 1)]
        while todo:
            node, depth = todo[-1]
            if id(node) in self._known:  # a child listed twice, measured the first time
                todo.pop()
                continue
            pending = [child for child in node if type(child) is tuple and id(child) not in self._known]
            work += 1 + len(node)
            if pending and depth < MAX_KEY_DEPTH:
                todo.extend((child, depth + 1) for child in pending)
                continue
            todo.pop()
            self._measure(node, pending)
        self._charge(work + self._known[id(key)][0])

    def _measure(self, node: tuple[Any, ...], pending: list[Any]) -> None:
        children = [self._known[id(c)] for c in node if type(c) is tuple and id(c) in self._known]
        size = 1 + sum(child[0] for child in children)
        height = 1 + max((child[1] for child in children), default=0)
        if pending or size > MAX_KEY_NODES or height > MAX_KEY_DEPTH:
            raise pickle.UnpicklingError("a dict key or set item is nested too deeply to hash safely")
        self._known[id(node)] = (size, height, node)


ACTIVE_GUARD: ContextVar[HashGuard | None] = ContextVar("ACTIVE_GUARD", default=None)


def _guard() -> HashGuard:
    return ACTIVE_GUARD.get() or HashGuard()  # stand-ins called outside an unpickler get a fresh one


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple | list) or len(values) > MAX_NDIM:
        raise pickle.UnpicklingError(f"a tensor's {what} is not a short tuple of integers")
    if not all(type(v) is int and 0 <= v <= MAX_INT64 for v in values):
        raise pickle.UnpicklingError(f"a tensor's {what} holds something other than non-negative int64s")
    return tuple(values)


def _offset(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT64:
        raise pickle.UnpicklingError("a tensor's storage offset is not a non-negative int64")
    return value


def _dtype_of(value: Any) -> str:
    if not isinstance(value, TorchName | str):
        raise pickle.UnpicklingError("a tensor's dtype is not a torch dtype")
    return str(value)


def _tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *, dtype: Any = None,
            requires_grad: Any = False) -> TensorRecord | PickledObject:
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError("a tensor's size and stride differ in length")
    grad = requires_grad is True
    if isinstance(storage, StorageRef):
        name = _dtype_of(dtype) if dtype is not None else storage.dtype
        return TensorRecord(storage.key, name, shape, strides, _offset(storage_offset) + storage.element_offset,
                            storage.device, grad)
    if isinstance(storage, PickledObject):  # e.g. torch.storage._load_from_bytes in a plain pickle: no data here
        name = _dtype_of(dtype) if dtype is not None else "unknown"
        return TensorRecord(None, name, shape, strides, _offset(storage_offset), "cpu", grad)
    raise pickle.UnpicklingError("a tensor's storage is not a storage")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> Any:
    return _tensor(storage, storage_offset, size, stride, requires_grad=requires_grad)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> Any:
    return _tensor(storage, storage_offset, size, stride, dtype=dtype, requires_grad=requires_grad)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_qtensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> Any:
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
    if isinstance(data, TensorRecord):
        return replace(data, requires_grad=requires_grad is True, is_parameter=True)
    return data


def _rebuild_meta_tensor_no_storage(dtype: Any, size: Any, stride: Any, requires_grad: Any) -> TensorRecord:
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    return TensorRecord(None, _dtype_of(dtype), shape, strides, 0, "meta", requires_grad is True)


def _rebuild_device_tensor_from_cpu_tensor(data: Any, dtype: Any, device: Any, requires_grad: Any) -> Any:
    if not isinstance(data, TensorRecord) or not isinstance(device, str):
        raise pickle.UnpicklingError("_rebuild_device_tensor_from_cpu_tensor without a tensor and a device")
    return replace(data, device=device, requires_grad=requires_grad is True)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not callable(func) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 without a rebuild function and its arguments")
    result = func(*args)  # only our stand-ins or stub classes can be here: find_class returns nothing else
    if isinstance(result, TensorRecord) and new_type == TorchClass("torch.nn.parameter.Parameter"):
        result = replace(result, is_parameter=True)
    return result


def _size(dims: Any = ()) -> tuple[int, ...]:
    return _int_tuple(tuple(dims) if isinstance(dims, list) else dims, "size")


def _device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or len(kind) > 64 or not (index is None or type(index) is int):
        raise pickle.UnpicklingError("torch.device with something other than a device name")
    return kind if index is None else f"{kind}:{index}"


def _get_layout(name: Any) -> TorchName:
    if not isinstance(name, str):
        raise pickle.UnpicklingError("torch.serialization._get_layout without a name")
    return TorchName(name.removeprefix("torch."))


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # protocol 2 pickles bytes as _codecs.encode(str, "latin1")
    if type(text) is not str or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError("_codecs.encode with something other than text and a plain encoding")
    return text.encode(encoding)


def _bytearray(source: Any = b"", *encoding: Any) -> bytearray:
    if isinstance(source, bytes | bytearray) and not encoding:
        return bytearray(source)
    if isinstance(source, str) and len(encoding) == 1 and isinstance(encoding[0], str):
        return bytearray(_encode(source, encoding[0]))
    raise pickle.UnpicklingError("bytearray from something other than bytes")  # bytearray(10**12) would allocate


def _set(items: Any = ()) -> set[Any]:
    return set(_checked_keys(items))


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise pickle.UnpicklingError("complex() of something other than numbers")
    return complex(real, imag)


def _counter(mapping: Any = ()) -> Counter[Any]:
    counter: Counter[Any] = Counter()
    dict.update(counter, _checked_keys(mapping.items() if isinstance(mapping, dict) else mapping, pairs=True))
    return counter


def _ordered_dict(items: Any = ()) -> OrderedDict[Any, Any]:
    return OrderedDict(_checked_keys(items.items() if isinstance(items, dict) else items, pairs=True))


def _checked_keys(items: Any, pairs: bool = False) -> list[Any]:
    if not isinstance(items, list | tuple | set | frozenset | type({}.items())):
        raise pickle.UnpicklingError("a container built from something other than a list")
    items, guard = list(items), _guard()
    for item in items:
        if pairs and not (isinstance(item, tuple | list) and len(item) == 2):
            raise pickle.UnpicklingError("a mapping built from something other than pairs")
        guard.check(item[0] if pairs else item)
    return items


def _identity(value: Any, *rest: Any) -> Any:
    return value  # torch.jit._pickle.build_intlist & co. and restore_type_tag hand back their first argument


_TORCHSCRIPT_HELPERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_genlist",
                        "restore_type_tag")
_QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
             "per_channel_affine_float_qparams")
_LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")
_TENSOR_CLASSES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_OPAQUE_REBUILDS = ("_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
                    "_rebuild_device_tensor_from_numpy")


def _allowed_globals() -> dict[str, Any]:
    """Mirror of torch/_weights_only_unpickler.py's ``_get_allowed_globals``, as stand-ins."""
    allowed: dict[str, Any] = {
        "collections.OrderedDict": _ordered_dict, "collections.Counter": _counter,
        "torch.nn.parameter.Parameter": TorchClass("torch.nn.parameter.Parameter"),
        "torch.Tensor": TorchClass("torch.Tensor"), "torch.serialization._get_layout": _get_layout,
        "torch.Size": _size, "torch.device": _device, "_codecs.encode": _encode,
        "builtins.bytearray": _bytearray, "builtins.set": _set, "builtins.complex": _complex,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    }
    for name in (*DTYPE_ITEMSIZE, *DTYPE_ALIASES, *_QSCHEMES, *_LAYOUTS):
        allowed[f"torch.{name}"] = TorchName(DTYPE_ALIASES.get(name, name))
    for module in ("torch", "torch.cuda"):
        for storage, dtype in STORAGE_DTYPES.items():
            allowed[f"{module}.{storage}"] = StorageClass(storage, dtype)
        for prefix in _TENSOR_CLASSES:
            allowed[f"{module}.{prefix}Tensor"] = TorchClass(f"{module}.{prefix}Tensor")
    for storage in ("UntypedStorage", "TypedStorage"):
        allowed[f"torch.storage.{storage}"] = StorageClass(storage, "uint8")
    rebuilds = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_qtensor, _rebuild_parameter,
                _rebuild_meta_tensor_no_storage, _rebuild_device_tensor_from_cpu_tensor)
    allowed.update({f"torch._utils.{f.__name__}": f for f in rebuilds})
    allowed["torch._utils._rebuild_parameter_with_state"] = _rebuild_parameter
    return allowed


ALLOWED_GLOBALS = _allowed_globals()
OPAQUE_SAFE_GLOBALS = frozenset(f"torch._utils.{name}" for name in _OPAQUE_REBUILDS)
TORCHSCRIPT_HELPERS = {f"torch.jit._pickle.{name}": _identity for name in _TORCHSCRIPT_HELPERS}


def allow_torchscript(name: str) -> bool:
    """TorchScript classes (``__torch__.*``) are resolved by TorchScript from the archive's code/, not imported."""
    return name.startswith("__torch__.") or name.startswith("torch.jit._pickle.")


def allow_dcp(name: str) -> bool:
    """Dataclasses of a torch.distributed.checkpoint ``.metadata`` file, and the path it records."""
    return (name.startswith(("torch.distributed.checkpoint.metadata.", "torch.distributed.checkpoint.planner."))
            or name in ("torch.distributed.checkpoint.filesystem._StorageInfo", "pathlib.PosixPath",
                        "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath"))

