"""Per-module facts through global module hooks: output shapes, the module whose forward raised, the layer table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.count.compiled import user_modules
from torchdoctor.count.params import module_params


@dataclass(frozen=True)
class FailedLayer:
    """The innermost module running when the forward raised, with the shapes it was given."""

    name: str
    type: str
    weight_shape: list[int] | None
    input_shapes: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "type": self.type, "weight_shape": self.weight_shape,
                "input_shapes": self.input_shapes}


@dataclass
class ModuleWatch:
    """Global forward hooks for the length of a count; removed on exit whatever happened.

    A pre-hook pushes the module and its arguments, a post-hook pops them and keeps the first output's
    shape. When a forward raises, its post-hook never runs, so the top of the stack is the failing module.
    """

    output_shapes: dict[int, Any] = field(default_factory=dict)
    stack: list[tuple[Any, tuple[Any, ...]]] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> ModuleWatch:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._handles = [register_module_forward_pre_hook(self._enter_module),
                         register_module_forward_hook(self._leave_module)]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter_module(self, module: Any, args: tuple[Any, ...]) -> None:
        self.stack.append((module, args))

    def _leave_module(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        # Search down, not just the top: a forward that raised and was caught by user code left its entry.
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] is module:
                del self.stack[index:]
                break
        if id(module) not in self.output_shapes:
            self.output_shapes[id(module)] = shape_of(output)

    def failed_layer(self, root: Any) -> FailedLayer | None:
        """The module on top of the stack (None when no module was running)."""
        if not self.stack:
            return None
        module, args = self.stack[-1]
        names = {id(m): name for name, m in user_modules(root)}
        return FailedLayer(
            name=names.get(id(module), type(module).__name__) or type(root).__name__,
            type=type(module).__name__,
            weight_shape=_weight_shape(module),
            input_shapes=[shape_of(arg) for arg in args if shape_of(arg) is not None],
        )


def _weight_shape(module: Any) -> list[int] | None:
    for name in ("weight", "in_proj_weight"):
        weight = getattr(module, name, None)
        if hasattr(weight, "shape"):
            return list(weight.shape)
    first = next(iter(module.parameters(recurse=False)), None)
    return list(first.shape) if first is not None else None


def shape_of(value: Any) -> Any:
    """A tensor's shape as a list; a list of shapes for tuples/lists/dicts of tensors; None without tensors."""
    if getattr(value, "is_nested", False) is True:  # a nested tensor has no .shape, only its batch size
        return ["nested", value.size(0)]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return list(value.shape)
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    shapes = [shape for shape in (shape_of(item) for item in items) if shape is not None]
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else shapes


def layer_rows(root: Any, output_shapes: Mapping[int, Any], module_counts: Mapping[str, Mapping[str, int]],
               total_macs: int, depth: int) -> list[dict[str, Any]]:
    """One row per module down to ``depth`` (children of the model are depth 1), in definition order; a
    ``torch.compile``d submodule is one row under its own name (``count.compiled``)."""
    rows = []
    for name, module in user_modules(root):
        level = name.count(".") + 1 if name else 0
        if not name or level > depth:
            continue
        counts = _counts(name, module, output_shapes, module_counts)
        macs = counts["macs"]
        rows.append({
            "name": name,
            "type": type(module).__name__,
            "depth": level,
            "output_shape": output_shapes.get(id(module)),
            "params": module_params(module),
            "macs": macs,
            "flops": counts["flops"],
            "share": round(macs / total_macs, 6) if total_macs else 0.0,
        })
    return rows


def _counts(name: str, module: Any, output_shapes: Mapping[int, Any],
            module_counts: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """A module's own tally when it ran; for a container that is never called (``nn.ModuleList``), the sum of
    its children's."""
    if name in module_counts or id(module) in output_shapes:
        counts = module_counts.get(name, {})
        return {"macs": counts.get("macs", 0), "flops": counts.get("flops", 0)}
    children = [_counts(f"{name}.{child_name}", child, output_shapes, module_counts)
                for child_name, child in module.named_children()]
    return {"macs": sum(c["macs"] for c in children), "flops": sum(c["flops"] for c in children)}
