"""Where a called module sits in the model the user holds: its path from the outermost module containing it.

A training loop often calls a submodule, not the model: a LightningModule's ``training_step`` calls
``self.body(x)``, a script calls ``model.encoder(x)`` then ``model.head(h)``. Named from the module called,
``body.3`` would read ``3``, a name the user cannot find in ``print(model)``. Modules keep no link to their
parent, so the containers are looked for where the run can see them: the models already placed, and the
modules held by the user's frames that made the call (``self`` of ``training_step``, ``model`` of the loop).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from types import FrameType
from typing import Any

from torchdoctor.frames import is_core_file

# Wrappers whose names a user never looks for: the model inside is named as if it had been called itself.
WRAPPED_IN = (
    ("DistributedDataParallel", "module"),
    ("DataParallel", "module"),
    ("OptimizedModule", "_orig_mod"),  # torch.compile
    ("_LightningModuleWrapperBase", "_forward_module"),  # Lightning's strategies (DDP, FSDP, DeepSpeed)
    ("FullyShardedDataParallel", "_fsdp_wrapped_module"),
)
USER_FRAMES = 8  # frames from the call outwards whose locals may hold the model (a helper called by the loop)


def unwrap(module: Any) -> Any:
    """The model inside DDP / DataParallel / torch.compile / Lightning's wrapper (no ``module.`` in names)."""
    from torch.nn import Module

    seen: set[int] = set()
    while id(module) not in seen:
        seen.add(id(module))
        classes = {cls.__name__ for cls in type(module).__mro__}
        attribute = next((attr for name, attr in WRAPPED_IN if name in classes), None)
        inner = getattr(module, attribute, None) if attribute else None
        if not isinstance(inner, Module):
            break
        module = inner
    return module


def place(module: Any, candidates: Iterable[Any]) -> tuple[Any, str]:
    """``(container, path)``: the largest candidate holding ``module`` and its dotted path there.

    ``(module, "")`` (unwrapped) when no candidate holds it: it is then its own outermost module.
    """
    target = unwrap(module)
    best: tuple[Any, str] = (target, "")
    size = 0
    for candidate in dict.fromkeys(map(unwrap, candidates)):  # unwrapped, each once, in order
        paths = {id(m): name for name, m in candidate.named_modules()}
        if id(target) in paths and len(paths) > size:
            best, size = (candidate, paths[id(target)]), len(paths)
    return best


def find_container(module: Any, known: Iterable[Any], frame: FrameType | None) -> tuple[Any, str]:
    """``place(module, ...)`` among the ``known`` containers, else among the modules the user's frames hold.

    Frames are read from ``frame`` (the call's) outwards, at most ``USER_FRAMES`` outside torch and
    torchdoctor, and only until one holds a container; the watch asks once per new module called, never per step.
    """
    target = unwrap(module)
    known = [unwrap(container) for container in known]
    found = place(target, known)
    if any(container is target for container in known):
        return found  # a known container itself (the model, called after its submodules were)
    limit = USER_FRAMES
    while found[1] == "" and frame is not None and limit > 0:
        if not is_core_file(frame.f_code.co_filename):
            limit -= 1
            held = modules_held(frame)
            found = place(target, known + held) if held else found
        frame = frame.f_back
    return found


def modules_held(frame: FrameType) -> list[Any]:
    """The modules among ``frame``'s local variables, read without keeping any of them alive."""
    from torch.nn import Module

    local = frame.f_locals
    held = [value for value in list(local.values()) if issubclass(type(value), Module)]
    if frame.f_code.co_flags & inspect.CO_OPTIMIZED and type(local) is dict and local is not frame.f_globals:
        # Before Python 3.13 a function frame's f_locals is a snapshot dict kept on the frame until it returns:
        # it would hold the user's model (and batch) after they ``del`` them. The frame's real locals are not in
        # it (any later reader, locals() or a debugger, fills it again first), so emptying it changes nothing.
        local.clear()
    return held


def module_paths(container: Any) -> dict[int, str]:
    """``id(module) -> dotted path`` of every module in ``container`` ("" for the container itself)."""
    return {id(m): name for name, m in container.named_modules()}
