"""What a fake training step holds: live storages from creation to release (``LiveBytes``), and what autograd
saves for backward, per module (``SavedActivations``). Both count a storage once, whatever views share it."""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass
from typing import Any

from torchdoctor.count.compiled import user_modules


@dataclass(frozen=True)
class ModuleMemory:
    """Saved activations of one module (its own and its children's), and the bytes of its inputs."""

    name: str
    type: str
    saved_bytes: int
    input_bytes: int
    called: bool
    """Whether its forward ran (a ModuleList is never called, so it cannot be checkpointed as one)."""


def tensors_in(tree: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied tensors counted once)."""
    storages = {tensor.untyped_storage()._cdata: tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(storages.values())


class SavedActivations:
    """``saved_tensors_hooks`` + global module hooks: each storage autograd saves (parameters and buffers
    excluded), counted once and attributed to the innermost module running when it was first saved."""

    def __init__(self, model: Any, model_tensors: set[Any]) -> None:
        modules = user_modules(model)  # a compiled part's wrapper is no row: its id is not named here
        self.names = {id(module): name for name, module in modules}
        self.types = {name: type(module).__name__ for name, module in modules}
        self.excluded = {tensor.untyped_storage()._cdata for tensor in model_tensors}
        self.saved: dict[int, tuple[int, str]] = {}  # storage -> (bytes, module)
        self.inputs: dict[str, int] = {}
        self.stack: list[str] = []
        self._exit = contextlib.ExitStack()

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.saved.values())

    def __enter__(self) -> SavedActivations:
        import torch
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._exit.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor))
        for handle in (register_module_forward_pre_hook(self._enter_module),
                       register_module_forward_hook(self._leave_module)):
            self._exit.callback(handle.remove)
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.excluded and storage._cdata not in self.saved:
            self.saved[storage._cdata] = (storage.nbytes(), self.stack[-1] if self.stack else "")
        return tensor

    def _enter_module(self, module: Any, args: Any) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        self.stack.append(name)
        self.inputs[name] = self.inputs.get(name, 0) + storage_bytes(tensors_in(args))

    def _leave_module(self, module: Any, args: Any, output: Any) -> None:
        if self.names.get(id(module)) is not None and self.stack:
            self.stack.pop()

    def module_rows(self) -> tuple[ModuleMemory, ...]:
        """Per module, the bytes saved inside it (children included), in ``named_modules`` order."""
        own: dict[str, int] = {}
        for size, name in self.saved.values():
            own[name] = own.get(name, 0) + size
        rows = []
        for name, kind in self.types.items():
            inside = sum(size for owner, size in own.items() if _within(owner, name))
            if inside or name in self.inputs:
                rows.append(ModuleMemory(name, kind, inside, self.inputs.get(name, 0), name in self.inputs))
        return tuple(rows)


def _within(owner: str, name: str) -> bool:
    return name == "" or owner == name or owner.startswith(name + ".")


@functools.cache
def live_bytes_class() -> type:
    """A dispatch mode counting live storages (built on first use: importing this module imports no torch)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    to_copy = torch.ops.aten._to_copy.default  # what autocast's casts of the weights run

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.current = 0
            self.phase = "setup"
            self.phase_peaks: dict[str, int] = {}
            self.weights: set[int] = set()  # storages of the parameters, set by the caller
            self.weight_copies: set[int] = set()  # live storages made by casting a parameter (autocast)

        def enter(self, phase: str) -> None:
            self.phase = phase
            self.phase_peaks[phase] = self.current

        def track(self, tensor: Any) -> None:
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self.live:
                return
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            if self.phase in self.phase_peaks:
                self.phase_peaks[self.phase] = max(self.phase_peaks[self.phase], self.current)
            weakref.finalize(storage, self._free, key)

        def _free(self, key: int) -> None:
            self.current -= self.live.pop(key, 0)
            self.weight_copies.discard(key)

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tensors_in(out):
                self.track(tensor)
            if func is to_copy and args and args[0].untyped_storage()._cdata in self.weights:
                self.weight_copies.add(out.untyped_storage()._cdata)
            return out

    return LiveBytes
